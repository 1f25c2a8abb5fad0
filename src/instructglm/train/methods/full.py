"""Full fine-tuning: every parameter trains; the result is a complete transformers model directory."""

from __future__ import annotations

from pathlib import Path

from instructglm.train.methods import freeze

MERGEABLE = True
USES_MODEL_FORWARD = False


def apply(model, cfg):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save(model, directory: str | Path, state: dict | None = None) -> None:
    model.save_pretrained(str(directory), safe_serialization=True, state_dict=state)


def load(model, directory: str | Path) -> None:
    from safetensors.torch import load_file

    files = sorted(Path(directory).glob("model*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    model.load_state_dict(state, strict=False)


def attach(base, directory: str | Path, name: str = "default"):
    load(base, directory)
    return base


trainable_state = freeze.trainable_state
