"""Base models: embedded names, GGUF files, local directories and hub ids; adapters on top."""

from instructglm.models.embedded import DEFAULT_MODEL, EMBEDDED
from instructglm.models.loading import (LAYOUTS, Layout, cache_dir, load_model, load_tokenizer, prepare_gguf,
                                        resolve_model, tokenizer_fingerprint)

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "LAYOUTS", "Layout", "cache_dir", "load_model", "load_tokenizer",
           "prepare_gguf", "resolve_model", "tokenizer_fingerprint"]
