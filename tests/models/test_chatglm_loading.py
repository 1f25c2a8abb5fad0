"""The contract other checks rely on: ``instructglm.load_model(DIR)`` / ``load_tokenizer(DIR)`` on a
ChatGLM checkpoint in its original remote-code layout give the native model and tokenizer, whose
logits equal the original code's (figures in tests/data/chatglm/*/reference.json), without
``trust_remote_code`` and without executing any ``.py`` file beside the weights."""

from __future__ import annotations

import json

import pytest
import torch

import chatglm2_tiny
import chatglm_tiny
from test_chatglm2 import assert_logits_match
from test_chatglm_v1 import assert_rows_match

import instructglm
from instructglm.errors import UserError


def _poison_remote_code(directory):
    """A modeling file that fails loudly if anything imports or executes it."""
    (directory / "modeling_chatglm.py").write_text("raise RuntimeError('remote code executed')\n")


def test_v1_directory_loads_natively_with_the_original_logits(tmp_path):
    ckpt = chatglm_tiny.build_tiny_checkpoint(tmp_path / "chatglm-6b")
    _poison_remote_code(ckpt)
    model, tok = instructglm.load_model(str(ckpt)), instructglm.load_tokenizer(str(ckpt))
    assert type(model).__name__ == "ChatGLMv1ForCausalLM"
    ref = json.loads((chatglm_tiny.DATA_DIR / "reference.json").read_text(encoding="utf-8"))
    case = ref["logits"]["prompt_answer"]
    ids = torch.tensor([case["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long()).logits
    assert_rows_match(logits, case["rows"])


@pytest.mark.parametrize("gen", ["v2", "v3", "glm4"])
def test_chatglm2_3_and_glm4_directories_load_as_native_glm(tmp_path, monkeypatch, gen):
    monkeypatch.setenv("INSTRUCTGLM_CACHE", str(tmp_path / "cache"))
    ckpt = chatglm2_tiny.make_tiny_checkpoint(tmp_path / gen, gen)
    _poison_remote_code(ckpt)
    model = instructglm.load_model(str(ckpt))
    assert model.config.model_type == "glm"
    ref = json.loads((chatglm2_tiny.DATA / gen / "reference.json").read_text())
    for name, entry in ref["inputs"].items():
        with torch.no_grad():
            logits = model(torch.tensor([entry["ids"]])).logits[0]
        assert_logits_match(logits, entry["logits"], f"{gen}/{name}")
    assert instructglm.load_tokenizer(str(ckpt)).is_fast


def test_unknown_chatglm_layout_and_missing_tokenizer_are_one_line_errors(tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "chatglm", "hidden_size": 8}))
    with pytest.raises(UserError, match="layout InstructGLM does not know"):
        instructglm.load_model(str(odd))
    ckpt = chatglm_tiny.build_tiny_checkpoint(tmp_path / "no-tokenizer")
    (ckpt / "ice_text.model").unlink()
    with pytest.raises(UserError, match="cannot load tokenizer"):
        instructglm.load_tokenizer(str(ckpt))
