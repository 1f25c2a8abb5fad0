"""Freeze tuning: train only some transformer blocks (the last N, or the first N when N < 0),
and within them the MLP, the attention or everything. The trained tensors are saved alone as
``trainable.safetensors``; loading puts them back over the base weights."""

from __future__ import annotations

from pathlib import Path

from instructglm.errors import UserError
from instructglm.train.methods.freeze.config import FreezeOptions
from instructglm.train.methods.registry import TuningMethod, register

WEIGHTS = "trainable.safetensors"
PARTS = {"mlp": ("mlp", "feed_forward", "ffn"), "attn": ("self_attn", "attention", "attn"), "all": ("",)}


def _blocks(model):
    from instructglm.train.loss import causal_lm

    backbone = causal_lm(model).get_decoder()
    layers = getattr(backbone, "layers", None) or getattr(getattr(backbone, "encoder", None), "layers", None)
    if layers is None:
        raise UserError(f"method freeze: cannot find the transformer blocks of {type(model).__name__}")
    return layers


def load_into(model, path: Path) -> None:
    """Copy the tensors of a safetensors file over the model's parameters of the same names."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path}: not found")
    state = load_file(str(path))
    params = dict(model.named_parameters(remove_duplicate=False))  # a tied head under either name
    missing = [k for k in state if k not in params]
    if missing:
        raise UserError(f"{path}: weights do not fit this model (e.g. {missing[0]})")
    for k, v in state.items():
        params[k].data.copy_(v.to(params[k].dtype))


@register
class FreezeMethod(TuningMethod):
    NAME = "freeze"
    OPTIONS = FreezeOptions
    TRAINS_BASE_WEIGHTS = True

    def check(self, cfg) -> None:
        super().check(cfg)
        if cfg.freeze.trainable_layers == 0:
            raise UserError("freeze_trainable_layers: 0 leaves nothing to train with method freeze")

    def apply(self, model, options: FreezeOptions):
        layers = _blocks(model)
        n = options.trainable_layers
        if n == 0 or abs(n) > len(layers):
            raise UserError(f"freeze_trainable_layers: must be between -{len(layers)} and {len(layers)} "
                            f"(not 0) for this {len(layers)}-layer model, got {n}")
        chosen = list(layers)[-n:] if n > 0 else list(layers)[:-n]
        keys = PARTS[options.modules]
        for p in model.parameters():
            p.requires_grad_(False)
        found = 0
        for block in chosen:
            for name, p in block.named_parameters():
                if any(k in name.split(".")[0] for k in keys):
                    p.requires_grad_(True)
                    found += 1
        if not found:
            raise UserError(f"freeze_modules '{options.modules}': no such parameters in the chosen blocks")
        return model

    def save(self, model, directory: str | Path, state: dict | None = None) -> None:
        from safetensors.torch import save_file

        frozen = {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
        if state is None:
            state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        # torch's gathered state also lists a head tied to a frozen embedding (e.g. ChatGLM-6B's):
        # drop it, or a vocabulary-sized copy is saved and refused when loaded
        state = {k: v for k, v in state.items() if k not in frozen}
        save_file({k: v.contiguous() for k, v in state.items()}, str(Path(directory) / WEIGHTS),
                  metadata={"format": "pt"})

    def load(self, model, directory: str | Path) -> None:
        load_into(model, Path(directory) / WEIGHTS)

    def attach(self, base, directory: str | Path, name: str = "default"):
        load_into(base, Path(directory) / WEIGHTS)
        return base
