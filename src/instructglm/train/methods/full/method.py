"""Full fine-tuning: every parameter trains; the result is a complete transformers model directory.
It has no options of its own."""

from __future__ import annotations

from pathlib import Path

from instructglm.train.methods.registry import TuningMethod, register


@register
class FullMethod(TuningMethod):
    NAME = "full"
    TRAINS_BASE_WEIGHTS = True

    def apply(self, model, options=None):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model, directory: str | Path, state: dict | None = None) -> None:
        model.save_pretrained(str(directory), safe_serialization=True, state_dict=state)

    def load(self, model, directory: str | Path) -> None:
        from safetensors.torch import load_file

        state = {}
        for f in sorted(Path(directory).glob("model*.safetensors")):
            state.update(load_file(str(f)))
        model.load_state_dict(state, strict=False)

    def attach(self, base, directory: str | Path, name: str = "default"):
        self.load(base, directory)
        return base
