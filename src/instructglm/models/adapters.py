"""One base model, several trained adapters: parsing ``--adapter name=path`` and loading them once.

``infer``, ``chat`` and ``serve`` accept ``--adapter PATH`` or, several times, ``--adapter NAME=PATH``.
PEFT adapters (LoRA, P-Tuning) are loaded side by side on the one base model and switched with
``model.set_adapter(name)``; the base model itself is available under :data:`BASE` (adapters
disabled). Freeze/full results replace base weights, so they cannot share a base with others.
"""

from __future__ import annotations

from pathlib import Path

from instructglm.errors import UserError

BASE = "base"


def parse_adapters(specs: list[str] | str | None) -> dict[str, str]:
    """``["a=/x", "/y"]`` -> ``{"a": "/x", "y": "/y"}`` (a bare path is named after its folder)."""
    if not specs:
        return {}
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s]
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec.rstrip("/")).name or "default", spec
        name = name.strip()
        if not name or name == BASE:
            raise UserError(f"--adapter {spec}: the name must not be empty or '{BASE}'")
        if name in out:
            raise UserError(f"--adapter {spec}: the name '{name}' is given twice")
        if not Path(path).is_dir():
            raise UserError(f"--adapter {spec}: directory {path} not found")
        out[name] = path
    return out


def load_with_adapters(model: str | None, adapters: dict[str, str], trust_remote_code: bool = False):
    """(model, tokenizer, names): the base with every adapter attached; names[0] is active.

    ``model`` defaults to the base model the first adapter was trained on.
    """
    from instructglm.models.embedded import DEFAULT_MODEL
    from instructglm.models.loading import load_model, load_tokenizer, resolve_model
    from instructglm.runinfo import adapter_info
    from instructglm.train.methods import get_method

    infos = {name: adapter_info(path) for name, path in adapters.items()}
    if model is None:
        model = next((i.base_model for i in infos.values() if i.base_model), None) or DEFAULT_MODEL
    path = resolve_model(model)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    loaded = load_model(path, trust_remote_code=trust_remote_code)
    methods = {name: infos[name].method for name in adapters}
    if len(adapters) > 1 and any(m in ("freeze", "full") for m in methods.values()):
        raise UserError("freeze/full results change the base weights and cannot be loaded beside other adapters; "
                        "give one at a time")
    names = list(adapters)
    for i, name in enumerate(names):
        method = get_method(methods[name])
        if i == 0:
            loaded = method.attach(loaded, adapters[name], name=name)
        else:
            try:
                loaded.load_adapter(adapters[name], adapter_name=name)
            except (ValueError, OSError, KeyError) as e:
                raise UserError(f"--adapter {name}={adapters[name]}: cannot load beside the others: {e}") from None
    from peft import PeftModel

    if names and isinstance(loaded, PeftModel):  # freeze/full results are plain models: nothing to switch
        loaded.set_adapter(names[0])
    loaded.eval()
    return loaded, tokenizer, names
