"""Tuning methods on ChatGLM checkpoints: LoRA's default targets per family, Freeze on ChatGLM-6B's
``transformer.layers`` with its tied head."""

from __future__ import annotations

import pytest
import torch

import chatglm2_tiny
import chatglm_tiny

import instructglm
from instructglm.errors import UserError
from instructglm.train.methods import get_method
from instructglm.train.methods.freeze.config import FreezeOptions
from instructglm.train.methods.freeze.method import WEIGHTS, load_into
from instructglm.train.methods.lora.config import LoraOptions


def lora_targets(model) -> set[str]:
    peft = get_method("lora").apply(model, LoraOptions())
    return {name.rsplit(".", 1)[-1] for name, module in peft.named_modules() if hasattr(module, "lora_A")}


def test_lora_targets_by_family(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTGLM_CACHE", str(tmp_path / "cache"))
    v1 = instructglm.load_model(str(chatglm_tiny.build_tiny_checkpoint(tmp_path / "v1")))
    assert lora_targets(v1) == {"query_key_value"}  # ChatGLM-Tuning's choice for ChatGLM-6B
    v3 = instructglm.load_model(str(chatglm2_tiny.make_tiny_checkpoint(tmp_path / "v3", "v3")))
    assert lora_targets(v3) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"}
    with pytest.raises(UserError, match="lora_target 'nothing_here'"):
        get_method("lora").apply(instructglm.load_model(str(tmp_path / "v1")), LoraOptions(target="nothing_here"))


def test_freeze_on_chatglm6b_saves_only_what_trains(tmp_path):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    ckpt = chatglm_tiny.build_tiny_checkpoint(tmp_path / "v1")
    method = get_method("freeze")
    model = method.apply(instructglm.load_model(str(ckpt)), FreezeOptions(trainable_layers=1))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("transformer.layers.1.mlp.") for n in trained)
    with torch.no_grad():
        model.transformer.layers[1].mlp.dense_h_to_4h.weight.add_(0.5)
    # the trainer's gathered state (torch lists the tied head as trainable too)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, ignore_frozen_params=True))
    method.save(model, tmp_path, {k: v.detach() for k, v in state.items()})
    from safetensors import safe_open

    with safe_open(str(tmp_path / WEIGHTS), "pt") as f:
        assert set(f.keys()) == trained
    fresh = instructglm.load_model(str(ckpt))
    load_into(fresh, tmp_path / WEIGHTS)
    assert torch.equal(fresh.transformer.layers[1].mlp.dense_h_to_4h.weight,
                       model.transformer.layers[1].mlp.dense_h_to_4h.weight)
