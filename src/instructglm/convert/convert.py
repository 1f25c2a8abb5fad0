"""``convert``: dataset files in a supported format -> canonical JSONL.

Each format is a function ``record -> messages`` registered in ``FORMATS`` with a detector.
``--format auto`` looks at the first records of every file: each record is classified as the
*first* format in ``FORMATS`` order whose detector accepts it (so the order is the priority and a
record never counts for two formats), and the format with most votes wins.

Malformed records are reported as ``FILE:LINE: reason``. With ``on_error="fail"`` the first one
stops the run (``UserError``, exit status 2); with ``"skip"`` every rejected record is written with
its reason to ``OUT.rejects.jsonl`` and the run goes on.

Tool turns (ShareGPT ``function_call``/``observation``/``tool``, OpenAI ``tool``/``function``
messages and assistant ``tool_calls``) are folded into the adjacent turn of the same side, marked
with ``[function_call]`` (assistant side) or ``[observation]`` (user side) on a line of their own,
because the canonical record and the chat templates only know system/user/assistant.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import re
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from instructglm.config import opt
from instructglm.convert.sources import BadInput, scan_records
from instructglm.files import atomic_file
from instructglm.record import Conversation, Message, RecordError
from instructglm.errors import UserError, where

log = logging.getLogger(__name__)

TOOL_CALL_TAG = "[function_call]"
TOOL_RESULT_TAG = "[observation]"
DETECT_SAMPLES = 8  # records that vote on a file's format
MAX_LOGGED_REJECTS = 10


# --------------------------------------------------------------------------- field helpers


def _user_message(instruction: str, input_text: str = "") -> dict:  # TODO(redesign): build Message objects
    return Message.user(instruction, input_text).to_dict()


def _validated(messages: list[dict]) -> list[dict]:
    Conversation.from_messages(messages)
    return messages


def _text(rec: dict, key: str, required: bool = True) -> str:
    """``rec[key]`` as text; a missing key is ``""`` unless ``required``; any other type is an error."""
    value = rec.get(key)
    if value is None:
        if required:
            raise RecordError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RecordError(f"field '{key}' must be text, got {type(value).__name__}")
    return value


def _system_texts(rec: dict) -> list[str]:
    """The optional top-level ``system`` prompt, as a list of zero or one texts."""
    system = _text(rec, "system", False)
    return [system] if system else []


def _history(rec: dict) -> list[dict]:
    """Messages for ``history``: a list of ``[user, assistant]`` pairs before the current turn."""
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise RecordError("field 'history' must be a list of [user, assistant] pairs")
    messages: list[dict] = []
    for i, turn in enumerate(history):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise RecordError(f"history[{i}] must be a [user, assistant] pair of texts")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    return messages


def _system_message(texts: list[str]) -> list[dict]:
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


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


def _prompt_turns(instruction: str, input_text: str,
                  labels: dict[str, str]) -> tuple[list[str], list[dict]] | None:
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
    return system, [{"role": role, "content": content} for role, content in turns]


def _qa(rec: dict, prompt_key: str, response_key: str, *, input_key: str | None = None,
        labels: dict[str, str] | None = None) -> list[dict]:
    """Messages for a prompt/response record, with optional ``input``, ``system`` and ``history``.

    With ``labels``, a prompt or input that is a transcript (``Human: ...``) is split into turns.
    """
    prompt = _text(rec, prompt_key)
    input_text = _text(rec, input_key, False) if input_key else ""
    response = _text(rec, response_key)
    if not prompt.strip() and not input_text.strip():
        raise RecordError(f"empty '{prompt_key}' and '{input_key}'" if input_key else f"empty '{prompt_key}'")
    if not response.strip():
        raise RecordError(f"empty '{response_key}'")
    system = _system_texts(rec)
    chat = _prompt_turns(prompt, input_text, labels) if labels else None
    if chat is not None:
        more_system, turns = chat
        system += more_system
    elif prompt.strip():
        turns = [_user_message(prompt, input_text)]
    else:
        turns = [_user_message(input_text)]
    return _system_message(system) + _history(rec) + turns + [{"role": "assistant", "content": response}]


# --------------------------------------------------------------------------- turn lists and tool turns


class _Dialogue:
    """Collects messages; a folded tool turn joins the previous message when that is on the same side."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self._folded: list[bool] = []

    def add(self, message: dict, folded: bool = False) -> None:
        last = self.messages[-1] if self.messages else None
        if last is not None and last.get("role") == message["role"] and (
                folded or self._folded[-1] or message["role"] == "system"):
            last["content"] = f"{last['content']}\n\n{message['content']}"
            last.pop("instruction", None)  # the joined content is now the whole turn
            last.pop("input", None)
            self._folded[-1] = self._folded[-1] or folded
            return
        self.messages.append(message)
        self._folded.append(folded)


def _tool_text(value: Any, what: str) -> str:
    """The text of a tool call or result; JSON structures are written out as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    raise RecordError(f"{what} must be text, got {type(value).__name__}")


def _tagged(tag: str, text: str) -> str:
    return f"{tag}\n{text}"


SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
            "chatgpt": "assistant", "system": "system"}
TOOL_SPEAKERS = {"function_call": ("assistant", TOOL_CALL_TAG), "observation": ("user", TOOL_RESULT_TAG),
                 "tool": ("user", TOOL_RESULT_TAG)}


def _speaker_turns(rec: dict, key: str = "conversations") -> list[dict]:
    """Messages for ``[{"from": speaker, "value": text}, ...]`` (ShareGPT, BELLE multi-turn)."""
    turns = rec.get(key)
    if turns is None:
        raise RecordError(f"missing field '{key}'")
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"field '{key}' must be a non-empty list of turns")
    dialogue = _Dialogue()
    for text in _system_texts(rec):
        dialogue.add({"role": "system", "content": text})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"{key}[{i}] must be an object with 'from' and 'value'")
        speaker, value = turn.get("from"), turn.get("value")
        if value is None:
            raise RecordError(f"{key}[{i}]: missing 'value'")
        if speaker in TOOL_SPEAKERS:
            role, tag = TOOL_SPEAKERS[speaker]
            dialogue.add({"role": role, "content": _tagged(tag, _tool_text(value, f"{key}[{i}].value"))}, folded=True)
        elif speaker in SPEAKERS:
            if not isinstance(value, str):
                raise RecordError(f"{key}[{i}].value must be text, got {type(value).__name__}")
            dialogue.add({"role": SPEAKERS[speaker], "content": value})
        else:
            known = ", ".join([*SPEAKERS, *TOOL_SPEAKERS])
            raise RecordError(f"{key}[{i}].from must be one of {known}, got {speaker!r}")
    return dialogue.messages


# --------------------------------------------------------------------------- readers, one per format


def canonical_to_messages(rec: dict) -> list[dict]:
    """Canonical / OpenAI ``messages``. ``tool``/``function`` results and assistant ``tool_calls``
    (or ``function_call``) are folded into the user/assistant side; other messages pass unchanged."""
    messages = rec.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError("'messages' must be a non-empty list")
    dialogue = _Dialogue()
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}] must be an object")
        role = m.get("role")
        calls = m.get("tool_calls") or m.get("function_call")
        if role in ("tool", "function"):
            content = _tool_text(m.get("content"), f"messages[{i}].content")
            dialogue.add({"role": "user", "content": _tagged(TOOL_RESULT_TAG, content)}, folded=True)
        elif role == "assistant" and calls:
            content = m.get("content")
            if content is not None and not isinstance(content, str):
                raise RecordError(f"messages[{i}].content must be text, got {type(content).__name__}")
            if content and content.strip():
                dialogue.add({"role": "assistant", "content": content})
            call_text = _tool_text(calls, f"messages[{i}].tool_calls")
            dialogue.add({"role": "assistant", "content": _tagged(TOOL_CALL_TAG, call_text)}, folded=True)
        else:
            dialogue.add(dict(m))  # validate_messages checks role and content
    return dialogue.messages


def alpaca_to_messages(rec: dict) -> list[dict]:
    """Alpaca: ``instruction``, optional ``input``, ``output``, optional ``system`` and
    ``history`` (a list of ``[user, assistant]`` pairs before this turn)."""
    return _qa(rec, "instruction", "output", input_key="input")


def belle_to_messages(rec: dict) -> list[dict]:
    """BELLE, all its shapes: ``conversations`` (``from``: human/assistant/gpt), the older
    ``input``/``target``, and ``instruction``/``input``/``output`` whose text may be a
    ``Human:``/``Assistant:`` transcript (its trailing empty ``Assistant:`` is the slot for ``output``)."""
    if "conversations" in rec:
        return _speaker_turns(rec)
    if "instruction" not in rec and "target" in rec:
        return _qa(rec, "input", "target", labels=BELLE_LABELS)
    return _qa(rec, "instruction", "output", input_key="input", labels=BELLE_LABELS)


def guanaco_to_messages(rec: dict) -> list[dict]:
    """Guanaco: Alpaca fields whose ``instruction``/``input`` may be a ``User:``/``Assistant:``/``System:``
    transcript."""
    return _qa(rec, "instruction", "output", input_key="input", labels=GUANACO_LABELS)


def sharegpt_to_messages(rec: dict) -> list[dict]:
    """ShareGPT: ``conversations`` of ``{"from", "value"}``, optional top-level ``system``."""
    return _speaker_turns(rec)


def firefly_to_messages(rec: dict) -> list[dict]:
    """firefly-train-1.1M ``kind``/``input``/``target``, or Firefly multi-turn
    ``conversation: [{"human", "assistant"}, ...]``."""
    if "conversation" not in rec:
        return _qa(rec, "input", "target")
    turns = rec["conversation"]
    if not isinstance(turns, list) or not turns:
        raise RecordError("field 'conversation' must be a non-empty list of {human, assistant} turns")
    messages = _system_message(_system_texts(rec))
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"conversation[{i}] must be an object with 'human' and 'assistant'")
        try:
            messages += [{"role": "user", "content": _text(turn, "human")},
                         {"role": "assistant", "content": _text(turn, "assistant")}]
        except RecordError as e:
            raise RecordError(f"conversation[{i}]: {e}") from None
    return messages


def chatglm_to_messages(rec: dict) -> list[dict]:
    """ChatGLM fine-tuning JSON: ``prompt``, ``response``, ``history`` as ``[[q, a], ...]``."""
    return _qa(rec, "prompt", "response")


def adgen_to_messages(rec: dict) -> list[dict]:
    """ADGEN-style ``content`` (prompt) and ``summary`` (response)."""
    return _qa(rec, "content", "summary")


def seed_context_to_messages(rec: dict) -> list[dict]:
    """The seeds' ``{"context", "target"}``: ``context`` is an already formatted prompt and is kept
    verbatim as the user turn."""
    return _qa(rec, "context", "target")


_SEED_HEADER = re.compile(r"^### (Instruction|Input|Response):[ \t]*\n?", re.M)


def _parse_seed_text(text: str) -> tuple[str, str, str, str]:
    """``(preamble, instruction, input, response)`` from ``### Instruction:/### Input:/### Response:`` text.

    Everything after ``### Response:`` is the response (it may hold ``###`` itself); a last line
    that is exactly ``END`` is the seeds' end marker and is dropped.
    """
    parts: dict[str, str] = {}
    preamble, current, pos = "", None, 0
    for m in _SEED_HEADER.finditer(text):
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
    if "Response" not in parts:
        raise RecordError("no '### Response:' block in 'text'")
    response = parts["Response"].rstrip()
    if response == "END" or response.endswith("\nEND"):
        response = response[:-3]
    return preamble.strip(), parts["Instruction"].strip(), parts.get("Input", "").strip(), response.strip()


def seed_text_to_messages(rec: dict) -> list[dict]:
    """The seeds' ``{"text": "### Instruction:\\n...\\n\\n### Input:\\n...\\n\\n### Response:\\n...\\nEND\\n"}``
    (``### Input:`` optional); text before ``### Instruction:`` becomes the system prompt."""
    preamble, instruction, input_text, response = _parse_seed_text(_text(rec, "text"))
    if not instruction and not input_text:
        raise RecordError("empty '### Instruction:' block in 'text'")
    if not response:
        raise RecordError("empty '### Response:' block in 'text'")
    user = _user_message(instruction, input_text) if instruction else _user_message(input_text)
    return _system_message([preamble] if preamble else []) + [user, {"role": "assistant", "content": response}]


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


@dataclass(frozen=True)
class Format:
    name: str
    to_messages: Callable[[dict], list[dict]]
    detect: Callable[[dict], bool]
    fields: tuple[str, ...]  # the fields the reader consumes; all other scalar keys are kept as metadata
    rule: str = ""  # the detection rule, for --help and the docs


_QA_EXTRA = ("system", "history")

# Order is detection priority: a record counts for the first format whose detector accepts it.
FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("canonical", canonical_to_messages, lambda r: isinstance(r.get("messages"), list),
           ("messages",), "a 'messages' list (also OpenAI chat format)"),
    Format("firefly", firefly_to_messages,
           lambda r: isinstance(r.get("conversation"), list) or all(k in r for k in ("kind", "input", "target")),
           ("input", "target", "conversation", *_QA_EXTRA), "'kind'+'input'+'target', or a 'conversation' list"),
    Format("belle", belle_to_messages, _is_belle,
           ("instruction", "input", "output", "target", "conversations", *_QA_EXTRA),
           "'conversations' with from=assistant; 'input'+'target' alone; 'instruction'+'output' with "
           "'class' or Human:/Assistant: text"),
    Format("sharegpt", sharegpt_to_messages, lambda r: isinstance(r.get("conversations"), list),
           ("conversations", "system"), "a 'conversations' list of from/value turns"),
    Format("guanaco", guanaco_to_messages,
           lambda r: "instruction" in r and "output" in r and _chat_in(r, GUANACO_LABELS),
           ("instruction", "input", "output", *_QA_EXTRA), "'instruction'+'output' with User:/Assistant: text"),
    Format("chatglm", chatglm_to_messages, lambda r: "prompt" in r and "response" in r,
           ("prompt", "response", *_QA_EXTRA), "'prompt'+'response'"),
    Format("adgen", adgen_to_messages, lambda r: "content" in r and "summary" in r,
           ("content", "summary", *_QA_EXTRA), "'content'+'summary'"),
    Format("seed_context", seed_context_to_messages, lambda r: "context" in r and "target" in r,
           ("context", "target", *_QA_EXTRA), "'context'+'target'"),
    Format("seed_text", seed_text_to_messages,
           lambda r: isinstance(r.get("text"), str) and "### Instruction:" in r["text"],
           ("text",), "a 'text' holding '### Instruction:'"),
    Format("alpaca", alpaca_to_messages, lambda r: "instruction" in r and "output" in r,
           ("instruction", "input", "output", *_QA_EXTRA), "'instruction'+'output'"),
]}
ALIASES = {"openai": "canonical", "messages": "canonical"}


def resolve_format(name: str) -> Format | None:
    """The format named ``name`` (or an alias); ``None`` for ``auto``; UserError if unknown."""
    if name == "auto":
        return None
    fmt = FORMATS.get(ALIASES.get(name, name))
    if fmt is None:
        raise UserError(f"--format {name}: unknown format; known: auto, {', '.join([*FORMATS, *ALIASES])}")
    return fmt


def classify(rec: Any) -> str | None:
    """The name of the first format (in priority order) whose detector accepts ``rec``."""
    if isinstance(rec, dict):
        for fmt in FORMATS.values():
            if fmt.detect(rec):
                return fmt.name
    return None


def detect_format(path: Path, samples: list[Any]) -> Format:
    """The format most of the sampled records belong to (ties go to the earlier format). A
    malformed record among them is then reported by the converter with its line."""
    votes = Counter(classify(s) for s in samples)
    votes.pop(None, None)
    if votes:
        return FORMATS[max(FORMATS, key=lambda name: votes.get(name, 0))]
    keys = sorted(samples[0]) if samples and isinstance(samples[0], dict) else []
    raise UserError(f"{path}: cannot detect the dataset format (first record's keys: {keys}); "
                    f"known formats: {', '.join(FORMATS)}; use --format NAME")


# --------------------------------------------------------------------------- config


@dataclass
class ConvertConfig:
    inputs: list[str] = opt(help="input files (JSON array or JSONL) or glob patterns")
    output: str = opt(help="output canonical JSONL file", aliases=("-o",))
    format: str = opt("auto", help=f"input format: auto (detected per file) or one of {', '.join(FORMATS)}")
    on_error: Literal["fail", "skip"] = opt(
        "fail", help="fail: stop at the first malformed record (exit status 2); skip: write each one with "
                     "its reason to OUT.rejects.jsonl and go on")
    dedup: bool = opt(False, help="drop records whose messages exactly repeat an earlier record's")

    def validate(self) -> None:
        resolve_format(self.format)


def expand_inputs(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matched = sorted(glob.glob(pattern))
            if not matched:
                raise UserError(f"{pattern}: no file matches")
            paths += [Path(m) for m in matched]
        else:
            paths.append(Path(pattern))
    return paths


def rejects_path(output: str | Path) -> Path:
    """``OUT.rejects.jsonl`` next to the output (``train.jsonl`` -> ``train.rejects.jsonl``)."""
    out = Path(output)
    if out.suffix in (".jsonl", ".json"):
        return out.with_name(out.stem + ".rejects.jsonl")
    return out.with_name(out.name + ".rejects.jsonl")


# --------------------------------------------------------------------------- conversion


@dataclass
class Rejected:
    """A record that could not be converted, and why."""

    file: str
    line: int
    reason: str
    record: Any  # the parsed record, or the raw text for input that is not even JSON

    def message(self) -> str:
        return f"{where(self.file, self.line)}: {self.reason}"

    def to_json(self) -> str:
        obj = {"file": self.file, "line": self.line, "reason": self.reason, "record": self.record}
        text = json.dumps(obj, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape in the record: keep it escaped
            text = json.dumps(obj, ensure_ascii=True)
        return text


def open_source(path: Path, fmt_name: str = "auto") -> tuple[Format, Iterator[tuple[int, Any]]]:
    """``(format, items)`` for one file: the forced format, or the one detected from its first records.

    ``items`` are ``(line, record | BadInput)`` from :func:`scan_records`, the sampled ones included.
    """
    fmt = resolve_format(fmt_name)
    items = scan_records(path)
    if fmt is not None:
        log.info("%s: format '%s' (given with --format)", path, fmt.name)
        return fmt, items
    buffered: list[tuple[int, Any]] = []
    for item in items:
        buffered.append(item)
        if sum(not isinstance(x, BadInput) for _, x in buffered) >= DETECT_SAMPLES or len(buffered) >= 64:
            break
    samples = [x for _, x in buffered if not isinstance(x, BadInput)]
    if not samples and buffered:  # nothing readable: the first bad line is the clearer message
        line, bad = buffered[0]
        raise UserError(f"{where(path, line)}: {bad.reason}")
    fmt = detect_format(path, samples)
    votes = sum(classify(s) == fmt.name for s in samples)
    log.info("%s: detected format '%s' (%d of %d sampled records)", path, fmt.name, votes, len(samples))
    return fmt, chain(buffered, items)


def _metadata(rec: dict, fmt: Format, dropped: set[str]) -> dict:
    """The record's non-consumed scalar keys; names of non-scalar ones are added to ``dropped``."""
    meta: dict[str, Any] = {}
    for key, value in rec.items():
        if key in fmt.fields:
            continue
        if value is None or isinstance(value, (str, int, float, bool)):
            meta[key] = value
        else:
            dropped.add(key)
    return meta


def convert_record(rec: Any, fmt: Format, source: str, index: int, dropped: set[str] | None = None) -> dict:
    """One record -> a canonical record with its metadata; raise RecordError if it is malformed."""
    if not isinstance(rec, dict):
        raise RecordError(f"expected a JSON object, got {type(rec).__name__}")
    out: dict[str, Any] = {"messages": _validated(fmt.to_messages(rec))}
    out.update(_metadata(rec, fmt, dropped if dropped is not None else set()))
    out.setdefault("source", source)
    out.setdefault("index", index)
    for key in ("kind", "class"):  # firefly's kind, BELLE's class: the eval stage groups by category
        if "category" not in out and isinstance(out.get(key), str) and out[key]:
            out["category"] = out[key]
    return out


def _to_line(out: dict) -> str:
    """The record as one JSONL line; RecordError if its text cannot be written as UTF-8."""
    line = json.dumps(out, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(f"text holds a lone surrogate escape (\\u{ord(line[e.start]):04x}), "
                          f"which is not valid Unicode") from None
    return line


def _convert_items(path: Path, fmt: Format, items: Iterable[tuple[int, Any]],
                   on_reject: Callable[[Rejected], None] | None) -> Iterator[tuple[dict, str]]:
    """``(record, JSONL line)`` for every good item; each bad one goes to ``on_reject`` (or, when that
    is ``None``, raises UserError with ``FILE:LINE``)."""
    dropped: set[str] = set()
    for index, (line, item) in enumerate(items):
        try:
            if isinstance(item, BadInput):
                rejected = Rejected(str(path), line, item.reason, item.raw)
            else:
                out = convert_record(item, fmt, path.name, index, dropped)
                yield out, _to_line(out)
                continue
        except RecordError as e:
            rejected = Rejected(str(path), line, str(e), item)
        if on_reject is None:
            raise UserError(rejected.message())
        on_reject(rejected)
    if dropped:
        log.info("%s: dropped non-scalar metadata keys: %s", path, ", ".join(sorted(dropped)))


def iter_converted(path: Path, fmt_name: str = "auto",
                   on_reject: Callable[[Rejected], None] | None = None) -> Iterator[dict]:
    """Yield canonical records from one file; raise UserError at the first malformed record unless
    ``on_reject`` takes it."""
    fmt, items = open_source(Path(path), fmt_name)
    for out, _ in _convert_items(Path(path), fmt, items, on_reject):
        yield out


def _messages_key(messages: list[dict]) -> bytes:
    text = json.dumps(messages, ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def convert_files(cfg: ConvertConfig) -> dict:
    """Convert every input file to one canonical JSONL file (written atomically).

    Returns ``records`` (written), ``converted``, ``rejected``, ``duplicates`` (removed by ``dedup``),
    ``files`` (records converted per file), ``formats`` (format per file), ``output`` and
    ``rejects`` (the rejects file with ``on_error="skip"``, else ``None``).
    """
    resolve_format(cfg.format)
    if cfg.on_error not in ("fail", "skip"):
        raise UserError(f"--on-error {cfg.on_error}: expected fail or skip")
    paths = expand_inputs(cfg.inputs)
    rej_path = rejects_path(cfg.output) if cfg.on_error == "skip" else None
    counts = Counter(records=0, converted=0, rejected=0, duplicates=0)
    files: dict[str, int] = {}
    formats: dict[str, str] = {}
    seen: set[bytes] = set()
    with atomic_file(cfg.output) as out, (atomic_file(rej_path) if rej_path else nullcontext()) as rej:

        def on_reject(r: Rejected) -> None:
            counts["rejected"] += 1
            if counts["rejected"] <= MAX_LOGGED_REJECTS:
                log.warning("rejected %s", r.message())
            rej.write(r.to_json() + "\n")

        for path in paths:
            fmt, items = open_source(path, cfg.format)
            formats[str(path)] = fmt.name
            converted = 0
            for rec, line in _convert_items(path, fmt, items, on_reject if rej else None):
                converted += 1
                if cfg.dedup:
                    key = _messages_key(rec["messages"])
                    if key in seen:
                        counts["duplicates"] += 1
                        continue
                    seen.add(key)
                out.write(line + "\n")
                counts["records"] += 1
            files[str(path)] = converted
            counts["converted"] += converted
    if counts["rejected"] > MAX_LOGGED_REJECTS:
        log.warning("%d more rejected records; all are in %s", counts["rejected"] - MAX_LOGGED_REJECTS, rej_path)
    return {**counts, "files": files, "formats": formats, "output": cfg.output,
            "rejects": str(rej_path) if rej_path else None}
