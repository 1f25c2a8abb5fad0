"""One base model, several trained adapters: parsing ``--adapter name=path`` and loading them once.

``infer``, ``chat`` and ``serve`` accept ``--adapter PATH`` or, several times, ``--adapter NAME=PATH``.
PEFT adapters (LoRA, P-Tuning) are loaded side by side on the one base model and switched with
``model.set_adapter(name)``; the base model itself is available under :data:`BASE` (adapters
disabled). Freeze/full results replace base weights, so they cannot share a base with others.
"""

from __future__ import annotations

import re
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


def choose_base(model: str | None, adapters: dict[str, str]) -> str:
    """``--model``, else the base model the first adapter recorded (an absolute path, hub id or embedded
    name), else the default model. A recorded directory that is gone is a one-line error asking for
    ``--model``."""
    from instructglm.models.embedded import DEFAULT_MODEL, EMBEDDED
    from instructglm.runinfo import adapter_info

    if model:
        return model
    for path in adapters.values():
        base = adapter_info(path).base_model
        if not base:
            continue
        if base not in EMBEDDED and Path(base).is_absolute() and not Path(base).exists():
            raise UserError(f"--adapter {path}: its base model {base} (recorded in instructglm.json) is not "
                            f"there; give --model")
        return base
    return DEFAULT_MODEL


def load_with_adapters(model: str | None, adapters: dict[str, str], trust_remote_code: bool = False):
    """(model, tokenizer, names): the base with every adapter attached; names[0] is active.

    ``model`` defaults to the base model the first adapter was trained on; every adapter is checked
    against the base first (:func:`check_adapter_fits`).
    """
    from instructglm.models.loading import load_model, load_tokenizer, resolve_model
    from instructglm.models.vocab import extend_for_adapters
    from instructglm.runinfo import adapter_info
    from instructglm.train.methods import get_method

    infos = {name: adapter_info(path) for name, path in adapters.items()}
    model = choose_base(model, adapters)
    path = resolve_model(model)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    loaded = load_model(path, trust_remote_code=trust_remote_code)
    loaded, tokenizer = extend_for_adapters(loaded, tokenizer, list(adapters.values()))  # an extended vocabulary
    for name, adapter in adapters.items():  # before attaching: PEFT would load a misfit with exit 0
        check_adapter_fits(loaded, tokenizer, adapter, model, f"{name}={adapter}" if len(adapters) > 1 else adapter)
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


# ------------------------------------------------------------------ does an adapter fit a base model?

# Config fields whose value an adapter's weights (or the positions it was trained on) depend on; only
# the fields both configs have are compared (families name them differently).
SIGNATURE_KEYS = ("model_type", "vocab_size", "padded_vocab_size", "hidden_size", "num_hidden_layers", "num_layers",
                  "num_attention_heads", "num_key_value_heads", "multi_query_group_num", "intermediate_size",
                  "ffn_hidden_size", "head_dim", "kv_channels")


def base_signature(config) -> dict:
    """What an adapter needs its base to be: the family and the sizes its weights were shaped by."""
    values = {k: getattr(config, k, None) for k in SIGNATURE_KEYS}
    return {k: v for k, v in values.items() if isinstance(v, (int, str))}


def weight_shapes(path: Path) -> dict[str, list[int]]:
    """name -> shape of a safetensors file, read from its header; a one-line UserError when the file is
    missing, truncated or not safetensors (checked before anything loads it)."""
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path}: file not found; the directory is incomplete")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError (truncated, not safetensors) derives from Exception
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: damaged or truncated ({first})") from None


def _weight_files(directory: Path, method: str) -> list[Path]:
    """The weight files of a trained result (the one the method writes must be there)."""
    from instructglm.train.methods.freeze.method import WEIGHTS as FREEZE_WEIGHTS
    from instructglm.train.methods.peft_adapter import ADAPTER_WEIGHTS

    required = {"lora": ADAPTER_WEIGHTS, "ptuning": ADAPTER_WEIGHTS, "freeze": FREEZE_WEIGHTS}.get(method)
    if required and not (directory / required).is_file() and not (directory / "adapter_model.bin").is_file():
        raise UserError(f"{directory / required}: file not found; {directory} is not a complete {method} result")
    return sorted(p for p in directory.glob("*.safetensors") if p.name != "rng.safetensors")


def _shape_problem(model, shapes: dict[str, list[int]]) -> str | None:
    """The first trained weight whose shape the base model cannot take, said in a few words."""
    import torch

    params = {n: list(p.shape) for n, p in model.named_parameters()}
    for key, shape in shapes.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_(A|B|embedding_A|embedding_B)(?:\.weight)?", key)
        if m is None:
            if key in params and params[key] != shape:
                return f"{key} is {shape} in the adapter, {params[key]} in the base"
            continue
        module_name, part = m.groups()
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            return f"the adapter trains {module_name}, which the base model does not have"
        if isinstance(module, torch.nn.Linear):
            want, got = (module.in_features, shape[1]) if part == "A" else (module.out_features, shape[0])
        elif isinstance(module, torch.nn.Embedding):
            want, got = ((module.num_embeddings, shape[1]) if part == "embedding_A"
                         else (module.embedding_dim, shape[0]))
        else:
            continue
        if want != got and len(shape) == 2:
            return f"{module_name} takes {want} features in the base, {got} in the adapter's lora_{part}"
    return None


def _fingerprint(tokenizer) -> str:
    """The tokenizer's fingerprint as ``tokenize`` recorded it: a fast tokenizer that has encoded a padded
    batch carries padding settings in its backend, which the fingerprint would include, so a copy
    without them is fingerprinted."""
    import copy

    from instructglm.models.loading import tokenizer_fingerprint

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and (backend.padding is not None or backend.truncation is not None):
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.backend_tokenizer.no_padding()
        tokenizer.backend_tokenizer.no_truncation()
    return tokenizer_fingerprint(tokenizer)


def _describe(signature: dict) -> str:
    shown = [str(signature["model_type"])] if "model_type" in signature else []
    shown += [f"{k} {v}" for k, v in signature.items() if k in ("hidden_size", "num_hidden_layers", "vocab_size")]
    return ", ".join(shown) or "unknown"


def check_adapter_fits(model, tokenizer, adapter_dir: str | Path, model_name: str | None = None,
                       label: str | None = None) -> None:
    """Refuse, in one line naming both, an adapter that was trained on another base than ``model``
    (family or sizes differ, a trained weight does not fit, another tokenizer) or whose weight files
    are missing or damaged. ``model`` is the plain base (before adapters are attached); ``infer``,
    ``chat``, ``serve`` (through :func:`load_with_adapters`) and ``merge`` call it."""
    from instructglm.runinfo import adapter_info

    directory = Path(adapter_dir)
    who = f"--adapter {label or directory}"
    info = adapter_info(directory)
    shapes: dict[str, list[int]] = {}
    for path in _weight_files(directory, info.method):
        shapes.update(weight_shapes(path))
    trained_on = info.base_model or "another base model"
    base = f"--model {model_name}" if model_name else "the base model"
    recorded = info.base_config or {}
    here = base_signature(model.config)
    differs = [k for k in recorded if k in here and recorded[k] != here[k]]
    if differs:
        raise UserError(f"{who}: trained on {trained_on} ({_describe(recorded)}), which {base} is not "
                        f"({_describe(here)}; {differs[0]} {recorded[differs[0]]} vs {here[differs[0]]})")
    fingerprint = _fingerprint(tokenizer) if info.tokenizer and tokenizer is not None else info.tokenizer
    if fingerprint != info.tokenizer:
        raise UserError(f"{who}: trained with the tokenizer of {trained_on} (fingerprint {info.tokenizer}), "
                        f"but {base} has another (fingerprint {fingerprint}); its token ids would mean other text")
    problem = _shape_problem(model, shapes)
    if problem:
        raise UserError(f"{who}: trained on {trained_on}, does not fit {base}: {problem}")
