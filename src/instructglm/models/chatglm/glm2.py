"""ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B-chat checkpoints on transformers' native ``glm`` architecture.

Those checkpoints are published in a remote-code layout (``config.json`` with ``model_type: chatglm`` and
an ``auto_map`` into ``modeling_chatglm.py``). We never execute their Python files. The architecture is
exactly transformers' ``GlmForCausalLM`` (multi-query attention, rotary on half of each head with
interleaved pairs, RMSNorm, SwiGLU), so the checkpoint is converted once — config, weights, tokenizer —
into a native directory that ``AutoModelForCausalLM`` loads without ``trust_remote_code``.

The weight and config mapping is in :mod:`instructglm.models.chatglm.glm2_layout`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

from instructglm.errors import UserError
from instructglm.models.chatglm.glm2_layout import (_check_supported, native_config, to_chatglm_layout,
                                                   to_native_layout)

log = logging.getLogger(__name__)

# Bump when the converted output changes, so that cached conversions are redone.
CONVERTER_VERSION = 1

# ----------------------------------------------------------------------------------------------
# detection
# ----------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _weight_files(src: Path) -> list[Path]:
    """The checkpoint's weight files, safetensors preferred (as transformers does)."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = _read_json(src / index_name)
        if index and isinstance(index.get("weight_map"), dict):
            return [src / f for f in sorted(set(index["weight_map"].values()))]
        if (src / single).is_file():
            return [src / single]
    return []


def _weight_names(src: Path) -> list[str]:
    """Tensor names, read from an index or from safetensors headers (no tensor data is loaded)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = _read_json(src / index_name)
        if index and isinstance(index.get("weight_map"), dict):
            return list(index["weight_map"])
    names = []
    for f in _weight_files(src):
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as st:
                names.extend(st.keys())
    return names


def _looks_like_chatglm2_config(cfg: dict | None) -> bool:
    # ChatGLM-6B (v1) also says model_type "chatglm" but has none of these fields.
    return bool(cfg) and cfg.get("model_type") == "chatglm" and all(
        k in cfg for k in ("num_layers", "padded_vocab_size", "kv_channels", "ffn_hidden_size"))


def is_chatglm2_dir(path) -> bool:
    """True for a ChatGLM2 / ChatGLM3 / GLM-4 remote-code checkpoint directory (judged from config.json
    and the weight names; nothing is executed)."""
    src = Path(path)
    if not src.is_dir() or not _looks_like_chatglm2_config(_read_json(src / "config.json")):
        return False
    names = _weight_names(src)
    # weights that are not listed in an index (e.g. .bin without index) are accepted on the config alone
    return not names or any(n.startswith("transformer.encoder.layers.") for n in names)


def chatglm_generation(path) -> int | None:
    """2, 3 or 4 for a ChatGLM2 / ChatGLM3 / GLM-4 checkpoint directory, None for anything else.

    GLM-4 is recognised by its tiktoken-format ``tokenizer.model``; ChatGLM2 and ChatGLM3 share the
    architecture and the sentencepiece vocabulary and differ only in their special tokens, so they are
    told apart by the ChatGLM3 role tokens in the tokenizer files (read as text, never run), then by
    the checkpoint name, then by ChatGLM3's multiple end-of-turn ids in generation_config.json.
    """
    from instructglm.models.chatglm.tokenizers import tokenizer_file_kind

    src = Path(path)
    if not is_chatglm2_dir(src):
        return None
    kind = tokenizer_file_kind(src / "tokenizer.model")
    if kind == "tiktoken":
        return 4
    cfg = _read_json(src / "config.json") or {}
    if kind is None and cfg.get("padded_vocab_size", 0) > 100_000:  # no tokenizer: GLM-4's 151552
        return 4
    for name in ("tokenization_chatglm.py", "tokenizer_config.json", "special_tokens_map.json"):
        f = src / name
        if f.is_file() and "<|observation|>" in f.read_text(errors="replace"):
            return 3
    tcfg = _read_json(src / "tokenizer_config.json") or {}
    for label in (cfg.get("_name_or_path"), tcfg.get("name_or_path"), src.resolve().name):
        label = str(label or "").lower()
        if "chatglm3" in label:
            return 3
        if "chatglm2" in label or "codegeex2" in label:
            return 2
    eos = (_read_json(src / "generation_config.json") or {}).get("eos_token_id")
    if isinstance(eos, list) and len(eos) > 1:
        return 3
    return 2


# ----------------------------------------------------------------------------------------------
# weight files
# ----------------------------------------------------------------------------------------------


def _load_shard(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    # weights_only: tensors are read without unpickling arbitrary objects (no code from the checkpoint)
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _save_shard(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------------------------


def convert_chatglm2(src_dir, dst_dir, generation: int | None = None) -> Path:
    """Convert a ChatGLM2/3/GLM-4 remote-code checkpoint into a native ``glm`` model directory.

    Writes ``config.json`` (``GlmConfig``), ``generation_config.json``, safetensors weights (one output
    shard per input shard, so peak memory is one shard) and the converted fast tokenizer with a chat
    template. Tensor dtypes are kept. ``dst_dir`` is created (it must not hold another model). Returns it.
    """
    from transformers import GenerationConfig

    from instructglm.models.chatglm.tokenizers import build_fast_tokenizer

    src, dst = Path(src_dir), Path(dst_dir)
    if not is_chatglm2_dir(src):
        raise UserError(f"{src}: not a ChatGLM2/ChatGLM3/GLM-4 checkpoint (config.json model_type 'chatglm' "
                        "with padded_vocab_size/kv_channels and transformer.encoder.* weights)")
    generation = generation or chatglm_generation(src)
    cfg = _read_json(src / "config.json")
    _check_supported(cfg, str(src / "config.json"))
    files = _weight_files(src)
    if not files:
        raise UserError(f"{src}: no model.safetensors / pytorch_model.bin weights")
    dst.mkdir(parents=True, exist_ok=True)

    native = native_config(cfg, generation)
    weight_map, seen = {}, set()
    for n, f in enumerate(files, 1):
        converted = to_native_layout(_load_shard(f), cfg)
        name = "model.safetensors" if len(files) == 1 else f"model-{n:05d}-of-{len(files):05d}.safetensors"
        _save_shard(converted, dst / name)
        weight_map.update({k: name for k in converted})
        seen.update(converted)
        del converted
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(cfg["num_layers"]):
        p = f"model.layers.{i}."
        expected |= {p + x for x in ("input_layernorm.weight", "post_attention_layernorm.weight",
                                     "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                     "self_attn.o_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight")}
        if native.attention_bias:
            expected |= {p + f"self_attn.{x}_proj.bias" for x in "qkv"}
    if native.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing = sorted(expected - seen)
    if missing:
        raise UserError(f"{src}: checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    if len(files) > 1:
        total = sum((dst / f).stat().st_size for f in set(weight_map.values()))
        (dst / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    native.save_pretrained(dst)

    tokenizer = None
    if (src / "tokenizer.model").is_file():
        tokenizer = build_fast_tokenizer(src, generation)
        tokenizer.save_pretrained(dst)
    else:
        log.warning("%s: no tokenizer.model; converted the model only", src)

    # End-of-turn ids: ChatGLM3 stops on </s>, <|user|> and <|observation|> (the next speaker);
    # GLM-4 lists its own in config.json.
    eos = cfg.get("eos_token_id")
    if generation == 3 and tokenizer is not None:
        eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|user|>"),
               tokenizer.convert_tokens_to_ids("<|observation|>")]
    gen_src = _read_json(src / "generation_config.json") or {}
    gen_cfg = GenerationConfig(eos_token_id=gen_src.get("eos_token_id", eos),
                               pad_token_id=native.pad_token_id if native.pad_token_id is not None else None)
    gen_cfg.save_pretrained(dst)
    (dst / "chatglm_source.json").write_text(json.dumps({
        "source": str(src.resolve()), "generation": generation, "converter_version": CONVERTER_VERSION,
        "original_config": cfg}, indent=2, ensure_ascii=False) + "\n")
    return dst


def _cache_key(src: Path) -> str:
    parts = [str(src.resolve()), f"v{CONVERTER_VERSION}"]
    for f in sorted(src.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin", ".model")):
            st = f.stat()
            parts.append(f"{f.name}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def prepare_chatglm2(src_dir, cache_root: Path) -> Path:
    """The cached native conversion of ``src_dir``, converting it first if needed.

    Keyed by the resolved path plus the size and mtime of every config/weight/tokenizer file (and the
    converter version): an edited checkpoint gets a new conversion. Converted into a temporary sibling
    directory and renamed into place, so an interrupted run never leaves a half-written cache and two
    concurrent runs both end with a complete directory.
    """
    src = Path(src_dir)
    if not is_chatglm2_dir(src):
        raise UserError(f"{src}: not a ChatGLM2/ChatGLM3/GLM-4 checkpoint")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", src.resolve().name) or "chatglm"
    target = Path(cache_root) / "chatglm" / f"{name}-{_cache_key(src)}"
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s -> %s (one-time conversion to the native glm architecture)", src, target)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        convert_chatglm2(src, tmp)
        (tmp / ".complete").write_text(json.dumps({"source": str(src.resolve())}) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:
            # target exists: a concurrent run finished first (keep it) or a stale incomplete one
            if (target / ".complete").is_file():
                return target
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def chatglm_source(native_dir) -> dict | None:
    """For a directory written by :func:`convert_chatglm2`: ``{"source", "generation",
    "converter_version", "original_config"}``; None for any other directory. ``merge`` uses
    ``original_config`` with :func:`to_chatglm_layout` / :func:`write_chatglm_checkpoint`."""
    info = _read_json(Path(native_dir) / "chatglm_source.json")
    return info if info and isinstance(info.get("original_config"), dict) else None


def write_chatglm_checkpoint(native_state_dict: Mapping, original_dir, dst_dir, dtype="original") -> Path:
    """Write ``native_state_dict`` (e.g. a merged model) as a checkpoint in the original remote-code layout.

    Weights go to ``model.safetensors`` in ChatGLM names; ``config.json``, tokenizer and the remote-code
    files of ``original_dir`` are copied as files (never imported), so the result loads wherever the
    original did. ``dtype="original"`` casts floating tensors to the checkpoint's ``torch_dtype`` (so the
    copied config.json stays true); ``None`` keeps them as given; or pass a ``torch.dtype``.
    """
    import torch

    src, dst = Path(original_dir), Path(dst_dir)
    cfg = _read_json(src / "config.json")
    if not _looks_like_chatglm2_config(cfg):
        raise UserError(f"{src}: not a ChatGLM2/ChatGLM3/GLM-4 checkpoint")
    if dtype == "original":
        dtype = getattr(torch, str(cfg.get("torch_dtype") or "float32").replace("torch.", ""))
    tensors = to_chatglm_layout(native_state_dict, cfg)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    dst.mkdir(parents=True, exist_ok=True)
    _save_shard(tensors, dst / "model.safetensors")
    copy_side_files(src, dst)
    return dst


def copy_side_files(src, dst) -> None:
    """Copy every file of checkpoint ``src`` except its weights (config, tokenizer, remote code: as
    files, never imported) into ``dst``, so that weights written there load wherever ``src`` did."""
    for f in Path(src).iterdir():
        if f.is_file() and not re.match(r"^(model|pytorch_model).*\.(safetensors|bin|json)$", f.name):
            shutil.copyfile(f, Path(dst) / f.name)
