"""Building blocks of the format readers: record fields, ``Human:``/``Assistant:`` transcripts, turn lists.

Tool turns (ShareGPT ``function_call``/``observation``/``tool``, OpenAI ``tool``/``function``
messages and assistant ``tool_calls``) are folded into the adjacent turn of the same side, marked
with ``[function_call]`` (assistant side) or ``[observation]`` (user side) on a line of their own,
because the canonical record and the chat templates only know system/user/assistant.

Every builder takes ``reply``: with ``reply=False`` the record's answer may be missing or empty
(a prompt still to be answered), and the messages then end with the user's turn.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from instructglm.record import Message, RecordError

TOOL_CALL_TAG = "[function_call]"
TOOL_RESULT_TAG = "[observation]"


# --------------------------------------------------------------------------- record fields


def text_field(rec: dict, key: str, required: bool = True) -> str:
    """``rec[key]`` as text; a missing key is ``""`` unless ``required``; any other type is an error."""
    value = rec.get(key)
    if value is None:
        if required:
            raise RecordError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RecordError(f"field '{key}' must be text, got {type(value).__name__}")
    return value


def system_texts(rec: dict) -> list[str]:
    """The optional top-level ``system`` prompt, as a list of zero or one texts."""
    system = text_field(rec, "system", False)
    return [system] if system else []


def system_message(texts: list[str]) -> list[Message]:
    return [Message("system", "\n\n".join(texts))] if texts else []


def history_messages(rec: dict) -> list[Message]:
    """Messages for ``history``: a list of ``[user, assistant]`` pairs before the current turn."""
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise RecordError("field 'history' must be a list of [user, assistant] pairs")
    messages: list[Message] = []
    for i, turn in enumerate(history):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise RecordError(f"history[{i}] must be a [user, assistant] pair of texts")
        messages += [Message("user", turn[0]), Message("assistant", turn[1])]
    return messages


def without_open_reply(messages: list[Message], reply: bool) -> list[Message]:
    """With ``reply=False``, a trailing empty assistant turn is the answer still to come: drop it.

    With ``reply=True`` the messages are returned as they are and the record check reports it.
    """
    if not reply and messages and messages[-1].role == "assistant" and not messages[-1].content.strip():
        return messages[:-1]
    return messages


# --------------------------------------------------------------------------- "Human: ...\nAssistant: ..." text

BELLE_LABELS = {"Human": "user", "Assistant": "assistant"}
GUANACO_LABELS = {"User": "user", "Assistant": "assistant", "System": "system"}


@lru_cache(maxsize=None)
def _label_pattern(labels: tuple[str, ...]) -> re.Pattern:
    """A label at the start of a line, followed by an ASCII or full-width colon."""
    return re.compile(rf"^[ \t]*({'|'.join(map(re.escape, labels))})[ \t]*[:：]", re.M)


def split_turns(text: str, labels: dict[str, str]) -> list[tuple[str, str]] | None:
    """Split ``"Human: q\\nAssistant: a"``-style text into ``(role, content)`` turns.

    ``labels`` maps a label to its role. Returns ``None`` when the text does not start with a
    label (it is then plain text, not a transcript).
    """
    matches = list(_label_pattern(tuple(labels)).finditer(text))
    if not matches or text[:matches[0].start()].strip():
        return None
    ends = [m.start() for m in matches[1:]] + [len(text)]
    return [(labels[m.group(1)], text[m.end():end].strip()) for m, end in zip(matches, ends)]


def looks_like_chat(text: Any, labels: dict[str, str]) -> bool:
    """True for text that is a transcript: starts with a non-assistant label and has an assistant turn."""
    turns = split_turns(text, labels) if isinstance(text, str) else None
    return bool(turns) and turns[0][0] != "assistant" and any(role == "assistant" for role, _ in turns)


def _drop_open_slot(turns: list[tuple[str, str]]) -> None:
    """Remove a trailing empty ``Assistant:`` turn: it is the slot the record's response fills."""
    if turns and turns[-1] == ("assistant", ""):
        turns.pop()


def _transcript_turns(instruction: str, input_text: str,
                      labels: dict[str, str]) -> tuple[list[str], list[Message]] | None:
    """``(system texts, messages)`` from transcript text in ``instruction`` and/or ``input``.

    ``None`` when neither is a transcript. A plain instruction in front of a transcript in
    ``input`` frames the whole dialogue, so it becomes the system prompt; plain input after a
    transcript in ``instruction`` belongs to its last user turn.
    """
    first = split_turns(instruction, labels)
    second = split_turns(input_text, labels)
    if first is None and second is None:
        return None
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    if first is None:
        if instruction.strip():
            system.append(instruction.strip())
    else:
        turns += first
    if second is not None:
        turns += second
    elif input_text.strip():
        _drop_open_slot(turns)
        if turns and turns[-1][0] == "user":
            turns[-1] = ("user", f"{turns[-1][1]}\n\n{input_text.strip()}")
        else:
            turns.append(("user", input_text.strip()))
    _drop_open_slot(turns)
    while turns and turns[0][0] == "system":
        system.append(turns.pop(0)[1])
    if any(role == "system" for role, _ in turns):
        raise RecordError("a 'System:' turn may only come before the first user turn")
    return system, [Message(role, content) for role, content in turns]


def prompt_response(rec: dict, prompt_key: str, response_key: str, reply: bool, *, input_key: str | None = None,
                    labels: dict[str, str] | None = None) -> list[Message]:
    """Messages for a prompt/response record, with optional ``input``, ``system`` and ``history``.

    With ``labels``, a prompt or input that is a transcript (``Human: ...``) is split into turns.
    The response is named in its own error ("empty 'output'"): the user knows the field, not the
    message index the record check would name.
    """
    prompt = text_field(rec, prompt_key)
    input_text = text_field(rec, input_key, False) if input_key else ""
    response = text_field(rec, response_key, reply)
    if not prompt.strip() and not input_text.strip():
        raise RecordError(f"empty '{prompt_key}' and '{input_key}'" if input_key else f"empty '{prompt_key}'")
    if reply and not response.strip():
        raise RecordError(f"empty '{response_key}'")
    system = system_texts(rec)
    chat = _transcript_turns(prompt, input_text, labels) if labels else None
    if chat is not None:
        more_system, turns = chat
        system += more_system
    elif prompt.strip():
        turns = [Message.user(prompt, input_text)]
    else:
        turns = [Message.user(input_text)]
    answer = [Message("assistant", response)] if response.strip() else []
    return system_message(system) + history_messages(rec) + turns + answer


# --------------------------------------------------------------------------- turn lists and tool turns


class Dialogue:
    """Collects messages; a folded tool turn joins the previous message when that is on the same side."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._folded: list[bool] = []

    def add(self, message: Message, folded: bool = False) -> None:
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == message.role and (
                folded or self._folded[-1] or message.role == "system"):
            last.content = f"{last.content}\n\n{message.content}"
            last.instruction = last.input = None  # the joined content is now the whole turn
            self._folded[-1] = self._folded[-1] or folded
            return
        self.messages.append(message)
        self._folded.append(folded)


def tool_text(value: Any, what: str) -> str:
    """The text of a tool call or result; JSON structures are written out as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    raise RecordError(f"{what} must be text, got {type(value).__name__}")


def tagged(tag: str, text: str) -> str:
    return f"{tag}\n{text}"


SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
            "chatgpt": "assistant", "system": "system"}
TOOL_SPEAKERS = {"function_call": ("assistant", TOOL_CALL_TAG), "observation": ("user", TOOL_RESULT_TAG),
                 "tool": ("user", TOOL_RESULT_TAG)}


def speaker_turns(rec: dict, reply: bool, key: str = "conversations", speaker_key: str = "from",
                  text_key: str = "value") -> list[Message]:
    """Messages for ``[{"from": speaker, "value": text}, ...]`` (ShareGPT, BELLE multi-turn); the three
    key names can be others (``convert --map messages=... --map role=... --map content=...``)."""
    turns = rec.get(key)
    if turns is None:
        raise RecordError(f"missing field '{key}'")
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"field '{key}' must be a non-empty list of turns")
    dialogue = Dialogue()
    for text in system_texts(rec):
        dialogue.add(Message("system", text))
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"{key}[{i}] must be an object with '{speaker_key}' and '{text_key}'")
        speaker, value = turn.get(speaker_key), turn.get(text_key)
        if value is None:
            raise RecordError(f"{key}[{i}]: missing '{text_key}'")
        if speaker in TOOL_SPEAKERS:
            role, tag = TOOL_SPEAKERS[speaker]
            dialogue.add(Message(role, tagged(tag, tool_text(value, f"{key}[{i}].{text_key}"))), folded=True)
        elif speaker in SPEAKERS:
            if not isinstance(value, str):
                raise RecordError(f"{key}[{i}].{text_key} must be text, got {type(value).__name__}")
            dialogue.add(Message(SPEAKERS[speaker], value))
        else:
            known = ", ".join([*SPEAKERS, *TOOL_SPEAKERS])
            raise RecordError(f"{key}[{i}].{speaker_key} must be one of {known}, got {speaker!r}")
    return without_open_reply(dialogue.messages, reply)
