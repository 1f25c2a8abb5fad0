"""Fast (``tokenizers``-backed) equivalents of the ChatGLM2 / ChatGLM3 / GLM-4 remote-code tokenizers.

The checkpoints ship ``tokenization_chatglm.py``; we never run it. Instead the vocabulary file is read
as data and an equivalent :class:`tokenizers.Tokenizer` is built:

* ChatGLM2 / ChatGLM3: ``tokenizer.model`` is a sentencepiece BPE model. Its pieces become a byte-fallback
  BPE with merges ordered the way sentencepiece applies them (by the score of the merged piece), the
  normaliser mirrors the model's ``normalizer_spec`` (dummy ``▁`` prefix, spaces as ``▁``). The special
  tokens follow the sentencepiece vocabulary in the fixed order the remote code assigns
  (``[MASK] [gMASK] [sMASK] sop eop`` and, for ChatGLM3, ``<|system|> <|user|> <|assistant|> <|observation|>``).
* GLM-4: ``tokenizer.model`` is a tiktoken rank file (``base64(token) rank`` per line). It becomes a
  byte-level BPE (GPT-2 byte-to-unicode alphabet) behind GLM-4's split regex; tiktoken's
  "whole piece in the vocabulary wins" rule is ``ignore_merges=True``. The special tokens come from
  ``tokenizer_config.json`` (``added_tokens_decoder``), as the remote code gets them.

Both prepend ``[gMASK] <sop>`` when ``add_special_tokens=True``, like the remote ``build_inputs_with_special_tokens``.

Deliberate differences from the remote code (documented, tested where it matters):

* ChatGLM2/3 call the start/end-of-piece tokens ``sop``/``eop``; here they are named ``<sop>``/``<eop>``
  (same ids) so that they can be matched in rendered chat templates without also matching the English
  letters "sop" inside ordinary text.
* Special tokens written in the text (``[gMASK]``, ``<|user|>``...) are recognised as their special ids,
  which chat templates need. ChatGLM2/3 remote code encodes such text literally; pass
  ``split_special_tokens=True`` to the tokenizer call (or set it on the tokenizer) to get exactly that.
  Likewise sentencepiece's control pieces ``<unk> <s> </s>`` written in the text map to their ids.
* Tokenizer calls return ``input_ids``/``attention_mask`` only: the native model needs no
  ``position_ids`` (rotary is relative, so left padding gives the same logits either way).
* The chat templates cover plain role/content messages (GLM-4: plus ``metadata``); GLM-4's tool and
  image prompts are not rendered.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from instructglm.errors import UserError

V2_SPECIAL = ["[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"]
V3_ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]

# GLM-4's pre-tokenisation pattern (cl100k-style) — a public regular expression, in Oniguruma syntax.
GLM4_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Chat templates that render exactly the ids the remote code builds (checked against recorded ids).
# transformers compiles templates with trim_blocks, so newlines are written as {{ '\n' }} expressions.
# ChatGLM3 encodes "\n" and the message separately, each with sentencepiece's dummy prefix: "▁\n" then
# "▁content". The space after "\n" reproduces the second prefix when the rendered string is encoded.
CHATGLM3_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>{{ '\\n' }}"
    "{% if message['content'] %} {{ message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# ChatGLM2's build_prompt: "[Round N]\n\n问：{query}\n\n答：{response}" rounds joined by "\n\n".
CHATGLM2_TEMPLATE = (
    "[gMASK]<sop>{% set ns = namespace(round=0) %}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set ns.round = ns.round + 1 %}"
    "{% if ns.round > 1 %}{{ '\\n\\n' }}{% endif %}"
    "{{ '[Round ' ~ ns.round ~ ']\\n\\n问：' ~ message['content'] ~ '\\n\\n答：' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}"
    "{% else %}{{ raise_exception('ChatGLM2 has no ' + message['role'] + ' role') }}{% endif %}{% endfor %}")
# GLM-4: "<|role|>{metadata}\n{content}" per non-empty message.
GLM4_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}{% if message['content'] %}<|{{ message['role'] }}|>"
    "{% if message['metadata'] is defined %}{{ message['metadata'] }}{% endif %}{{ '\\n' }}"
    "{{ message['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tokenizer_file_kind(path: Path) -> str | None:
    """``"sentencepiece"``, ``"tiktoken"`` or None, judged from the bytes of ``tokenizer.model``."""
    path = Path(path)
    if not path.is_file():
        return None
    head = path.read_bytes()[:4096]
    try:
        lines = head.decode("ascii").splitlines()[:8]
    except UnicodeDecodeError:
        return "sentencepiece"  # a serialized protobuf (binary)
    ok = 0
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            try:
                base64.b64decode(parts[0], validate=True)
                ok += 1
            except ValueError:
                return "sentencepiece"
    return "tiktoken" if ok and ok == len([x for x in lines if x.strip()]) else "sentencepiece"


# ----------------------------------------------------------------------------------------------
# sentencepiece (ChatGLM2 / ChatGLM3)
# ----------------------------------------------------------------------------------------------


def _sp_model_proto(model_file: Path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    return proto


def sentencepiece_to_tokenizer(model_file: Path, special_tokens: list[str]):
    """A ``tokenizers.Tokenizer`` equivalent to a sentencepiece BPE model, with ``special_tokens``
    appended right after the sentencepiece vocabulary (ids ``n, n+1, ...``)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers

    proto = _sp_model_proto(model_file)
    if proto.trainer_spec.model_type != 2:  # 2 == BPE; ChatGLM2/3 are BPE
        raise UserError(f"{model_file}: only BPE sentencepiece models are supported "
                        f"(model_type {proto.trainer_spec.model_type})")
    # piece types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    if len(vocab) != len(proto.pieces):
        raise UserError(f"{model_file}: duplicate pieces in the sentencepiece vocabulary")
    # sentencepiece BPE merges the adjacent pair whose merged piece scores highest; rank the merges
    # the same way (score descending, then vocabulary order) so the HF BPE takes the same path.
    order = sorted(range(len(proto.pieces)), key=lambda i: (-proto.pieces[i].score, i))
    merges = []
    for i in order:
        piece = proto.pieces[i]
        if piece.type != 1 or len(piece.piece) < 2:
            continue
        text = piece.piece
        splits = [(text[:k], text[k:]) for k in range(1, len(text))
                  if text[:k] in vocab and text[k:] in vocab]
        merges.extend(sorted(splits, key=lambda s: (vocab[s[0]], vocab[s[1]])))
    unk = next((p.piece for p in proto.pieces if p.type == 2), "<unk>")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=proto.trainer_spec.byte_fallback, dropout=None))

    spec = proto.normalizer_spec
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        # sentencepiece trims and collapses runs of the space character only (not tabs or newlines)
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if spec.add_dummy_prefix else []))

    # sentencepiece's own control pieces (<unk> <s> </s>) are special; user-defined pieces are matched
    # in the text before the model runs, as sentencepiece does.
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in proto.pieces if p.type in (2, 3)])
    user = [AddedToken(p.piece, special=False, normalized=False) for p in proto.pieces if p.type == 4]
    if user:
        tok.add_tokens(user)
    n = len(proto.pieces)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    for k, t in enumerate(special_tokens):
        if tok.token_to_id(t) != n + k:  # a piece of that name already exists: ids would shift
            raise UserError(f"{model_file}: special token {t!r} clashes with the sentencepiece vocabulary")
    return tok


# ----------------------------------------------------------------------------------------------
# tiktoken (GLM-4)
# ----------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what ByteLevel pre-tokenisation emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError:
            raise UserError(f"{path}:{lineno}: expected 'base64 rank'") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UserError(f"{path}: ranks are not 0..{len(ranks) - 1}")
    return ranks


def tiktoken_to_tokenizer(ranks_file: Path, special_tokens: dict[int, str], pattern: str = GLM4_SPLIT):
    """A ``tokenizers.Tokenizer`` equivalent to ``tiktoken.Encoding(pat_str=pattern, mergeable_ranks=...)``
    plus ``special_tokens`` (id -> text)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    ranks = read_tiktoken_ranks(ranks_file)
    b2u = _bytes_to_unicode()

    def as_text(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {as_text(t): r for t, r in ranks.items()}
    # tiktoken joins the adjacent pair whose concatenation has the lowest rank: a merge's priority is
    # the rank of what it produces. Every split of a token into two known tokens is listed.
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        splits = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in ranks and token[k:] in ranks]
        for a, b in sorted(splits, key=lambda s: (ranks[s[0]], ranks[s[1]])):
            merges.append((as_text(a), as_text(b)))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, byte_fallback=False,
                               fuse_unk=False, dropout=None))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    for tid in sorted(special_tokens):
        if tid != tok.get_vocab_size(with_added_tokens=True):
            raise UserError(f"{ranks_file}: special token ids must follow the ranks without gaps "
                            f"({special_tokens[tid]!r} has id {tid})")
        tok.add_special_tokens([AddedToken(special_tokens[tid], special=True, normalized=False)])
    return tok


# ----------------------------------------------------------------------------------------------
# the converted tokenizer
# ----------------------------------------------------------------------------------------------


def _glm4_special_tokens(src: Path, n_ranks: int) -> dict[int, str]:
    cfg_file = src / "tokenizer_config.json"
    found = {}
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        for tid, entry in (cfg.get("added_tokens_decoder") or {}).items():
            found[int(tid)] = entry["content"] if isinstance(entry, dict) else str(entry)
    if not found:  # no config: GLM-4's fixed layout right after the ranks
        names = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"] + V3_ROLES
        found = {n_ranks + i: t for i, t in enumerate(names)}
    return found


def build_fast_tokenizer(src_dir: Path, generation: int):
    """The converted ``PreTrainedTokenizerFast`` for a ChatGLM ``generation`` (2, 3 or 4) checkpoint dir."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    src = Path(src_dir)
    model_file = src / "tokenizer.model"
    if not model_file.is_file():
        raise UserError(f"{src}: no tokenizer.model")
    if generation == 4:
        n_ranks = len(read_tiktoken_ranks(model_file))
        tok = tiktoken_to_tokenizer(model_file, _glm4_special_tokens(src, n_ranks))
        eos, pad, unk, template = "<|endoftext|>", "<|endoftext|>", None, GLM4_TEMPLATE
        extra = [t for t in ["[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"] + V3_ROLES
                 if tok.token_to_id(t) is not None]
    else:
        specials = V2_SPECIAL + (V3_ROLES if generation == 3 else [])
        tok = sentencepiece_to_tokenizer(model_file, specials)
        eos, pad, unk = "</s>", "<unk>", "<unk>"  # remote code: eos = sentencepiece eos, pad = unk
        template = CHATGLM3_TEMPLATE if generation == 3 else CHATGLM2_TEMPLATE
        extra = specials
    gmask, sop, eos_id = tok.token_to_id("[gMASK]"), tok.token_to_id("<sop>"), tok.token_to_id(eos)
    # build_inputs_with_special_tokens of the remote code: [gMASK] <sop> A (B eos)
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A", pair=f"[gMASK] <sop> $A $B:1 {eos}:1",
        special_tokens=[("[gMASK]", gmask), ("<sop>", sop), (eos, eos_id)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token=pad, unk_token=unk, padding_side="left",
        additional_special_tokens=extra, clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"])
    fast.chat_template = template
    return fast
