"""The tokenizer as GGUF metadata, so that llama.cpp tokenizes text into the ids transformers gives.

Two kinds of fast (``tokenizer.json``) BPE tokenizers are written:

* byte-level BPE (GPT-2 alphabet; ``tokenizer.ggml.model = gpt2``): tokens, merges, and the name
  llama.cpp knows the pre-tokenizer's split regex by (``tokenizer.ggml.pre``). GLM-4's split regex is
  cl100k's; under the ``chatglm`` architecture it is named ``glm4``, which also makes llama.cpp keep a
  word whole when it is in the vocabulary (tiktoken's rule, ``ignore_merges`` in our tokenizer).
* SentencePiece-style BPE with byte fallback (``llama``: ChatGLM2/3's ``tokenizer.model`` as our
  converted tokenizer holds it, Llama-2-style tokenizers). llama.cpp's SPM tokenizer repeatedly joins
  the adjacent pair whose joined text is the highest-scoring token; transformers joins the pair whose
  merge comes first in ``merges``. A token's score is therefore minus the position of the first merge
  that produces it, so that both take the same path; tokens no merge produces cannot be reached by
  transformers and get the lowest score. llama.cpp puts the ``▁`` word-start mark before every run of
  text after a special token, as the ``Prepend`` normaliser does to every piece of text between added
  tokens; its other normalisation (collapsing runs of spaces, a precompiled character map) it does not
  do, which is logged.

Special tokens are CONTROL, other added tokens USER_DEFINED. The BOS/EOS/PAD/UNK ids come from the
tokenizer; a vocabulary with the ChatGLM role tokens also gets ``<|user|>`` as end of turn and
``<|observation|>`` as end of message (what the model writes to hand over to a tool), so llama.cpp
stops where the official ``chat()`` stops (llama.cpp logs that these are "not in special_eog_ids" and
adds them: it knows end-of-generation tokens by a list of names, which lacks ChatGLM's).
"""

from __future__ import annotations

import json
import logging
import re

from instructglm.errors import UserError

log = logging.getLogger(__name__)

# Pre-tokenizer split patterns llama.cpp knows by name (its tokenizer.ggml.pre values), per architecture.
_CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_PATTERNS = {
    _CL100K: "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}
_ARCH_PRE = {"chatglm": {_CL100K: "glm4"}}
LOWEST_SCORE = -1e9


def add_tokenizer(writer, tokenizer, config, template_text: str | None, model_path: str) -> int:
    """Tokenizer metadata; returns the vocabulary size written (padded to the embedding rows)."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{model_path}: only fast (tokenizer.json) tokenizers can be exported to GGUF")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"{model_path}/tokenizer.json: a {model.get('type')} tokenizer cannot be exported to GGUF "
                        f"yet (BPE only)")
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))
    if not byte_level and not model.get("byte_fallback"):
        raise UserError(f"{model_path}/tokenizer.json: a BPE tokenizer without byte-level pre-tokenization or "
                        f"byte fallback cannot be exported to GGUF")
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"{model_path}: the tokenizer has {len(tokenizer)} tokens but the model only "
                        f"{config.vocab_size} embedding rows (config.json vocab_size)")
    tokens, types = _token_list(tokenizer, spec, config.vocab_size, byte_level)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    if byte_level:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_name(spec.get("pre_tokenizer"), writer.arch))
        writer.add_token_merges([" ".join(m) for m in merges])
    else:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(merge_scores(tokens, types, merges))
        normalizer = json.dumps(spec.get("normalizer"))
        writer.add_add_space_prefix("Prepend" in normalizer)
        if "Precompiled" in normalizer or " {2,}" in normalizer:
            log.warning("%s: the tokenizer normalises text (a character map or collapsing runs of spaces), which "
                        "llama.cpp does not do; such text may be tokenized differently there", model_path)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    _add_special_ids(writer, tokenizer)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id)
    if template_text:
        writer.add_chat_template(template_text)
    return config.vocab_size


def _token_list(tokenizer, spec: dict, n: int, byte_level: bool) -> tuple[list[str], list[int]]:
    """Every id's text and GGUF token type, ``n`` of them (ids the tokenizer lacks are UNUSED pads)."""
    import gguf

    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    TT = gguf.TokenType
    tokens, types = [], []
    for i in range(n):
        if i not in id_to_token:
            tokens.append(f"[PAD{i}]")
            types.append(TT.UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            types.append(TT.CONTROL if added[i].get("special") else TT.USER_DEFINED)
        else:
            tok = id_to_token[i]
            tokens.append(tok)
            types.append(TT.BYTE if not byte_level and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", tok) else TT.NORMAL)
    return tokens, types


def merge_scores(tokens: list[str], types: list[int], merges: list[tuple[str, str]]) -> list[float]:
    """SPM scores that make llama.cpp join pairs in the order of ``merges`` (see the module docstring)."""
    import gguf

    first: dict[str, int] = {}
    for rank, (left, right) in enumerate(merges):
        first.setdefault(left + right, rank)
    scores = []
    for text, kind in zip(tokens, types):
        if kind == gguf.TokenType.NORMAL and text in first:
            scores.append(-float(first[text]))
        elif kind == gguf.TokenType.NORMAL and len(text) == 1:
            scores.append(0.0)  # a single character is where tokenization starts, never a join
        else:
            scores.append(LOWEST_SCORE)
    return scores


def _add_special_ids(writer, tokenizer) -> None:
    for key, adder in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                       ("pad_token_id", writer.add_pad_token_id), ("unk_token_id", writer.add_unk_token_id)):
        value = getattr(tokenizer, key, None)
        if value is not None:
            adder(int(value))
    vocab = tokenizer.get_vocab()
    if "<|user|>" in vocab and "<|assistant|>" in vocab:  # the ChatGLM3 / GLM-4 role tokens
        writer.add_eot_token_id(vocab["<|user|>"])
        if "<|observation|>" in vocab:
            writer.add_eom_token_id(vocab["<|observation|>"])


def _pre_name(pre_tokenizer, arch: str) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer: plain GPT-2 ByteLevel, or a known split regex."""
    if not pre_tokenizer:
        return "default"
    if pre_tokenizer.get("type") == "ByteLevel" and pre_tokenizer.get("use_regex", True):
        return "gpt-2"
    text = json.dumps(pre_tokenizer)
    for pattern, name in {**_PRE_PATTERNS, **_ARCH_PRE.get(arch, {})}.items():
        if json.dumps(pattern)[1:-1] in text:
            return name
    log.warning("unknown pre-tokenizer; llama.cpp will use its default split rules, which may tokenize "
                "some text differently")
    return "default"
