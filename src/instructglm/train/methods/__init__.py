"""Tuning methods. Each module exposes ``apply(model, cfg)`` (returns the model to train, with
only the method's parameters trainable), ``save(model, directory)`` (writes only what it trained,
as safetensors) and ``load(model, directory)`` (restores those weights for resuming)."""

from __future__ import annotations

from types import ModuleType

from instructglm.errors import UserError
from instructglm.train.methods import lora

METHODS: dict[str, ModuleType] = {"lora": lora}


def get_method(name: str) -> ModuleType:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"method '{name}' is not available; choose one of {', '.join(METHODS)}") from None
