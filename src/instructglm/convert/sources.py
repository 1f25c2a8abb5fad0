"""Reading input data files of any layout: JSON arrays or JSON lines, UTF-8 with or without BOM.

Unlike :func:`instructglm.files.iter_jsonl` (for files InstructGLM itself wrote), this reader meets
users' files: a bad stretch (invalid JSON, bytes that are not UTF-8, a record over 16 MB) becomes a
:class:`BadInput` item so that ``convert --on-error skip`` can go on and report every one.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from instructglm.errors import UserError, where

MAX_RECORD_BYTES = 16 * 1024 * 1024


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
    if not path.is_file():  # a device or FIFO cannot be read twice (format detection, then the records)
        raise UserError(f"{path}: not a regular file (a device, FIFO or socket); save the data to a file first"
                        if path.exists() else f"{path}: file not found")
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


class _IntGuard:
    """``parse_int`` for :mod:`json`: an integer longer than Python's limit on digits (4300 by
    default; ``int()`` would raise ValueError mid-parse) is noted and stands in as 0, so the record
    can be reported as bad and a JSON array read on past it."""

    def __init__(self):
        self.limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
        self.too_long = 0

    def __call__(self, digits: str) -> int:
        n = len(digits) - digits.startswith("-")
        if self.limit and n > self.limit:
            self.too_long = max(self.too_long, n)
            return 0
        return int(digits)

    def bad(self) -> BadInput | None:
        """The BadInput for the value just decoded, if it held a too long integer (and reset)."""
        n, self.too_long = self.too_long, 0
        return BadInput(f"invalid JSON: an integer with {n} digits (at most {self.limit} are read)", "") if n else None


def _too_long(bad: BadInput, raw: str) -> BadInput:
    return BadInput(bad.reason, _clip(raw))


def parse_line(raw: bytes, fast_loads: Callable[[str], Any] | None = None) -> Any:
    """One line of a JSON-lines file: its value, ``None`` for a blank line, or a :class:`BadInput`
    saying why it is not a record (too large, not UTF-8, not JSON, nested too deeply, an integer too
    long to read). The one parser of JSON lines for ``convert``, ``infer`` and ``tokenize``.

    ``fast_loads`` (e.g. orjson's) is tried first; when it fails the standard library decides (it
    accepts what JSON allows and orjson does not, and names the column).
    """
    if len(raw) > MAX_RECORD_BYTES:
        return BadInput(f"record is larger than {_limit_text()}", _clip(raw.decode("utf-8", "replace")))
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        return BadInput(f"not valid UTF-8 (byte {e.start})", _clip(raw.decode("utf-8", "replace").strip()))
    if not text:
        return None
    if fast_loads is not None:
        try:
            return fast_loads(text)
        except ValueError:
            pass
    guard = _IntGuard()
    try:
        value = json.loads(text, parse_int=guard)
    except json.JSONDecodeError as e:
        return BadInput(f"invalid JSON: {e.msg} (column {e.colno})", _clip(text))
    except RecursionError:
        return BadInput("invalid JSON: nested too deeply", _clip(text))
    bad = guard.bad()
    return _too_long(bad, text) if bad else value


def _scan_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(_BOM)
            value = parse_line(raw)
            if value is not None:
                yield lineno, value


def _readable(text: str) -> str:
    """Text decoded with ``surrogateescape``, its bad bytes shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _scan_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    raw = path.read_bytes().removeprefix(_BOM)
    text = raw.decode("utf-8", "surrogateescape")  # bad bytes are found per record below
    has_bad_bytes = _ESCAPED_BYTE.search(text) is not None
    guard = _IntGuard()
    decoder = json.JSONDecoder(parse_int=guard)
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
        too_long = guard.bad()
        if too_long is not None:
            yield start_line, _too_long(too_long, _readable(chunk))
        elif len(chunk) > MAX_RECORD_BYTES or (
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
