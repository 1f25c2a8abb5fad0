"""Tiny random-initialised models and a small byte-level BPE tokenizer, built offline from configs."""

from __future__ import annotations

from pathlib import Path

ARCHS = ["llama", "qwen2", "gemma3", "glm", "glm4"]  # the families every per-architecture test covers

CORPUS = [
    "### Instruction:\n", "### Input:\n", "### Response:\n",
    "What is the capital of France? Paris. Convert to uppercase: good morning -> GOOD MORNING.",
    "Who are you? I am a tiny test model that learns to answer short questions.",
    "把下面的英文转换成大写字母。你是谁？我是一个测试模型。法国的首都是巴黎。",
    "今天天气很好。请把句子翻译成英文。日期格式转换：2024年3月15日。",
    "The quick brown fox jumps over the lazy dog 0123456789 {} [] , . : ; ! ?",
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def make_config(arch: str, vocab_size: int):
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "qwen2":
        return tf.Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**common, head_dim=16, sliding_window=16, query_pre_attn_scalar=16,
                                   tie_word_embeddings=True)
    if arch == "glm":
        return tf.GlmConfig(**common, head_dim=16, tie_word_embeddings=False)
    if arch == "glm4":
        return tf.Glm4Config(**common, head_dim=16, tie_word_embeddings=False)
    raise ValueError(arch)


def make_model_dir(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """Save a tiny random model + tokenizer under ``path``; return it."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(arch, len(tokenizer)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
