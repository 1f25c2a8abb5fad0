"""The real CLI, end to end, on a tiny model: convert -> tokenize -> train -> infer -> merge."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sample_data import ALPACA_ROWS

pytestmark = pytest.mark.slow


def cli(*args, cwd, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "instructglm", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"instructglm {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def test_pipeline_end_to_end(tmp_path, tiny_models):
    model = tiny_models("llama")
    (tmp_path / "data.json").write_text(json.dumps(ALPACA_ROWS * 4, ensure_ascii=False), encoding="utf-8")
    cli("convert", "data.json", "-o", "data.jsonl", cwd=tmp_path)
    cli("tokenize", "data.jsonl", "-o", "tok", "--model", model, "--template", "alpaca",
        "--max-seq-length", 128, cwd=tmp_path)
    cli("train", "--dataset", "tok", "--model", model, "--method", "lora", "--output-dir", "out",
        "--lora_rank", 8, "--lora-alpha", 16, "--lora-dropout", 0.0, "--per_device_train_batch_size", 4,
        "--gradient_accumulation_steps", 2, "--max_steps", 24, "--learning_rate", 1e-2, "--logging_steps", 4,
        "--save_steps", 8, "--save_total_limit", 2, "--seed", 7, cwd=tmp_path)
    out = tmp_path / "out"
    logs = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [4, 8, 12, 16, 20, 24]
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"], logs
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert (out / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-8"]
    assert any((out / "runs").rglob("events.out.tfevents.*"))

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model)
    tuned = PeftModel.from_pretrained(base, str(out)).eval()

    cli("infer", "--model", model, "--adapter", "out", "--data", "data.json", "-o", "pred.jsonl",
        "--compare-base", "--max-new-tokens", 12, "--limit", 4, cwd=tmp_path)
    preds = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(preds) == 4
    assert [p["reference"] for p in preds] == [r["output"] for r in ALPACA_ROWS]
    assert all(isinstance(p["prediction"], str) and isinstance(p["base_prediction"], str) for p in preds)
    assert preds[1]["prompt"].startswith("### Instruction:\n把下面的英文转换成大写字母\n\n### Input:\ngood morning")

    proc = cli("merge", "--model", model, "--adapter", "out", "-o", "merged", cwd=tmp_path)
    assert "max |logit diff|" in proc.stdout
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([[1, 40, 50, 60, 70, 80, 90, 100]])
    with torch.no_grad():
        expected = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            plain = tuned(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (expected - plain).abs().max() > 1e-3  # the adapter really changed the model

    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").eos_token == "<eos>"


@pytest.mark.parametrize("args,words", [
    (["convert", "missing.json", "-o", "x.jsonl"], "missing.json: file not found"),
    (["convert", "bad.jsonl", "-o", "x.jsonl"], "bad.jsonl:2: missing field 'output'"),
    (["convert", "broken.jsonl", "-o", "x.jsonl"], "broken.jsonl:1: invalid JSON"),
    (["train", "--dataset", "nowhere", "-o", "o", "lora_rankk=4"], "unknown config key 'lora_rankk'"),
    (["train", "--dataset", "nowhere", "-o", "o", "--lora-rank", "many"], "'lora_rank': expected int"),
    (["tokenize", "x.jsonl", "-o", "t", "--template", "nope"], "unknown template"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, args, words):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q"}\n')
    (tmp_path / "broken.jsonl").write_text('{"instruction": "q", \n')
    (tmp_path / "x.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}, '
                                      '{"role": "assistant", "content": "a"}]}\n')
    proc = cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and not (tmp_path / "x.jsonl.tmp").exists()
