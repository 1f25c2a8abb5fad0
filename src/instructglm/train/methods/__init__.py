"""Tuning methods, one module each. A module exposes

* ``apply(model, cfg)``: the model to train, with only the method's parameters trainable,
* ``save(model, directory, state=None)``: writes only what it trained, as safetensors (``state``:
  those tensors gathered whole by the trainer, needed when FSDP shards them),
* ``load(model, directory)``: restores those weights (resuming),
* ``attach(base, directory)``: the base model with the trained weights, for inference,
* ``MERGEABLE`` and ``USES_MODEL_FORWARD`` (P-Tuning needs PEFT's forward to inject its prefix).
"""

from __future__ import annotations

from types import ModuleType

from instructglm.errors import UserError
from instructglm.train.methods import freeze, full, lora, ptuning

METHODS: dict[str, ModuleType] = {"lora": lora, "ptuning": ptuning, "freeze": freeze, "full": full}


def get_method(name: str) -> ModuleType:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"method '{name}' is not available; choose one of {', '.join(METHODS)}") from None
