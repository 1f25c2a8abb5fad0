"""Adapters and their base model, through the real CLI on tiny models: ``instructglm.json`` records the
base as an absolute path and infer/chat/serve default to it; an adapter trained on another base (family,
sizes, tokenizer) or with a damaged weight file is one line naming both, never a run with exit 0."""

import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from instructglm.cli import main
from instructglm.errors import UserError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tokenized, tiny_models):
    """An adapter trained with the base model given as a relative path."""
    model = Path(tiny_models("llama"))
    out = tmp_path_factory.mktemp("adapter") / "out"
    here = os.getcwd()
    os.chdir(model.parent)
    try:
        assert main(["-q", "train", "--dataset", str(tokenized("llama")), "-o", str(out), "--model", model.name,
                     "--lora-rank", "2", "--batch-size", "4", "--max-steps", "1"]) == 0
    finally:
        os.chdir(here)
    return out, model


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"instruction": "What is the capital of France?", "output": "Paris."}) + "\n")
    return path


def _infer(capsys, adapter_dir, data, out, *extra) -> tuple[int, str]:
    code = main(["-q", "infer", "--adapter", str(adapter_dir), "--data", str(data), "-o", str(out),
                 "--max-new-tokens", "3", *extra])
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_base_is_recorded_absolute_and_is_the_default(adapter, data, tmp_path, monkeypatch, capsys):
    out, model = adapter
    info = json.loads((out / "instructglm.json").read_text())
    assert info["base_model"] == str(model.resolve()) and info["base_config"]["model_type"] == "llama"
    monkeypatch.chdir(tmp_path)  # another working directory than training's
    code, err = _infer(capsys, out, data, tmp_path / "p.jsonl")  # no --model: the adapter's base
    assert code == 0, err
    monkeypatch.setattr(sys, "stdin", io.StringIO("/exit\n"))
    assert main(["chat", "--adapter", str(out), "--max-new-tokens", "2"]) == 0
    assert f"chatting with {model.resolve()} with adapter" in capsys.readouterr().out


def test_adapter_on_another_family_is_refused(adapter, data, tmp_path, tiny_models, capsys):
    out, model = adapter
    other = tiny_models("qwen2")
    code, err = _infer(capsys, out, data, tmp_path / "p.jsonl", "--model", other)
    line = _one_line(err)
    assert code == 2 and str(model.resolve()) in line and f"--model {other}" in line, line
    assert "model_type llama vs qwen2" in line
    assert not (tmp_path / "p.jsonl").exists()


def test_adapter_with_another_tokenizer_is_refused(adapter, data, tmp_path, capsys):
    out, model = adapter
    other = tmp_path / "other-tokenizer"
    shutil.copytree(model, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["model"]["vocab"]["zzzz"] = len(tok["model"]["vocab"])
    (other / "tokenizer.json").write_text(json.dumps(tok))
    code, err = _infer(capsys, out, data, tmp_path / "p.jsonl", "--model", str(other))
    line = _one_line(err)
    assert code == 2 and "tokenizer" in line and str(model.resolve()) in line and str(other) in line, line


def _wider_llama(path: Path) -> Path:
    """The tiny llama with the same tokenizer and a wider MLP (intermediate_size 96, not 128)."""
    import torch
    from transformers import AutoModelForCausalLM
    from tiny import make_config, make_tokenizer

    tokenizer = make_tokenizer()
    config = make_config("llama", len(tokenizer))
    config.intermediate_size = 96
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_adapter_that_does_not_fit_the_shapes_is_refused(adapter, data, tmp_path, capsys):
    out, _ = adapter
    wider = _wider_llama(tmp_path / "wider")
    code, err = _infer(capsys, out, data, tmp_path / "p.jsonl", "--model", str(wider))
    line = _one_line(err)
    assert code == 2 and "intermediate_size 128 vs 96" in line, line
    legacy = tmp_path / "legacy"  # an adapter whose instructglm.json predates base_config: the weights decide
    shutil.copytree(out, legacy)
    info = json.loads((legacy / "instructglm.json").read_text())
    del info["base_config"]
    (legacy / "instructglm.json").write_text(json.dumps(info))
    code, err = _infer(capsys, legacy, data, tmp_path / "p.jsonl", "--model", str(wider))
    line = _one_line(err)
    assert code == 2 and "mlp" in line and "96 features in the base, 128 in the adapter" in line, line


def test_truncated_adapter_is_one_line(adapter, data, tmp_path, capsys):
    out, _ = adapter
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    weights = cut / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    code, err = _infer(capsys, cut, data, tmp_path / "p.jsonl")
    line = _one_line(err)
    assert code == 2 and f"{weights}: damaged or truncated" in line, line
    weights.unlink()
    code, err = _infer(capsys, cut, data, tmp_path / "p.jsonl")
    assert code == 2 and f"{weights}: file not found" in _one_line(err)


def test_recorded_base_that_is_gone_asks_for_model(adapter, data, tmp_path, capsys):
    out, _ = adapter
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    info = json.loads((moved / "instructglm.json").read_text())
    info["base_model"] = str(tmp_path / "no-such-model")
    (moved / "instructglm.json").write_text(json.dumps(info))
    code, err = _infer(capsys, moved, data, tmp_path / "p.jsonl")
    line = _one_line(err)
    assert code == 2 and f"its base model {tmp_path / 'no-such-model'}" in line and "give --model" in line, line


def test_serve_and_merge_check_the_same_way(adapter, tiny_models):
    """serve loads through load_with_adapters; merge calls check_adapter_fits on its loaded base."""
    from instructglm.models.adapters import check_adapter_fits
    from instructglm.models.loading import load_model, load_tokenizer
    from instructglm.serve.app import ServeConfig, build_server

    out, _ = adapter
    other = tiny_models("qwen2")
    with pytest.raises(UserError, match="model_type llama vs qwen2"):
        build_server(ServeConfig(adapter=[str(out)], model=other), start=False)
    with pytest.raises(UserError, match=f"--adapter {out}: trained on .*--model {other}"):
        check_adapter_fits(load_model(other), load_tokenizer(other), out, other)
