"""Base models: embedded names, GGUF files, local directories and hub ids; adapters on top."""

from instructglm.models.loading import (DEFAULT_MODEL, EMBEDDED, cache_dir, load_model, load_tokenizer,
                                        prepare_gguf, resolve_model, tokenizer_fingerprint)

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "cache_dir", "load_model", "load_tokenizer", "prepare_gguf",
           "resolve_model", "tokenizer_fingerprint"]
