"""The dataset formats ``convert`` reads: one reader per layout, and how a file's format is detected.

Each format is a :class:`DatasetFormat` in ``DATASET_FORMATS``: a reader ``(record, reply) ->
messages`` and a detector. ``--format auto`` looks at the first records of every file: each record
is classified as the *first* format in ``DATASET_FORMATS`` order whose detector accepts it (so the
order is the priority and a record never counts for two formats), and the format with most votes
wins. When replies are optional (``reply=False``), a record the detectors do not accept as it is
gets the format it would have with its reply field filled in (``{"prompt": "q"}`` is ChatGLM's).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from instructglm.convert.turns import (BELLE_LABELS, GUANACO_LABELS, TOOL_CALL_TAG, TOOL_RESULT_TAG, Dialogue,
                                       looks_like_chat, prompt_response, speaker_turns, system_message, tagged,
                                       text_field, tool_text, without_open_reply)
from instructglm.errors import UserError
from instructglm.record import Message, RecordError

# --------------------------------------------------------------------------- readers, one per format


def read_canonical_messages(rec: dict, reply: bool) -> list[Message]:
    """Canonical / OpenAI ``messages``. ``tool``/``function`` results and assistant ``tool_calls``
    (or ``function_call``) are folded into the user/assistant side; other messages pass unchanged."""
    messages = rec.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError("'messages' must be a non-empty list")
    dialogue = Dialogue()
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}] must be an object")
        role = m.get("role")
        calls = m.get("tool_calls") or m.get("function_call")
        if role in ("tool", "function"):
            content = tool_text(m.get("content"), f"messages[{i}].content")
            dialogue.add(Message("user", tagged(TOOL_RESULT_TAG, content)), folded=True)
        elif role == "assistant" and calls:
            content = m.get("content")
            if content is not None and not isinstance(content, str):
                raise RecordError(f"messages[{i}].content must be text, got {type(content).__name__}")
            if content and content.strip():
                dialogue.add(Message("assistant", content))
            call_text = tool_text(calls, f"messages[{i}].tool_calls")
            dialogue.add(Message("assistant", tagged(TOOL_CALL_TAG, call_text)), folded=True)
        else:
            dialogue.add(Message.from_dict(m, i))
    return without_open_reply(dialogue.messages, reply)


def read_alpaca(rec: dict, reply: bool) -> list[Message]:
    """Alpaca: ``instruction``, optional ``input``, ``output``, optional ``system`` and
    ``history`` (a list of ``[user, assistant]`` pairs before this turn)."""
    return prompt_response(rec, "instruction", "output", reply, input_key="input")


def read_belle(rec: dict, reply: bool) -> list[Message]:
    """BELLE, all its shapes: ``conversations`` (``from``: human/assistant/gpt), the older
    ``input``/``target``, and ``instruction``/``input``/``output`` whose text may be a
    ``Human:``/``Assistant:`` transcript (its trailing empty ``Assistant:`` is the slot for ``output``)."""
    if "conversations" in rec:
        return speaker_turns(rec, reply)
    if "instruction" not in rec and ("target" in rec or (not reply and "input" in rec and "output" not in rec)):
        return prompt_response(rec, "input", "target", reply, labels=BELLE_LABELS)
    return prompt_response(rec, "instruction", "output", reply, input_key="input", labels=BELLE_LABELS)


def read_guanaco(rec: dict, reply: bool) -> list[Message]:
    """Guanaco: Alpaca fields whose ``instruction``/``input`` may be a ``User:``/``Assistant:``/``System:``
    transcript."""
    return prompt_response(rec, "instruction", "output", reply, input_key="input", labels=GUANACO_LABELS)


def read_sharegpt(rec: dict, reply: bool) -> list[Message]:
    """ShareGPT: ``conversations`` of ``{"from", "value"}``, optional top-level ``system``."""
    return speaker_turns(rec, reply)


def read_firefly(rec: dict, reply: bool) -> list[Message]:
    """firefly-train-1.1M ``kind``/``input``/``target``, or Firefly multi-turn
    ``conversation: [{"human", "assistant"}, ...]``."""
    if "conversation" not in rec:
        return prompt_response(rec, "input", "target", reply)
    turns = rec["conversation"]
    if not isinstance(turns, list) or not turns:
        raise RecordError("field 'conversation' must be a non-empty list of {human, assistant} turns")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"conversation[{i}] must be an object with 'human' and 'assistant'")
        try:
            answer_required = reply or i < len(turns) - 1  # only the last answer may still be to come
            messages += [Message("user", text_field(turn, "human")),
                         Message("assistant", text_field(turn, "assistant", answer_required))]
        except RecordError as e:
            raise RecordError(f"conversation[{i}]: {e}") from None
    return without_open_reply(messages, reply)


def read_chatglm(rec: dict, reply: bool) -> list[Message]:
    """ChatGLM fine-tuning JSON: ``prompt``, ``response``, ``history`` as ``[[q, a], ...]``."""
    return prompt_response(rec, "prompt", "response", reply)


def read_adgen(rec: dict, reply: bool) -> list[Message]:
    """ADGEN-style ``content`` (prompt) and ``summary`` (response)."""
    return prompt_response(rec, "content", "summary", reply)


def read_context_target(rec: dict, reply: bool) -> list[Message]:
    """ChatGLM-Tuning's ``{"context", "target"}``: ``context`` is an already formatted prompt and is
    kept verbatim as the user turn."""
    return prompt_response(rec, "context", "target", reply)


_SECTION_HEADER = re.compile(r"^### (Instruction|Input|Response):[ \t]*\n?", re.M)


def _parse_sections(text: str, reply: bool) -> tuple[str, str, str, str]:
    """``(preamble, instruction, input, response)`` from ``### Instruction:/### Input:/### Response:`` text.

    Everything after ``### Response:`` is the response (it may hold ``###`` itself); a last line
    that is exactly ``END`` is an end marker and is dropped. With ``reply=False`` the
    ``### Response:`` block may be missing.
    """
    parts: dict[str, str] = {}
    preamble, current, pos = "", None, 0
    for m in _SECTION_HEADER.finditer(text):
        if current == "Response":
            break
        name = m.group(1)
        if current is None:
            if name != "Instruction":
                raise RecordError(f"'### {name}:' comes before '### Instruction:' in 'text'")
            preamble = text[:m.start()]
        else:
            if name in parts or name == current or (name == "Instruction"):
                raise RecordError(f"'### {name}:' appears twice in 'text'")
            parts[current] = text[pos:m.start()]
        current, pos = name, m.end()
    if current is None:
        raise RecordError("no '### Instruction:' block in 'text'")
    parts[current] = text[pos:]
    if "Response" not in parts and reply:
        raise RecordError("no '### Response:' block in 'text'")
    response = parts.get("Response", "").rstrip()
    if response == "END" or response.endswith("\nEND"):
        response = response[:-3]
    return preamble.strip(), parts["Instruction"].strip(), parts.get("Input", "").strip(), response.strip()


def read_instruction_text(rec: dict, reply: bool) -> list[Message]:
    """``{"text": "### Instruction:\\n...\\n\\n### Input:\\n...\\n\\n### Response:\\n...\\nEND\\n"}``
    (``### Input:`` optional); text before ``### Instruction:`` becomes the system prompt."""
    preamble, instruction, input_text, response = _parse_sections(text_field(rec, "text"), reply)
    if not instruction and not input_text:
        raise RecordError("empty '### Instruction:' block in 'text'")
    if reply and not response:
        raise RecordError("empty '### Response:' block in 'text'")
    user = Message.user(instruction, input_text) if instruction else Message.user(input_text)
    answer = [Message("assistant", response)] if response else []
    return system_message([preamble] if preamble else []) + [user] + answer


# --------------------------------------------------------------------------- detectors


def _chat_in(rec: dict, labels: dict[str, str]) -> bool:
    return looks_like_chat(rec.get("instruction"), labels) or looks_like_chat(rec.get("input"), labels)


def _speaker_used(rec: dict, speaker: str) -> bool:
    turns = rec.get("conversations")
    return isinstance(turns, list) and any(isinstance(t, dict) and t.get("from") == speaker for t in turns)


def _is_belle(rec: dict) -> bool:
    """BELLE: conversations spelled with ``from: assistant``; ``input``/``target`` alone; or Alpaca fields
    with BELLE's ``class`` or a ``Human:``/``Assistant:`` transcript."""
    if _speaker_used(rec, "assistant"):
        return True
    if "input" in rec and "target" in rec and not any(k in rec for k in ("instruction", "kind", "context")):
        return True
    return "instruction" in rec and "output" in rec and ("class" in rec or _chat_in(rec, BELLE_LABELS))


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class DatasetFormat:
    """One dataset layout: how to read a record of it and how to recognise one."""

    name: str
    read: Callable[[dict, bool], list[Message]]  # (record, reply) -> messages
    detect: Callable[[dict], bool]
    fields: tuple[str, ...]  # the fields the reader consumes; all other scalar keys are kept as metadata
    reply_fields: tuple[str, ...] = ()  # where a prompt/response layout keeps its reply

    def detect_without_reply(self, rec: dict) -> bool:
        """Whether ``rec``, which lacks its reply field, would be of this format with that field
        (the detectors look for the reply field to tell the prompt/response layouts apart)."""
        return any(f not in rec and self.detect({**rec, f: ""}) for f in self.reply_fields)


_QA_EXTRA = ("system", "history")

# Order is detection priority: a record counts for the first format whose detector accepts it.
DATASET_FORMATS: dict[str, DatasetFormat] = {f.name: f for f in [
    DatasetFormat("canonical", read_canonical_messages, lambda r: isinstance(r.get("messages"), list),
                  ("messages",)),
    DatasetFormat("firefly", read_firefly,
                  lambda r: isinstance(r.get("conversation"), list) or all(k in r for k in ("kind", "input", "target")),
                  ("input", "target", "conversation", *_QA_EXTRA), reply_fields=("target",)),
    DatasetFormat("belle", read_belle, _is_belle,
                  ("instruction", "input", "output", "target", "conversations", *_QA_EXTRA),
                  reply_fields=("output", "target")),
    DatasetFormat("sharegpt", read_sharegpt, lambda r: isinstance(r.get("conversations"), list),
                  ("conversations", "system")),
    DatasetFormat("guanaco", read_guanaco,
                  lambda r: "instruction" in r and "output" in r and _chat_in(r, GUANACO_LABELS),
                  ("instruction", "input", "output", *_QA_EXTRA), reply_fields=("output",)),
    DatasetFormat("chatglm", read_chatglm, lambda r: "prompt" in r and "response" in r,
                  ("prompt", "response", *_QA_EXTRA), reply_fields=("response",)),
    DatasetFormat("adgen", read_adgen, lambda r: "content" in r and "summary" in r,
                  ("content", "summary", *_QA_EXTRA), reply_fields=("summary",)),
    DatasetFormat("seed_context", read_context_target, lambda r: "context" in r and "target" in r,
                  ("context", "target", *_QA_EXTRA), reply_fields=("target",)),
    DatasetFormat("seed_text", read_instruction_text,
                  lambda r: isinstance(r.get("text"), str) and "### Instruction:" in r["text"], ("text",)),
    DatasetFormat("alpaca", read_alpaca, lambda r: "instruction" in r and "output" in r,
                  ("instruction", "input", "output", *_QA_EXTRA), reply_fields=("output",)),
]}
FORMAT_ALIASES = {"openai": "canonical", "messages": "canonical"}


def resolve_format(name: str) -> DatasetFormat | None:
    """The format named ``name`` (or an alias); ``None`` for ``auto``; UserError if unknown."""
    if name == "auto":
        return None
    from instructglm.convert.pref_files import preference_format  # preference layouts build on this module
    from instructglm.convert.preference import PREFERENCE_FORMATS

    fmt = DATASET_FORMATS.get(FORMAT_ALIASES.get(name, name)) or preference_format(name)
    if fmt is None:
        raise UserError(f"--format {name}: unknown format; known: auto, "
                        f"{', '.join([*DATASET_FORMATS, *FORMAT_ALIASES])}; preference data: "
                        f"{', '.join(PREFERENCE_FORMATS)}")
    return fmt


def classify(rec: Any, reply: bool = True) -> str | None:
    """The name of the first format (in priority order) whose detector accepts ``rec``.

    With ``reply=False`` a record every detector refuses as it is gets a second look, as if its
    reply field were there; records that have their reply are classified exactly as by ``convert``.
    """
    if not isinstance(rec, dict):
        return None
    for fmt in DATASET_FORMATS.values():
        if fmt.detect(rec):
            return fmt.name
    if not reply:
        for fmt in DATASET_FORMATS.values():
            if fmt.detect_without_reply(rec):
                return fmt.name
    return None


def detect_format(samples: list[Any], reply: bool = True) -> DatasetFormat | None:
    """The format most of the sampled records belong to (ties go to the earlier format), ``None``
    when no record is of a known format. A malformed record among them is then reported by the
    converter with its line."""
    votes = Counter(classify(s, reply) for s in samples)
    votes.pop(None, None)
    if not votes:
        return None
    return DATASET_FORMATS[max(DATASET_FORMATS, key=lambda name: votes.get(name, 0))]
