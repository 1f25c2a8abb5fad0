"""A tiny random ChatGLM-6B (v1) checkpoint in the official directory layout, rebuilt bit for bit.

The reference figures in ``tests/data/chatglm/v1/reference.json`` were recorded by running the
original (remote-code) ChatGLM-6B implementation on the checkpoint that :func:`build_tiny_checkpoint`
writes; the tests rebuild the same checkpoint and compare our native implementation against them.
So this file must stay runnable on an old transformers too (it only needs torch and the standard
library) and must not change what it writes: any change here invalidates the recorded figures.

The sentencepiece model (``ice_text.model``, a few KB) is committed next to the figures; it was
trained by :func:`train_tiny_spm` (``python tests/helpers/chatglm_tiny.py spm OUT``) with one thread
and fixed options, so it can be regenerated, but the tests use the committed file.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "chatglm" / "v1"
SPM_FILE = DATA_DIR / "ice_text.model"

# The real ice_text.model carries these as single pieces; the tokenizer rewrites newlines, tabs and
# runs of spaces into them before sentencepiece sees the text.
BLANKS = [f"<|blank_{n}|>" for n in range(2, 81)]
GLM_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]
NUM_IMAGE_TOKENS = 20000  # ChatGLM-6B's tokenizer shifts every sentencepiece id by this much

TINY = dict(hidden_size=64, num_layers=2, num_attention_heads=4, inner_hidden_size=256)
SEED = 1234


def corpus_lines() -> list[str]:
    """Mixed Chinese/English training text for the tiny sentencepiece model (our own sentences)."""
    zh = ["今天天气很好", "我们一起学习机器学习", "请把这句话翻译成英文", "模型的回答应该简洁明了",
          "你好，世界", "训练数据需要清洗", "问：什么是注意力机制？答：一种加权求和", "北京是中国的首都"]
    en = ["the quick brown fox jumps over the lazy dog", "hello world from a tiny model",
          "instruction tuning makes models follow requests", "attention is a weighted sum of values",
          "print the numbers from one to ten", "def add(a, b): return a + b"]
    lines = []
    for i in range(40):
        lines.append(f"{zh[i % len(zh)]} {en[i % len(en)]} {i}")
        lines.append(f"[Round {i % 3}]<n>问：{zh[(i * 3) % len(zh)]}<n>答：{en[(i * 5) % len(en)]}")
    return lines


def train_tiny_spm(out_model: Path) -> Path:
    """Train the tiny sentencepiece model deterministically (one thread, no sampling, fixed seed)."""
    import sentencepiece as spm

    out_model = Path(out_model)
    text = out_model.with_suffix(".txt")
    text.write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(out_model.with_suffix("")), model_type="unigram",
        vocab_size=600, character_coverage=1.0, byte_fallback=True, num_threads=1,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        pad_piece="<pad>", user_defined_symbols=["<n>", "<|tab|>"] + BLANKS + GLM_SPECIALS,
        split_digits=True, shuffle_input_sentence=False, seed_sentencepiece_size=10000,
        hard_vocab_limit=False, normalization_rule_name="identity", minloglevel=2,
    )
    text.unlink()
    out_model.with_suffix(".vocab").unlink()
    return out_model


def spm_piece_ids(model_file: Path = SPM_FILE) -> dict[str, int]:
    """Ids (after the image-token offset) of the pieces the config needs, read from the model file."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    names = ["[MASK]", "[gMASK]", "<sop>", "<eop>", "<pad>", "<unk>"]
    return {n: sp.piece_to_id(n) + NUM_IMAGE_TOKENS for n in names} | {"vocab": sp.get_piece_size()}


def official_config(ids: dict[str, int], pre_seq_len: int | None = None) -> dict:
    """config.json as THUDM/chatglm-6b writes it (model_type "chatglm", remote-code auto_map)."""
    return {
        "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "bos_token_id": ids["<sop>"], "eos_token_id": ids["<eop>"], "mask_token_id": ids["[MASK]"],
        "gmask_token_id": ids["[gMASK]"], "pad_token_id": ids["<pad>"],
        "hidden_size": TINY["hidden_size"], "inner_hidden_size": TINY["inner_hidden_size"],
        "layernorm_epsilon": 1e-05, "max_sequence_length": 2048, "model_type": "chatglm",
        "num_attention_heads": TINY["num_attention_heads"], "num_layers": TINY["num_layers"],
        "position_encoding_2d": True, "torch_dtype": "float16", "transformers_version": "4.27.1",
        "use_cache": True, "vocab_size": ids["vocab"] + NUM_IMAGE_TOKENS,
        "pre_seq_len": pre_seq_len, "prefix_projection": False,
    }


def tokenizer_config() -> dict:
    return {"bos_token": "<sop>", "eos_token": "<eop>", "end_token": "</s>", "gmask_token": "[gMASK]",
            "mask_token": "[MASK]", "pad_token": "<pad>", "unk_token": "<unk>", "remove_space": False,
            "do_lower_case": False, "num_image_tokens": NUM_IMAGE_TOKENS, "padding_side": "left",
            "tokenizer_class": "ChatGLMTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}


def tiny_state_dict(cfg: dict, seed: int = SEED) -> dict:
    """Seeded random weights under the official parameter names.

    Every value is rounded to float16 first: the original code builds its layers in half precision
    and copies the checkpoint into them, so only fp16-exact weights load identically in both."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, ff, vocab = cfg["hidden_size"], cfg["inner_hidden_size"], cfg["vocab_size"]

    def rnd(*shape, std=0.05, mean=0.0):
        return (torch.randn(*shape, generator=g) * std + mean).half().float()

    sd = {"transformer.word_embeddings.weight": rnd(vocab, h, std=0.5)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.layers.{i}."
        sd[p + "input_layernorm.weight"] = rnd(h, std=0.1, mean=1.0)
        sd[p + "input_layernorm.bias"] = rnd(h, std=0.02)
        sd[p + "attention.query_key_value.weight"] = rnd(3 * h, h, std=0.4)
        sd[p + "attention.query_key_value.bias"] = rnd(3 * h, std=0.05)
        sd[p + "attention.dense.weight"] = rnd(h, h, std=0.6)
        sd[p + "attention.dense.bias"] = rnd(h, std=0.02)
        sd[p + "post_attention_layernorm.weight"] = rnd(h, std=0.1, mean=1.0)
        sd[p + "post_attention_layernorm.bias"] = rnd(h, std=0.02)
        sd[p + "mlp.dense_h_to_4h.weight"] = rnd(ff, h, std=0.3)
        sd[p + "mlp.dense_h_to_4h.bias"] = rnd(ff, std=0.02)
        sd[p + "mlp.dense_4h_to_h.weight"] = rnd(h, ff, std=0.6)
        sd[p + "mlp.dense_4h_to_h.bias"] = rnd(h, std=0.02)
    sd["transformer.final_layernorm.weight"] = rnd(h, std=0.1, mean=1.0)
    sd["transformer.final_layernorm.bias"] = rnd(h, std=0.02)
    # The original config leaves tie_word_embeddings at its default (True), so the head *is* the
    # input embedding there; the official checkpoints store the same matrix under both names.
    sd["lm_head.weight"] = sd["transformer.word_embeddings.weight"].clone()
    if cfg.get("pre_seq_len"):
        sd["transformer.prefix_encoder.embedding.weight"] = rnd(
            cfg["pre_seq_len"], cfg["num_layers"] * h * 2, std=0.5)
    return sd


def build_tiny_checkpoint(out_dir: Path, pre_seq_len: int | None = None, spm_file: Path = SPM_FILE) -> Path:
    """Write the tiny checkpoint (config, tokenizer files, ``pytorch_model.bin``) into ``out_dir``."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = official_config(spm_piece_ids(spm_file), pre_seq_len)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2))
    shutil.copyfile(spm_file, out_dir / "ice_text.model")
    torch.save(tiny_state_dict(cfg), out_dir / "pytorch_model.bin")
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "spm":
        print(train_tiny_spm(Path(sys.argv[2])))
    elif len(sys.argv) == 2:
        print(build_tiny_checkpoint(Path(sys.argv[1])))
    else:
        sys.exit("usage: chatglm_tiny.py OUT_DIR | chatglm_tiny.py spm OUT.model")
