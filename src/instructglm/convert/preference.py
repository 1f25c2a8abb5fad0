"""Preference data layouts ``convert`` reads: one reader per layout, each giving a :class:`Preference`.

A preference record is a prompt conversation and either a chosen and a rejected answer (DPO, ORPO,
SimPO) or one answer labelled desirable or not (KTO). The layouts people have, in detection order
(a record counts for the first layout whose detector accepts it):

* ``kto``: OpenAI ``messages`` ending with the answer, plus a boolean ``label`` (or ``prompt`` /
  ``completion`` / ``label``; the canonical KTO record, ``messages`` + ``completion`` + ``label``);
* ``pref_openai``: OpenAI ``messages`` (the prompt) + ``chosen`` / ``rejected`` (text, a message, or a
  list of messages) -- also the canonical pair record;
* ``pref_sharegpt``: ShareGPT ``conversations`` + ``chosen`` / ``rejected`` turn objects (``from``/``value``);
* ``ultrafeedback``: UltraFeedback-binarized ``prompt`` + ``chosen`` / ``rejected`` message lists that
  repeat the prompt (the shared turns are the prompt);
* ``hh_rlhf``: Anthropic HH-RLHF ``chosen`` / ``rejected`` full transcripts (``\\n\\nHuman:`` /
  ``\\n\\nAssistant:``); the shared turns are split off as the prompt;
* ``pos_neg``: Chinese comparison sets with ``prompt`` / ``pos_resp`` / ``neg_resp``;
* ``pref_alpaca``: Alpaca ``instruction`` / ``input`` with ``chosen`` / ``rejected`` text, or
  ``output: [chosen, rejected]``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from instructglm.convert.formats import DatasetFormat, read_canonical_messages
from instructglm.convert.turns import (BELLE_LABELS, SPEAKERS, looks_like_chat, prompt_response, speaker_turns,
                                       split_turns, text_field)
from instructglm.record import Message, Preference, RecordError

HH_LABELS = BELLE_LABELS  # "Human:" / "Assistant:" at the start of a line


def answer(value: Any, name: str) -> Message:
    """An assistant turn from text, a message object (``role``/``content`` or ``from``/``value``), or a
    one-item list of either."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(f"empty '{name}'")
        return Message("assistant", value)
    if isinstance(value, dict):
        role = value.get("role", value.get("from"))
        content = value.get("content", value.get("value"))
        if SPEAKERS.get(role) != "assistant":
            raise RecordError(f"'{name}' must be the assistant's turn, got role {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise RecordError(f"'{name}' has no text")
        return Message("assistant", content)
    raise RecordError(f"'{name}' must be text or an assistant message, got {type(value).__name__}")


def _pair(prompt: list[Message], rec: dict, chosen_key: str = "chosen", rejected_key: str = "rejected") -> Preference:
    for key in (chosen_key, rejected_key):
        if key not in rec:
            raise RecordError(f"missing field '{key}'")
    return Preference(prompt, answer(rec[chosen_key], chosen_key), answer(rec[rejected_key], rejected_key))


def _split_shared(chosen: list[Message], rejected: list[Message]) -> Preference:
    """The shared turns before the last answers as the prompt; the last answers as the pair."""
    if len(chosen) < 2 or len(rejected) < 2:
        raise RecordError("'chosen' and 'rejected' must each hold a prompt and an answer")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1].role != "assistant":
            raise RecordError(f"'{name}' must end with the assistant's answer")
    if [m.to_dict() for m in chosen[:-1]] != [m.to_dict() for m in rejected[:-1]]:
        raise RecordError("'chosen' and 'rejected' differ before their last answer (no shared prompt)")
    return Preference(chosen[:-1], chosen[-1], rejected[-1])


# --------------------------------------------------------------------------- readers, one per layout


def read_kto(rec: dict) -> Preference:
    if _has_pair(rec) and "label" not in rec:  # a canonical file may hold pairs and KTO records
        return read_pref_openai(rec)
    label = rec.get("label")
    if not isinstance(label, bool):
        raise RecordError(f"'label' must be true or false, got {label!r}")
    if "completion" in rec:
        if isinstance(rec.get("messages"), list):
            prompt = read_canonical_messages(rec, reply=False)
        else:
            prompt = [Message("user", text_field(rec, "prompt"))]
        return Preference(prompt, answer(rec["completion"], "completion"), None, label)
    messages = read_canonical_messages(rec, reply=True)
    if messages[-1].role != "assistant":
        raise RecordError("'messages' must end with the assistant's answer that 'label' judges")
    return Preference(messages[:-1], messages[-1], None, label)


def read_pref_openai(rec: dict) -> Preference:
    if not _has_pair(rec) and "label" in rec:
        return read_kto(rec)
    return _pair(read_canonical_messages(rec, reply=False), rec)


def read_pref_sharegpt(rec: dict) -> Preference:
    return _pair(speaker_turns(rec, reply=False), rec)


def _message_list(value: Any, name: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise RecordError(f"'{name}' must be a non-empty list of messages")
    try:
        return read_canonical_messages({"messages": value}, reply=True)
    except RecordError as e:
        raise RecordError(f"'{name}': {e}") from None


def read_ultrafeedback(rec: dict) -> Preference:
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if isinstance(chosen, list) and len(chosen) > 1:
        return _split_shared(_message_list(chosen, "chosen"), _message_list(rejected, "rejected"))
    return _pair([Message("user", text_field(rec, "prompt"))], rec)


def _transcript(rec: dict, key: str) -> list[Message]:
    text = text_field(rec, key)
    turns = split_turns(text, HH_LABELS)
    if turns is None:
        raise RecordError(f"'{key}' is not a 'Human: ... Assistant: ...' transcript")
    return [Message(role, content) for role, content in turns]


def read_hh_rlhf(rec: dict) -> Preference:
    return _split_shared(_transcript(rec, "chosen"), _transcript(rec, "rejected"))


def read_pos_neg(rec: dict) -> Preference:
    prompt = prompt_response({k: v for k, v in rec.items() if k != "response"}, "prompt", "response", False)
    return _pair(prompt, rec, "pos_resp", "neg_resp")


def read_pref_alpaca(rec: dict) -> Preference:
    view = {k: v for k, v in rec.items() if k not in ("output", "chosen", "rejected")}
    prompt = prompt_response(view, "instruction", "output", False, input_key="input")
    if "chosen" in rec or "rejected" in rec:
        return _pair(prompt, rec)
    output = rec.get("output")
    if not (isinstance(output, list) and len(output) == 2):
        raise RecordError("'output' must be [chosen, rejected] (or give 'chosen' and 'rejected')")
    return Preference(prompt, answer(output[0], "output[0]"), answer(output[1], "output[1]"))


# --------------------------------------------------------------------------- detectors and the registry


def _has_pair(r: dict) -> bool:
    return "chosen" in r and "rejected" in r


def _is_hh(r: dict) -> bool:
    return _has_pair(r) and all(looks_like_chat(r[k], HH_LABELS) for k in ("chosen", "rejected"))


def _is_alpaca_pair(r: dict) -> bool:
    out = r.get("output")
    return "instruction" in r and (_has_pair(r) or (isinstance(out, list) and len(out) == 2))


@dataclass(frozen=True)
class PreferenceFormat(DatasetFormat):
    """A preference layout: ``read_preference(record) -> Preference`` (``read``, for SFT, is refused)."""

    read_preference: Callable[[dict], Preference] | None = None


def refuse_sft(rec: dict, reply: bool) -> list[Message]:
    raise RecordError("a preference record (chosen/rejected or a KTO label); train it with --stage dpo|orpo|"
                      "simpo|kto after converting it as preference data")


def _fmt(name: str, read: Callable[[dict], Preference], detect: Callable[[dict], bool],
         fields: tuple[str, ...]) -> PreferenceFormat:
    return PreferenceFormat(name, refuse_sft, detect, fields, read_preference=read)


_PAIR = ("chosen", "rejected")
PREFERENCE_FORMATS: dict[str, PreferenceFormat] = {f.name: f for f in [
    _fmt("kto", read_kto, lambda r: isinstance(r.get("label"), bool) and (
        isinstance(r.get("messages"), list) or ("completion" in r and "prompt" in r)),
        ("messages", "prompt", "completion", "label")),
    _fmt("pref_openai", read_pref_openai, lambda r: isinstance(r.get("messages"), list) and _has_pair(r),
         ("messages", *_PAIR)),
    _fmt("pref_sharegpt", read_pref_sharegpt, lambda r: isinstance(r.get("conversations"), list) and _has_pair(r),
         ("conversations", "system", *_PAIR)),
    _fmt("ultrafeedback", read_ultrafeedback, lambda r: "prompt" in r and _has_pair(r) and not _is_hh(r),
         ("prompt", "messages", *_PAIR)),
    _fmt("hh_rlhf", read_hh_rlhf, _is_hh, _PAIR),
    _fmt("pos_neg", read_pos_neg, lambda r: "prompt" in r and "pos_resp" in r and "neg_resp" in r,
         ("prompt", "pos_resp", "neg_resp", "history", "system")),
    _fmt("pref_alpaca", read_pref_alpaca, _is_alpaca_pair,
         ("instruction", "input", "output", "system", "history", *_PAIR)),
]}
PREFERENCE_ALIASES = {"preference": "pref_openai", "zh_comparison": "pos_neg", "hh": "hh_rlhf"}


def classify_preference(rec: Any) -> str | None:
    """The first preference layout (in priority order) whose detector accepts ``rec``."""
    if not isinstance(rec, dict):
        return None
    return next((f.name for f in PREFERENCE_FORMATS.values() if f.detect(rec)), None)


def detect_preference(samples: list[Any]) -> PreferenceFormat | None:
    """The preference layout most sampled records have, when they outnumber every SFT format's; else None."""
    from instructglm.convert.formats import classify

    votes = Counter(classify_preference(s) for s in samples)
    votes.pop(None, None)
    if not votes:
        return None
    name, count = votes.most_common(1)[0]
    sft = Counter(classify(s) for s in samples if classify_preference(s) is None)
    sft.pop(None, None)
    return PREFERENCE_FORMATS[name] if count >= max(sft.values(), default=0) else None
