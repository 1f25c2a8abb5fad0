"""The original ChatGLM-6B (v1): detecting its directories and loading model and tokenizer natively.

The official repository ships remote code (``auto_map`` → ``modeling_chatglm.py``) that no longer
runs on transformers 5; nothing here imports or executes any ``.py`` file from a model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from instructglm.models.chatglm.v1_config import ChatGLMv1Config
from instructglm.models.chatglm.v1_modeling import ChatGLMv1ForCausalLM, ChatGLMv1Model
from instructglm.models.chatglm.v1_tokenizer import ChatGLMv1Tokenizer

__all__ = ["ChatGLMv1Config", "ChatGLMv1ForCausalLM", "ChatGLMv1Model", "ChatGLMv1Tokenizer",
           "is_chatglm_v1_dir", "load_chatglm_v1", "load_chatglm_v1_tokenizer"]

# Keys only the v1 config has; ChatGLM2/3 (same model_type "chatglm") use padded_vocab_size,
# ffn_hidden_size, kv_channels, multi_query_attention instead.
_V1_KEYS = {"inner_hidden_size", "position_encoding_2d"}
_V2_KEYS = {"padded_vocab_size", "ffn_hidden_size", "kv_channels", "multi_query_attention"}


def _read_config(path) -> dict | None:
    file = Path(path) / "config.json"
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_chatglm_v1_dir(path) -> bool:
    """True when ``path`` holds an original ChatGLM-6B checkpoint (read from config.json only)."""
    cfg = _read_config(path)
    if not isinstance(cfg, dict) or cfg.get("model_type") != "chatglm":
        return False
    return _V1_KEYS <= cfg.keys() and not (_V2_KEYS & cfg.keys())


def load_chatglm_v1(path, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
                    device_map=None) -> ChatGLMv1ForCausalLM:
    """The model of a v1 directory (official ``pytorch_model*.bin`` shards or safetensors), in ``dtype``."""
    if not is_chatglm_v1_dir(path):
        raise ValueError(f"{path} is not a ChatGLM-6B (v1) checkpoint directory")
    config = ChatGLMv1Config.from_pretrained(str(path))
    config.use_cache = True  # the official config stores it; generate() wants a cache regardless
    model = ChatGLMv1ForCausalLM.from_pretrained(str(path), config=config, dtype=dtype,
                                                 attn_implementation=attn_implementation, device_map=device_map)
    model.tie_weights()  # the official code ties the head to the embedding (see ChatGLMv1Config)
    return model.eval()


def load_chatglm_v1_tokenizer(path, **kwargs) -> ChatGLMv1Tokenizer:
    """The tokenizer of a v1 directory: ``ice_text.model`` plus ``tokenizer_config.json``."""
    return ChatGLMv1Tokenizer.from_pretrained(str(path), **kwargs)
