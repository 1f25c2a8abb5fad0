"""Template segments -> ``(input_ids, labels)``, and what happens to a row longer than the limit.

Labels are ``IGNORE_INDEX`` on prompt tokens and equal the ids on assistant responses and the
closing (EOS or end-of-turn) of each of them.
"""

from __future__ import annotations

import re

from instructglm.constants import IGNORE_INDEX
from instructglm.errors import UserError
from instructglm.templates import Segment, Template


class SegmentEncoder:
    """Encodes template segments into ``(input_ids, labels)`` with one batched tokenizer call."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise UserError("the tokenizer has no EOS token; cannot mark where a response ends")
        probe = tokenizer("a").input_ids
        bos = tokenizer.bos_token_id
        self.prefix = [bos] if bos is not None and probe and probe[0] == bos else []

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens. Fast tokenizers are called directly (the Rust
        ``encode_batch``): transformers' wrapper would build offsets, masks and dicts nobody reads here."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # encode_batch_fast (tokenizers >= 0.20) skips the offsets: same ids
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            return [e.ids for e in encode(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def encode(self, conversations: list[list[Segment]]) -> list[tuple[list[int], list[int]]]:
        return [(ids, labels) for ids, labels, _, _ in self.encode_rows(conversations)]

    def encode_rows(self, conversations: list[list[Segment]]) -> list[tuple[list[int], list[int], int, int]]:
        """``(ids, labels, response_start, closing_length)`` per conversation: where the last
        response starts and how many tokens at its end close it (EOS or end-of-turn)."""
        texts = [seg.text for segs in conversations for seg in segs if seg.text]
        encoded = iter(self.encode_texts(texts)) if texts else iter(())
        out = []
        for segs in conversations:
            ids, labels = list(self.prefix), [IGNORE_INDEX] * len(self.prefix)
            start, close, prev_train = len(ids), 0, False
            for seg in segs:
                piece = next(encoded) if seg.text else []
                if seg.train:
                    if seg.eos:
                        piece = piece + [self.eos]
                    if not prev_train:
                        start = len(ids)
                        close = 1 if seg.eos else 0
                    else:
                        close = len(piece)  # a closing segment (end-of-turn text)
                    labels += piece
                else:
                    labels += [IGNORE_INDEX] * len(piece)
                ids += piece
                prev_train = seg.train
            out.append((ids, labels, start, close))
        return out


def apply_length_policy(ids: list[int], labels: list[int], max_len: int, policy: str,
                        response_start: int | None = None, closing: int = 1, keep_tail: int = 0):
    """Return ``(ids, labels, action)``; action is ``kept``, ``skipped``, ``overlong`` (policy
    ``fail``), ``truncated_prompt`` or ``truncated_response``.

    ``response_start`` is where the last response starts (default: the last run of trained labels),
    ``closing`` how many tokens at the end close it (kept on truncation), ``keep_tail`` how many
    tokens at the end of the prompt open the response (kept when the prompt is cut in the middle).
    """
    n = len(ids)
    if n <= max_len:
        return ids, labels, "kept"
    if policy == "skip":
        return None, None, "skipped"
    if policy == "fail":
        return None, None, "overlong"
    r = response_start
    if r is None:
        r = n
        while r > 0 and labels[r - 1] == IGNORE_INDEX:
            r -= 1
        while r > 0 and labels[r - 1] != IGNORE_INDEX:
            r -= 1
    closing = max(0, min(closing, n - r))
    prompt_len, resp_len = r, n - r
    if prompt_len == 0 or resp_len == 0:
        return None, None, "skipped"
    keep_tail = max(0, min(keep_tail, prompt_len - 1))

    def cut_prompt(budget: int) -> tuple[list[int], list[int]]:
        if budget >= prompt_len:
            return ids[:r], labels[:r]
        tail = min(keep_tail, budget - 1)
        head = budget - tail
        # the prompt lost its middle: earlier turns left in it are context, not targets
        return ids[:head] + ids[r - tail:r], [IGNORE_INDEX] * budget

    if resp_len <= max_len - min(prompt_len, keep_tail + 1):
        p_ids, p_labels = cut_prompt(max_len - resp_len)
        new_ids, new_labels, action = p_ids + ids[r:], p_labels + labels[r:], "truncated_prompt"
    else:
        budget = min(prompt_len, max_len // 2)
        room = max_len - budget - closing
        if room < 1:
            budget, room = max_len - closing - 1, 1
        p_ids, p_labels = cut_prompt(budget)
        body = slice(r, r + room)
        new_ids = p_ids + ids[body] + ids[n - closing:]
        new_labels = p_labels + labels[body] + labels[n - closing:]
        action = "truncated_response"
    if all(x == IGNORE_INDEX for x in new_labels):
        return None, None, "skipped"
    return new_ids, new_labels, action


def opening_length(tokenizer, template: Template, prompt_ids: list[int], cache: dict) -> int:
    """How many tokens at the end of ``prompt_ids`` spell the template's response opening
    (``cache`` keeps the first guess, the opening's own length, across rows)."""
    opening = template.opening
    if not opening or not prompt_ids:
        return 0
    if "guess" not in cache:
        cache["guess"] = max(1, len(tokenizer(opening, add_special_tokens=False).input_ids))
    k = min(cache["guess"], len(prompt_ids))
    while k < len(prompt_ids) and opening not in tokenizer.decode(prompt_ids[-k:]):
        k += 1
        if k > cache["guess"] + 8:
            return cache["guess"]
    return k


# C0 controls but newline and tab, DEL, C1 controls, and the bidirectional overrides that reorder
# what a terminal shows: text from data must not move the cursor, set colours or retitle a window.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def shown(text: str) -> str:
    """``text`` safe to print on a terminal: control characters and escape sequences from the data
    appear escaped (``\\x1b``, ``\\r``, ``\\u202e``), newlines and tabs as they are."""
    def escape(m: re.Match) -> str:
        c = m.group()
        return {"\r": "\\r"}.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _UNSAFE.sub(escape, text)


def format_example(tokenizer, ids: list[int], labels: list[int], color: bool = False) -> str:
    """The decoded row with its trained spans marked: ``[[...]]``, or green when ``color``."""
    parts, run, trained = [], [], None
    for tok, lab in zip(ids, labels):
        t = lab != IGNORE_INDEX
        if trained is not None and t != trained:
            parts.append((trained, run))
            run = []
        trained = t
        run.append(tok)
    if run:
        parts.append((trained, run))
    out = []
    for t, run in parts:
        text = shown(tokenizer.decode(run, skip_special_tokens=False))
        if t:
            out.append(f"\x1b[1;32m{text}\x1b[0m" if color else f"[[{text}]]")
        else:
            out.append(text)
    return "".join(out)
