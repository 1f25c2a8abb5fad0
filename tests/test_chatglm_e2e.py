"""The real CLI end to end on tiny ChatGLM-6B (v1) and ChatGLM3-6B checkpoints in their official
layouts: convert -> tokenize (the family's template) -> train LoRA (and P-Tuning v2 on v1, with the
shipped recipe) -> infer -> merge (original layout) -> reload with ``instructglm.load_model``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import chatglm2_tiny
import chatglm_tiny
from sample_data import ALPACA_ROWS

import instructglm

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {"v1": "chatglm-6b", "v3": "chatglm3"}


def cli(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "instructglm", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"instructglm {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def checkpoint(gen: str, where: Path) -> Path:
    ckpt = chatglm_tiny.build_tiny_checkpoint(where) if gen == "v1" else chatglm2_tiny.make_tiny_checkpoint(where, gen)
    # the official layout ships remote code: it must be carried along, never executed
    (ckpt / "modeling_chatglm.py").write_text("raise RuntimeError('remote code executed')\n")
    return ckpt


def tensor_names(path: Path) -> set[str]:
    if path.suffix == ".bin":
        return set(torch.load(path, weights_only=True))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("gen", ["v1", "v3"])
def test_chatglm_pipeline_end_to_end(tmp_path, monkeypatch, gen):
    monkeypatch.setenv("INSTRUCTGLM_CACHE", str(tmp_path / "cache"))
    ckpt = checkpoint(gen, tmp_path / f"chatglm-{gen}")
    (tmp_path / "data.json").write_text(json.dumps(ALPACA_ROWS * 4, ensure_ascii=False), encoding="utf-8")
    cli("convert", "data.json", "-o", "data.jsonl", cwd=tmp_path)
    cli("tokenize", "data.jsonl", "-o", "tok", "--model", ckpt, "--template", FAMILIES[gen],
        "--max-seq-length", 128, cwd=tmp_path)
    tok = instructglm.load_tokenizer(str(ckpt))
    from datasets import load_from_disk

    row = load_from_disk(str(tmp_path / "tok"))[0]["input_ids"]
    gmask_sop = [tok.convert_tokens_to_ids("[gMASK]"), tok.convert_tokens_to_ids("<sop>")]
    # v1: [gMASK] <sop> end the prompt; ChatGLM3: they open the conversation
    assert (row[:2] if gen == "v3" else row[row.index(gmask_sop[1]) - 1:][:2]) == gmask_sop

    cli("train", "--dataset", "tok", "--model", ckpt, "--method", "lora", "--output-dir", "lora",
        "--lora-dropout", 0.0, "--per_device_train_batch_size", 4, "--max_steps", 4, "--learning_rate", 1e-2,
        "--seed", 7, cwd=tmp_path)
    adapters = ["lora"]
    if gen == "v1":  # ChatGLM-6B's own P-Tuning v2 recipe, as shipped, pointed at the local directory
        cli("train", ROOT / "configs" / "ptuning-chatglm.yaml", "dataset=tok", "output_dir=ptuning",
            f"model={ckpt}", "max_steps=2", "gradient_accumulation_steps=2", cwd=tmp_path)
        adapters.append("ptuning")
    for adapter in adapters:
        cli("infer", "--model", ckpt, "--adapter", adapter, "--data", "data.json", "-o", f"{adapter}.jsonl",
            "--max-new-tokens", 6, "--limit", 2, cwd=tmp_path)
        preds = [json.loads(line) for line in (tmp_path / f"{adapter}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(preds) == 2 and all(isinstance(p["prediction"], str) for p in preds)

    cli("merge", "--adapter", "lora", "-o", "merged", "--dtype", "fp32", cwd=tmp_path)
    merged_dir = tmp_path / "merged"
    original = json.loads((ckpt / "config.json").read_text())
    written = json.loads((merged_dir / "config.json").read_text())
    assert written == dict(original, torch_dtype="float32")  # the official config, true to the saved dtype
    assert (merged_dir / "modeling_chatglm.py").is_file()  # the remote code travels with it
    weights = "pytorch_model.bin" if gen == "v1" else "model.safetensors"
    # the official tensor names (v1 stores no rotary buffer; the merged one carries it, as ChatGLM3 does)
    assert tensor_names(merged_dir / "model.safetensors") <= tensor_names(ckpt / weights)

    from peft import PeftModel

    ids = tok("把下面的英文转换成大写字母 good morning").input_ids
    tuned = PeftModel.from_pretrained(instructglm.load_model(str(ckpt)), str(tmp_path / "lora")).eval()
    merged = instructglm.load_model(str(merged_dir)).eval()
    expected, got = logits(tuned, ids), logits(merged, ids)
    assert (got - expected).abs().max() < 1e-3
    assert (expected - logits(instructglm.load_model(str(ckpt)), ids)).abs().max() > 1e-2  # the adapter did something
