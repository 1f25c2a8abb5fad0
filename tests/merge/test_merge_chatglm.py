"""merge on ChatGLM checkpoints: the merged model is written in the layout it was read in (the official
remote-code layout: tensor names, config, tokenizer and .py files), or transformers' own on request."""

import json

import pytest
import torch

import chatglm2_tiny
import chatglm_tiny

import instructglm
from instructglm.cli import main
from instructglm.templates import get_template

IDS = [[601, 603, 605, 468, 13, 468, 92, 372, 263, 273]]


@pytest.fixture
def v3_adapter(tmp_path, monkeypatch):
    """A tiny ChatGLM3 checkpoint in its official layout and a random LoRA adapter trained on it."""
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("INSTRUCTGLM_CACHE", str(tmp_path / "cache"))
    ckpt = chatglm2_tiny.make_tiny_checkpoint(tmp_path / "chatglm3-6b", "v3")
    (ckpt / "modeling_chatglm.py").write_text("raise RuntimeError('remote code executed')\n")
    torch.manual_seed(0)
    peft = get_peft_model(instructglm.load_model(str(ckpt)),
                          LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(str(tmp_path / "lora"))
    (tmp_path / "lora" / "instructglm.json").write_text(json.dumps(
        {"base_model": str(ckpt), "method": "lora", "template": "chatglm3"}))
    with torch.no_grad():
        expected = peft.eval()(input_ids=torch.tensor(IDS)).logits
    return ckpt, tmp_path / "lora", expected


def merged_logits(path):
    with torch.no_grad():
        return instructglm.load_model(str(path)).eval()(input_ids=torch.tensor(IDS)).logits


def test_merged_chatglm3_keeps_the_official_layout(v3_adapter, tmp_path):
    from safetensors import safe_open

    ckpt, lora, expected = v3_adapter
    assert main(["merge", "--adapter", str(lora), "-o", str(tmp_path / "m"), "--dtype", "fp32"]) == 0
    out = tmp_path / "m"
    assert json.loads((out / "config.json").read_text()) == dict(
        json.loads((ckpt / "config.json").read_text()), torch_dtype="float32")
    for name in ("tokenizer.model", "tokenizer_config.json", "modeling_chatglm.py"):
        assert (out / name).read_bytes() == (ckpt / name).read_bytes()
    with safe_open(str(out / "model.safetensors"), "pt") as f, safe_open(str(ckpt / "model.safetensors"), "pt") as g:
        assert set(f.keys()) == set(g.keys())
    assert (merged_logits(out) - expected).abs().max() < 1e-4
    assert json.loads((out / "instructglm.json").read_text())["template"] == "chatglm3"


def test_merged_chatglm3_in_the_native_layout_on_request(v3_adapter, tmp_path):
    ckpt, lora, expected = v3_adapter
    assert main(["merge", "--adapter", str(lora), "-o", str(tmp_path / "m"), "--layout", "native"]) == 0
    out = tmp_path / "m"
    assert json.loads((out / "config.json").read_text())["model_type"] == "glm"
    assert not (out / "modeling_chatglm.py").exists()
    assert (merged_logits(out) - expected).abs().max() < 1e-4
    tok = instructglm.load_tokenizer(str(out))
    assert get_template("auto", tok).name == "chatglm3"  # its chat template came along


def test_chatglm6b_has_no_native_layout(tmp_path, capsys):
    ckpt = chatglm_tiny.build_tiny_checkpoint(tmp_path / "chatglm-6b")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "instructglm.json").write_text(json.dumps({"base_model": str(ckpt), "method": "lora"}))
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    assert main(["merge", "--adapter", str(tmp_path / "a"), "-o", str(tmp_path / "m"), "--layout", "native"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ChatGLM-6B (v1) has no architecture in transformers" in err[0]
