"""The canonical record and the file readers every stage shares.

One canonical record per JSONL line::

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "Translate.\\n\\nGood morning",
                   "instruction": "Translate.", "input": "Good morning"},
                  {"role": "assistant", "content": "Bonjour"}],
     "source": "alpaca.json", "index": 0, "category": "translate"}

``content`` is always the full text of the turn, so the record is a valid OpenAI-style message list
for any chat template. A user turn that came from Alpaca's ``instruction`` + ``input`` also keeps
the two parts, so the ``alpaca`` template can render its ``### Input:`` block. Keys other than
``messages`` are metadata (source file, original index, category, ...).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from instructglm.errors import UserError, where

ROLES = ("system", "user", "assistant")
MAX_RECORD_BYTES = 16 * 1024 * 1024


class RecordError(ValueError):
    """A malformed record; the reader adds the file and line."""


def user_text(message: dict) -> str:
    """The text a chat template shows for a user turn (instruction and input joined)."""
    return message["content"]


def user_message(instruction: str, input_text: str = "") -> dict:
    if input_text:
        return {"role": "user", "content": f"{instruction}\n\n{input_text}",
                "instruction": instruction, "input": input_text}
    return {"role": "user", "content": instruction}


def validate_messages(messages: Any) -> list[dict]:
    """Check the message list of a canonical record; raise RecordError naming the field."""
    if not isinstance(messages, list) or not messages:
        raise RecordError("'messages' must be a non-empty list")
    expect_user = True
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RecordError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise RecordError(f"messages[{i}].content must be text, got {type(content).__name__}")
        if role == "system":
            if i != 0:
                raise RecordError(f"messages[{i}]: a system message may only come first")
            continue
        if (role == "user") != expect_user:
            raise RecordError(f"messages[{i}]: roles out of order (expected "
                              f"{'user' if expect_user else 'assistant'}, got {role})")
        if role == "assistant" and not content.strip():
            raise RecordError(f"messages[{i}]: empty assistant response")
        expect_user = not expect_user
    if messages[-1]["role"] != "assistant":
        raise RecordError("the last message must be the assistant's response")
    return messages


@dataclass(frozen=True)
class BadInput:
    """A stretch of input that could not be read as a record.

    ``reason`` says why (invalid JSON, bad bytes, too large); ``raw`` is the text as read (bad bytes
    replaced by U+FFFD, cut to ``RAW_KEEP`` characters) so that it can be shown or stored.
    """

    reason: str
    raw: str


RAW_KEEP = 64 * 1024
_BOM = b"\xef\xbb\xbf"
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, after surrogateescape


def read_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, record)`` from a JSON array or JSONL file (UTF-8, BOM allowed).

    ``line`` is 1-based; for a JSON array it is the line where the record starts. Malformed
    input raises :class:`UserError` with ``FILE:LINE``.
    """
    for line, item in scan_records(path):
        if isinstance(item, BadInput):
            raise UserError(f"{where(path, line)}: {item.reason}")
        yield line, item


def scan_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Like :func:`read_records`, but a malformed stretch of input is yielded as ``(line, BadInput)``
    and reading goes on with the next line (JSONL) or record (JSON array).

    In a JSON array whose syntax is broken the records after the break cannot be found reliably,
    so the rest of the file comes back as one ``BadInput`` that says so. A missing, empty or
    directory path still raises :class:`UserError`: that is not a record problem.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a data file")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(_BOM).lstrip()
    if not head:
        raise UserError(f"{path}: file is empty")
    if head[:1] == b"[":
        yield from _scan_json_array(path)
    else:
        yield from _scan_jsonl(path)


def _limit_text() -> str:
    return f"{MAX_RECORD_BYTES >> 20} MB" if MAX_RECORD_BYTES >= 1 << 20 else f"{MAX_RECORD_BYTES} bytes"


def _clip(text: str) -> str:
    """``text`` cut to ``RAW_KEEP`` characters, saying how much was left out."""
    if len(text) <= RAW_KEEP:
        return text
    return text[:RAW_KEEP] + f"... [{len(text) - RAW_KEEP} more characters not kept]"


def _scan_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(_BOM)
            if len(raw) > MAX_RECORD_BYTES:
                yield lineno, BadInput(f"record is larger than {_limit_text()}",
                                       _clip(raw.decode("utf-8", "replace")))
                continue
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                yield lineno, BadInput(f"not valid UTF-8 (byte {e.start})", raw.decode("utf-8", "replace").strip())
                continue
            if not text:
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, BadInput(f"invalid JSON: {e.msg} (column {e.colno})", _clip(text))
            except RecursionError:
                yield lineno, BadInput("invalid JSON: nested too deeply", _clip(text))


def _readable(text: str) -> str:
    """Text decoded with ``surrogateescape``, its bad bytes shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _scan_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    raw = path.read_bytes().removeprefix(_BOM)
    text = raw.decode("utf-8", "surrogateescape")  # bad bytes are found per record below
    has_bad_bytes = _ESCAPED_BYTE.search(text) is not None
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0

    def line_at(offset: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, offset)
        counted = offset
        return line

    def rest(offset: int, reason: str) -> BadInput:
        last = line_at(offset) + text.count("\n", offset, n - 1 if n else 0)
        return BadInput(f"{reason}; the rest of the JSON array (to line {last}) cannot be read past this "
                        f"point and is rejected", _clip(_readable(text[offset:])))

    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos < n and text[pos] == "]":
            return
        start_line = line_at(pos)
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield start_line, rest(pos, f"invalid JSON in the record starting here: {e.msg} "
                                        f"(line {e.lineno}, column {e.colno})")
            return
        except RecursionError:
            yield start_line, rest(pos, "invalid JSON in the record starting here: nested too deeply")
            return
        chunk = text[pos:end]
        bad = _ESCAPED_BYTE.search(chunk) if has_bad_bytes else None
        if len(chunk) > MAX_RECORD_BYTES or (
                len(chunk) * 4 > MAX_RECORD_BYTES and len(chunk.encode("utf-8", "surrogateescape")) > MAX_RECORD_BYTES):
            yield start_line, BadInput(f"record is larger than {_limit_text()}", _clip(_readable(chunk)))
        elif bad is not None:
            byte = len(text[:pos + bad.start()].encode("utf-8", "surrogateescape"))
            bad_line = start_line + chunk.count("\n", 0, bad.start())
            yield start_line, BadInput(f"not valid UTF-8 (byte {byte}, line {bad_line})", _clip(_readable(chunk)))
        else:
            yield start_line, obj
        pos = end
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos < n and text[pos] == ",":
            pos += 1
        elif pos < n and text[pos] == "]":
            return
        else:
            yield line_at(min(pos, n)), rest(min(pos, n), "invalid JSON: expected ',' or ']' after a record")
            return


def read_canonical(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, record)`` from a canonical JSONL file, validating every record."""
    for line, rec in read_records(path):
        if not isinstance(rec, dict) or "messages" not in rec:
            raise UserError(f"{where(path, line)}: not a canonical record (no 'messages'); "
                            f"run 'instructglm convert' first")
        try:
            validate_messages(rec["messages"])
        except RecordError as e:
            raise UserError(f"{where(path, line)}: {e}") from None
        yield line, rec


class AtomicWriter:
    """Write a file through a temporary sibling and rename it into place on success.

    A failure (or an exception in the ``with`` block) removes the temporary file, so no
    half-written output is ever left under the final name.
    """

    def __init__(self, path: str | Path, mode: str = "w"):
        self.path = Path(path)
        self.mode = mode

    def __enter__(self):
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a directory; give a file name for the output")
        parent = self.path.parent
        if str(parent) and not parent.exists():
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"{self.path}: cannot create output directory: {e.strerror}") from None
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent or ".")
        except OSError as e:
            raise UserError(f"{self.path}: cannot write output: {e.strerror}") from None
        self.file = os.fdopen(fd, self.mode, encoding="utf-8" if "b" not in self.mode else None)
        return self.file

    def __exit__(self, exc_type, exc, tb):
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
        return False


def write_jsonl(path: str | Path, records) -> int:
    """Write records as UTF-8 JSONL (Chinese stays readable) atomically; return the count."""
    n = 0
    with AtomicWriter(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MB chunks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
