"""Freeze tuning: train only some transformer blocks (the last N, or the first N when N < 0),
and within them the MLP, the attention or everything. The trained tensors are saved alone as
``trainable.safetensors``; loading puts them back over the base weights."""

from __future__ import annotations

from pathlib import Path

from instructglm.errors import UserError

MERGEABLE = True
USES_MODEL_FORWARD = False
FILE = "trainable.safetensors"
PARTS = {"mlp": ("mlp", "feed_forward", "ffn"), "attn": ("self_attn", "attention", "attn"), "all": ("",)}


def _blocks(model):
    from instructglm.train.loss import _causal_lm

    backbone = _causal_lm(model).get_decoder()
    layers = getattr(backbone, "layers", None) or getattr(getattr(backbone, "encoder", None), "layers", None)
    if layers is None:
        raise UserError(f"method freeze: cannot find the transformer blocks of {type(model).__name__}")
    return layers


def apply(model, cfg):
    layers = _blocks(model)
    n = cfg.freeze_trainable_layers
    if n == 0 or abs(n) > len(layers):
        raise UserError(f"freeze_trainable_layers: must be between -{len(layers)} and {len(layers)} "
                        f"(not 0) for this {len(layers)}-layer model, got {n}")
    chosen = list(layers)[-n:] if n > 0 else list(layers)[:-n]
    keys = PARTS[cfg.freeze_modules]
    for p in model.parameters():
        p.requires_grad_(False)
    found = 0
    for block in chosen:
        for name, p in block.named_parameters():
            if any(k in name.split(".")[0] for k in keys):
                p.requires_grad_(True)
                found += 1
    if not found:
        raise UserError(f"freeze_modules '{cfg.freeze_modules}': no such parameters in the chosen blocks")
    return model


def trainable_state(model) -> dict:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save(model, directory: str | Path, state: dict | None = None) -> None:
    from safetensors.torch import save_file

    state = trainable_state(model) if state is None else {k: v.contiguous() for k, v in state.items()}
    save_file(state, str(Path(directory) / FILE), metadata={"format": "pt"})


def load(model, directory: str | Path) -> None:
    _load_into(model, Path(directory) / FILE)


def _load_into(model, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path}: not found")
    state = load_file(str(path))
    params = dict(model.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise UserError(f"{path}: weights do not fit this model (e.g. {missing[0]})")
    for k, v in state.items():
        params[k].data.copy_(v.to(params[k].dtype))


def attach(base, directory: str | Path, name: str = "default"):
    _load_into(base, Path(directory) / FILE)
    return base
