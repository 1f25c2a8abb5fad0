"""The one record that flows from ``convert`` to ``serve``: a :class:`Conversation` of :class:`Message`.

On disk (canonical JSONL, one record per line) a conversation is::

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "Translate.\\n\\nGood morning",
                   "instruction": "Translate.", "input": "Good morning"},
                  {"role": "assistant", "content": "Bonjour"}],
     "source": "alpaca.json", "index": 0, "category": "translate"}

``content`` is always the full text of the turn, so the messages are a valid OpenAI-style list for
any chat template. A user turn that came from Alpaca's ``instruction`` + ``input`` also keeps the
two parts, so the ``alpaca`` template can render its ``### Input:`` block. Keys other than
``messages`` are metadata (source file, original index, category, ...).

Every stage builds and checks records here: ``convert`` from dataset layouts, ``tokenize`` from
canonical JSONL, ``infer`` from data files whose last reply may be missing (``reply=False``), and
``serve`` from request bodies (``developer`` is OpenAI's newer name for ``system``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from instructglm.errors import UserError, where

ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"developer": "system"}


class RecordError(ValueError):
    """A malformed record; the reader adds the file and line (or the request field)."""


@dataclass(slots=True)
class Message:
    role: str
    content: str
    instruction: str | None = None  # a user turn built from Alpaca's instruction + input keeps both
    input: str | None = None

    @classmethod
    def user(cls, instruction: str, input_text: str = "") -> "Message":
        """A user turn from an instruction and an optional input (joined by a blank line)."""
        if input_text:
            return cls("user", f"{instruction}\n\n{input_text}", instruction, input_text)
        return cls("user", instruction)

    @classmethod
    def from_dict(cls, m: Any, i: int = 0) -> "Message":
        """A message from its JSON form; RecordError names ``messages[i]`` and the field."""
        if isinstance(m, Message):
            return m
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        role = ROLE_ALIASES.get(role, role)
        if role not in ROLES:
            raise RecordError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise RecordError(f"messages[{i}].content must be text, got {type(content).__name__}")
        instruction, input_text = m.get("instruction"), m.get("input")
        if role == "user" and isinstance(instruction, str) and isinstance(input_text, str):
            return cls(role, content, instruction, input_text)
        return cls(role, content)

    def to_dict(self) -> dict:
        out = {"role": self.role, "content": self.content}
        if self.instruction is not None:
            out["instruction"] = self.instruction
            out["input"] = self.input
        return out


@dataclass(slots=True)
class Conversation:
    """A system message (optional), then user/assistant turns in order, and metadata."""

    messages: list[Message]
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_messages(cls, messages: Any, metadata: dict | None = None, reply: bool = True) -> "Conversation":
        """Build and check a conversation; ``reply=False`` allows a last user turn awaiting its answer."""
        if not isinstance(messages, list) or not messages:
            raise RecordError("'messages' must be a non-empty list")
        conv = cls([Message.from_dict(m, i) for i, m in enumerate(messages)], dict(metadata or {}))
        conv.check(reply)
        return conv

    @classmethod
    def from_json(cls, rec: Any, reply: bool = True) -> "Conversation":
        """A canonical record (``{"messages": [...], **metadata}``)."""
        if not isinstance(rec, dict) or "messages" not in rec:
            raise RecordError("not a canonical record (no 'messages'); run 'instructglm convert' first")
        return cls.from_messages(rec["messages"], {k: v for k, v in rec.items() if k != "messages"}, reply)

    def to_json(self) -> dict:
        return {"messages": [m.to_dict() for m in self.messages], **self.metadata}

    def check(self, reply: bool = True) -> "Conversation":
        """Roles in order (system first, then user/assistant alternating), non-empty answers."""
        expect_user = True
        for i, m in enumerate(self.messages):
            if m.role == "system":
                if i != 0:
                    raise RecordError(f"messages[{i}]: a system message may only come first")
                continue
            if (m.role == "user") != expect_user:
                raise RecordError(f"messages[{i}]: roles out of order (expected "
                                  f"{'user' if expect_user else 'assistant'}, got {m.role})")
            if m.role == "assistant" and not m.content.strip():
                raise RecordError(f"messages[{i}]: empty assistant response")
            expect_user = not expect_user
        last = self.messages[-1].role
        if reply and last != "assistant":
            raise RecordError("the last message must be the assistant's response")
        if not reply and last == "system":
            raise RecordError("the conversation has no user message")
        return self

    @property
    def prompt(self) -> list[Message]:
        """The messages to answer: all but a trailing assistant turn."""
        if self.messages and self.messages[-1].role == "assistant":
            return self.messages[:-1]
        return self.messages

    @property
    def reference(self) -> str | None:
        """The last assistant answer, if the conversation ends with one."""
        last = self.messages[-1] if self.messages else None
        return last.content if last is not None and last.role == "assistant" else None


def as_messages(messages: list) -> list[Message]:
    """Messages as :class:`Message` objects (dicts in their JSON form are converted)."""
    return [m if isinstance(m, Message) else Message.from_dict(m, i) for i, m in enumerate(messages)]


def read_canonical(path: str | Path) -> Iterator[tuple[int, Conversation]]:
    """``(line, conversation)`` from a canonical JSONL file, every record checked (FILE:LINE errors)."""
    return _read_checked(path, Conversation.from_json)


def _read_checked(path: str | Path, parse) -> Iterator[tuple[int, Any]]:
    from instructglm.convert.sources import read_records

    for line, rec in read_records(path):
        try:
            yield line, parse(rec)
        except RecordError as e:
            raise UserError(f"{where(path, line)}: {e}") from None


@dataclass(slots=True)
class Preference:
    """A prompt conversation (ending with the user's turn) and how it may be answered: a ``chosen`` and
    a ``rejected`` assistant turn (a pair, for DPO/ORPO/SimPO), or one ``completion`` with a
    desirable (``label=True``) or undesirable label (KTO).

    On disk (canonical JSONL)::

        {"messages": [{"role": "user", "content": "..."}],
         "chosen": {"role": "assistant", "content": "..."}, "rejected": {"role": "assistant", ...}, ...metadata}
        {"messages": [...], "completion": {"role": "assistant", "content": "..."}, "label": true, ...metadata}

    ``messages`` ends with the user's turn, so an SFT reader refuses the record instead of training on
    half of it.
    """

    prompt: list[Message]
    chosen: Message | None = None
    rejected: Message | None = None
    label: bool | None = None  # set for KTO: chosen holds the one completion
    metadata: dict = field(default_factory=dict)

    @property
    def is_pair(self) -> bool:
        return self.label is None

    @property
    def completions(self) -> list[Message]:
        return [self.chosen, self.rejected] if self.is_pair else [self.chosen]

    def check(self) -> "Preference":
        Conversation(self.prompt).check(reply=False)
        if self.prompt[-1].role != "user":
            raise RecordError("the prompt must end with the user's turn")
        for name, m in zip(("chosen", "rejected") if self.is_pair else ("completion",), self.completions):
            if m is None or m.role != "assistant":
                raise RecordError(f"'{name}' must be an assistant turn")
            if not m.content.strip():
                raise RecordError(f"empty '{name}'")
        return self

    @classmethod
    def from_json(cls, rec: Any) -> "Preference":
        """A canonical preference record (see the class docstring), checked."""
        if not is_preference_json(rec):
            raise RecordError("not a canonical preference record ('messages' with 'chosen' and 'rejected', "
                              "or with 'completion' and a true/false 'label'); run 'instructglm convert' first")
        prompt = [Message.from_dict(m, i) for i, m in enumerate(rec["messages"])] if isinstance(
            rec["messages"], list) and rec["messages"] else None
        if prompt is None:
            raise RecordError("'messages' must be a non-empty list")
        meta = {k: v for k, v in rec.items() if k not in PREFERENCE_KEYS}
        if "completion" in rec:
            if not isinstance(rec["label"], bool):
                raise RecordError(f"'label' must be true or false, got {rec['label']!r}")
            return cls(prompt, _turn(rec["completion"], "completion"), None, rec["label"], meta).check()
        return cls(prompt, _turn(rec["chosen"], "chosen"), _turn(rec["rejected"], "rejected"), None, meta).check()

    def to_json(self) -> dict:
        out: dict[str, Any] = {"messages": [m.to_dict() for m in self.prompt]}
        if self.is_pair:
            out.update(chosen=self.chosen.to_dict(), rejected=self.rejected.to_dict())
        else:
            out.update(completion=self.chosen.to_dict(), label=self.label)
        return {**out, **{k: v for k, v in self.metadata.items() if k not in PREFERENCE_KEYS}}


PREFERENCE_KEYS = ("messages", "chosen", "rejected", "completion", "label")


def _turn(value: Any, name: str) -> Message:
    if not isinstance(value, dict):
        raise RecordError(f"'{name}' must be an object with role and content")
    try:
        return Message.from_dict(value)
    except RecordError as e:
        raise RecordError(f"'{name}': {str(e).removeprefix('messages[0].')}") from None


def is_preference_json(rec: Any) -> bool:
    """Whether a canonical record is a preference record (a pair, or a KTO completion with its label)."""
    return isinstance(rec, dict) and "messages" in rec and (
        ("chosen" in rec and "rejected" in rec) or ("completion" in rec and "label" in rec))


def read_preferences(path: str | Path) -> Iterator[tuple[int, Preference]]:
    """``(line, preference)`` from a canonical preference JSONL file, every record checked (FILE:LINE errors)."""
    return _read_checked(path, Preference.from_json)
