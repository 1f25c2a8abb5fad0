"""Tiny ChatGLM2 / ChatGLM3 / GLM-4 checkpoints in their original remote-code layout.

The checkpoints are what ``THUDM/chatglm2-6b``, ``THUDM/chatglm3-6b`` and ``THUDM/glm-4-9b-chat``
look like on disk (``config.json`` with ``model_type: chatglm``, ``transformer.encoder.layers.N...``
weights, ``tokenizer.model``), shrunk to hidden size 64, 2 layers, 4 heads, 2 query groups.

Nothing here runs or contains the original modelling code. The reference figures in
``tests/data/chatglm/<gen>/reference.json`` were produced once by running the original remote code
(transformers 4.40.2) on exactly the checkpoints :func:`make_tiny_checkpoint` writes; the weights are
regenerated bit for bit from a seed (their sha256 is part of the reference file, so a drift in the
builder shows up as a clear test failure rather than as a numerical mismatch).

The tokenizer files are committed under ``tests/data/chatglm/<gen>/`` because sentencepiece training
is not guaranteed to be reproducible across versions; :func:`train_sentencepiece` and
:func:`train_tiktoken_ranks` are the functions that created them.

The module must import in a bare environment with torch + safetensors only (it is also used from the
throwaway reference environment with transformers 4.40).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "chatglm"
GENERATIONS = ("v2", "v3", "glm4")

# Our own text (no third-party corpus): mixed Chinese / English, code-ish indentation, tabs and
# newlines, so that the tiny vocabularies contain multi-space pieces and CJK merges.
CORPUS = [
    "What is the capital of France? Paris is the capital of France.",
    "Who are you? I am a tiny test model that answers short questions.",
    "Convert to uppercase: good morning -> GOOD MORNING.",
    "把下面的英文转换成大写字母。你是谁？我是一个测试模型。法国的首都是巴黎。",
    "今天天气很好。请把句子翻译成英文。日期格式转换：2024年3月15日。",
    "你好，世界！Hello, world! 我们一起学习 machine learning 和 deep learning。",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n        print(i)\n",
    "if x:\n\tprint('tab indented')\n\t\treturn None\n",
    "The quick brown fox jumps over the lazy dog 0123456789 {} [] , . : ; ! ?",
    "instruction tuning of general language models with low rank adapters",
    "问题：一年有几个月？答案：一年有十二个月。",
    "Answer the question step by step.  Two  spaces   three   spaces    four.",
]

# ----------------------------------------------------------------------------------------------
# tokenizers (creation only; the committed files are what the tests use)
# ----------------------------------------------------------------------------------------------


def train_sentencepiece(dst: Path, vocab_size: int = 600) -> Path:
    """Train the tiny BPE sentencepiece model used for both ChatGLM2 and ChatGLM3.

    The trainer options mirror what the real ChatGLM2/3 ``tokenizer.model`` does to text: BPE with
    byte fallback (so ``\\n`` and ``\\t`` become ``<0x0A>`` / ``<0x09>``), a dummy ``▁`` prefix,
    whitespace runs kept (``remove_extra_whitespaces=False``) and no NFKC normalisation.
    """
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    # Newlines and tabs are kept out of the training text so that, as in the real vocabulary, they
    # only exist as byte pieces.
    lines = [line.replace("\n", " ").replace("\t", " ") for line in CORPUS]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 8), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        character_coverage=1.0, byte_fallback=True, split_digits=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, normalization_rule_name="identity",
        num_threads=1, shuffle_input_sentence=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(model.getvalue())
    return dst


# The split pattern GLM-4's tokenizer uses before byte-level BPE (a public regular expression, the same
# family as cl100k's).
GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

GLM4_SPECIAL = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                "<|assistant|>", "<|observation|>"]


def train_tiktoken_ranks(dst: Path, merges: int = 200) -> Path:
    """Train a tiny byte-level BPE and write it in GLM-4's ``tokenizer.model`` format (base64 rank).

    Ranks 0..255 are the single bytes; every later rank is the concatenation of two lower-ranked
    tokens (which is what tiktoken's merge rule needs). Deterministic: ties are broken by the pair's
    bytes.
    """
    import regex

    words = Counter()
    for text in CORPUS * 4:
        for piece in regex.findall(GLM4_PATTERN, text):
            words[tuple(bytes([b]) for b in piece.encode("utf-8"))] += 1
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(merges):
        pairs = Counter()
        for word, n in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        new_words = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += n
        words = new_words
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
    return dst


def glm4_tokenizer_config(n_ranks: int) -> dict:
    """``tokenizer_config.json`` of the tiny GLM-4 checkpoint: special tokens right after the ranks."""
    return {
        "added_tokens_decoder": {str(n_ranks + i): {"content": t, "lstrip": False, "normalized": False,
                                                     "rstrip": False, "single_word": False, "special": True}
                                 for i, t in enumerate(GLM4_SPECIAL)},
        "additional_special_tokens": GLM4_SPECIAL[1:],
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "padding_side": "left",
        "clean_up_tokenization_spaces": False, "do_lower_case": False, "remove_space": False,
        "model_max_length": 128000,
        "tokenizer_class": "ChatGLM4Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
    }


def build_tokenizer_data() -> None:
    """(Re)create the committed tokenizer files. Run once by hand; the tests never call it."""
    sp = train_sentencepiece(DATA / "v2" / "tokenizer.model")
    (DATA / "v3").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sp, DATA / "v3" / "tokenizer.model")
    ranks = train_tiktoken_ranks(DATA / "glm4" / "tokenizer.model")
    n = sum(1 for _ in open(ranks))
    (DATA / "glm4" / "tokenizer_config.json").write_text(json.dumps(glm4_tokenizer_config(n), indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# configs and weights
# ----------------------------------------------------------------------------------------------

SEEDS = {"v2": 2, "v3": 3, "glm4": 4}


def _vocab_sizes(gen: str) -> tuple[int, int]:
    """(tokens the tokenizer can produce, padded_vocab_size)."""
    if gen == "glm4":
        n = sum(1 for _ in open(DATA / "glm4" / "tokenizer.model")) + len(GLM4_SPECIAL)
    else:
        import sentencepiece as spm

        n = spm.SentencePieceProcessor(model_file=str(DATA / gen / "tokenizer.model")).vocab_size()
        n += 5 if gen == "v2" else 9
    return n, (n + 31) // 32 * 32


def tiny_config(gen: str) -> dict:
    """A ``config.json`` in the remote-code layout, with the fields of the real checkpoint of ``gen``."""
    _, padded = _vocab_sizes(gen)
    auto = {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}
    cfg = {
        "_name_or_path": {"v2": "THUDM/chatglm2-6b", "v3": "THUDM/chatglm3-6b", "glm4": "THUDM/glm-4-9b-chat"}[gen],
        "model_type": "chatglm", "architectures": ["ChatGLMModel"], "auto_map": auto,
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True, "bias_dropout_fusion": True, "ffn_hidden_size": 96,
        "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": 64, "kv_channels": 16,
        "layernorm_epsilon": 1e-5, "multi_query_attention": True, "multi_query_group_num": 2,
        "num_attention_heads": 4, "num_layers": 2, "original_rope": True, "padded_vocab_size": padded,
        "post_layer_norm": True, "rmsnorm": True, "seq_length": 256, "use_cache": True,
        "torch_dtype": "float32", "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0,
    }
    if gen == "v3":
        # chatglm3-6b-32k/128k ship rope_ratio; the plain 6b relies on the default 1. Use a non-trivial
        # value so that the base scaling is exercised.
        cfg["rope_ratio"] = 50
    if gen == "glm4":
        n_ranks = sum(1 for _ in open(DATA / "glm4" / "tokenizer.model"))
        cfg.update({"rope_ratio": 500, "layernorm_epsilon": 1.5625e-07, "classifier_dropout": None,
                    "eos_token_id": [n_ranks + 0, n_ranks + 7, n_ranks + 9], "pad_token_id": n_ranks})
    return cfg


def tiny_state_dict(config: dict, seed: int):
    """Original-layout tensors, drawn from a seeded CPU generator (bit-for-bit reproducible)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, heads, kv = config["hidden_size"], config["num_attention_heads"], config["kv_channels"]
    groups, ffn, vocab = config["multi_query_group_num"], config["ffn_hidden_size"], config["padded_vocab_size"]
    qkv = heads * kv + 2 * groups * kv

    def rnd(*shape, std=0.08):
        return torch.randn(*shape, generator=g) * std

    def norm():  # around 1 so that a wrong norm placement changes the logits visibly
        return 1.0 + rnd(h, std=0.1)

    sd = {"transformer.embedding.word_embeddings.weight": rnd(vocab, h, std=0.5)}
    # The original checkpoints carry the rotary buffer (float, length kv_channels / 4); it is derived
    # data, stored here so that loaders are exercised against it.
    sd["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, kv // 2, 2).float() / (kv // 2)))
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm()
        sd[p + "self_attention.query_key_value.weight"] = rnd(qkv, h, std=0.25)
        sd[p + "self_attention.query_key_value.bias"] = rnd(qkv, std=0.2)
        sd[p + "self_attention.dense.weight"] = rnd(h, heads * kv)
        sd[p + "post_attention_layernorm.weight"] = norm()
        sd[p + "mlp.dense_h_to_4h.weight"] = rnd(2 * ffn, h, std=0.2)
        sd[p + "mlp.dense_4h_to_h.weight"] = rnd(h, ffn)
    sd["transformer.encoder.final_layernorm.weight"] = norm()
    sd["transformer.output_layer.weight"] = rnd(vocab, h, std=0.3)
    return {k: v.contiguous() for k, v in sd.items()}


def state_dict_sha256(sd) -> str:
    digest = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def make_tiny_checkpoint(dst: Path, gen: str, shards: int = 1) -> Path:
    """Write a tiny checkpoint of generation ``gen`` ("v2", "v3" or "glm4") under ``dst``.

    Holds config.json, safetensors weights (``shards`` > 1 writes an index, like the real
    multi-file checkpoints), tokenizer.model and tokenizer_config.json — and no Python files.
    """
    from safetensors.torch import save_file

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    config = tiny_config(gen)
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    sd = tiny_state_dict(config, SEEDS[gen])
    if shards == 1:
        save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(sd)
        weight_map = {}
        for s in range(shards):
            part = names[s::shards]
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: sd[k] for k in part}, str(dst / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copyfile(DATA / gen / "tokenizer.model", dst / "tokenizer.model")
    if gen == "glm4":
        shutil.copyfile(DATA / gen / "tokenizer_config.json", dst / "tokenizer_config.json")
    else:
        (dst / "tokenizer_config.json").write_text(json.dumps({
            "name_or_path": config["_name_or_path"], "remove_space": False, "do_lower_case": False,
            "tokenizer_class": "ChatGLMTokenizer", "padding_side": "left",
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}, indent=2) + "\n")
    return dst


if __name__ == "__main__":
    build_tokenizer_data()
