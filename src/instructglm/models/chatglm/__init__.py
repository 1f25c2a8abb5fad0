"""Native implementations of the ChatGLM family checkpoints that ship remote code.

* ChatGLM-6B (v1): its own transformers-compatible model and tokenizer (``v1_*.py``), loading the
  official weights under their official names.
* ChatGLM2-6B, ChatGLM3-6B, GLM-4-9B-chat: converted once (cached) to transformers' native ``glm``
  model and a fast tokenizer (``glm2.py``, ``tokenizers.py``); written back in their own layout by merge.
"""

from instructglm.models.chatglm.glm2 import (
    chatglm_generation,
    chatglm_source,
    copy_side_files,
    convert_chatglm2,
    is_chatglm2_dir,
    prepare_chatglm2,
    to_chatglm_layout,
    write_chatglm_checkpoint,
)
from instructglm.models.chatglm.v1 import (
    ChatGLMv1Config,
    ChatGLMv1ForCausalLM,
    ChatGLMv1Model,
    ChatGLMv1Tokenizer,
    is_chatglm_v1_dir,
    load_chatglm_v1,
    load_chatglm_v1_tokenizer,
)

__all__ = ["ChatGLMv1Config", "ChatGLMv1ForCausalLM", "ChatGLMv1Model", "ChatGLMv1Tokenizer",
           "is_chatglm_v1_dir", "load_chatglm_v1", "load_chatglm_v1_tokenizer",
           "chatglm_generation", "chatglm_source", "copy_side_files", "convert_chatglm2", "is_chatglm2_dir",
           "prepare_chatglm2",
           "to_chatglm_layout", "write_chatglm_checkpoint"]
