"""Configuration of the original ChatGLM-6B (v1) — the keys of THUDM/chatglm-6b's ``config.json``.

The names are the checkpoint's own (``num_layers``, ``inner_hidden_size``, ...) so that a config
saved from here still loads with the official remote code; ``attribute_map`` adds the names that
transformers, PEFT and the rest of InstructGLM look up (``num_hidden_layers``, ``intermediate_size``).
"""

from __future__ import annotations

from transformers import PretrainedConfig


class ChatGLMv1Config(PretrainedConfig):
    # The checkpoint says "chatglm"; so do ChatGLM2/3, which is why this class is never registered
    # with the Auto classes: :func:`instructglm.models.chatglm.v1.is_chatglm_v1_dir` tells them apart.
    model_type = "chatglm"
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "intermediate_size": "inner_hidden_size",
        "max_position_embeddings": "max_sequence_length",
        "layer_norm_eps": "layernorm_epsilon",
    }
    keys_to_ignore_at_inference = ["cache"]

    def __init__(
        self,
        vocab_size: int = 130528,
        hidden_size: int = 4096,
        num_layers: int = 28,
        num_attention_heads: int = 32,
        layernorm_epsilon: float = 1e-5,
        use_cache: bool = True,
        bos_token_id: int = 130004,
        eos_token_id: int = 130005,
        mask_token_id: int = 130000,
        gmask_token_id: int = 130001,
        pad_token_id: int = 3,
        max_sequence_length: int = 2048,
        inner_hidden_size: int = 16384,
        position_encoding_2d: bool = True,
        quantization_bit: int = 0,
        pre_seq_len: int | None = None,
        prefix_projection: bool = False,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.layernorm_epsilon = layernorm_epsilon
        self.use_cache = use_cache
        self.mask_token_id = mask_token_id
        self.gmask_token_id = gmask_token_id
        self.max_sequence_length = max_sequence_length
        self.inner_hidden_size = inner_hidden_size
        self.position_encoding_2d = position_encoding_2d
        self.quantization_bit = quantization_bit
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        # The official config never sets tie_word_embeddings, so transformers' default (tied) applied
        # when the remote code ran: the output head *is* the input embedding matrix.
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.tie_word_embeddings = tie_word_embeddings

