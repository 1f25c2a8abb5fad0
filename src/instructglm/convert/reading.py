"""Reading a data file of any known format as :class:`~instructglm.record.Conversation` records.

``convert`` uses it with replies required; ``infer`` uses :func:`read_conversations` with replies
optional (a record whose answer is missing is a prompt to answer). Either way a malformed record is
reported as ``FILE:LINE: reason``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from instructglm.convert.columns import ColumnMap, undetected
from instructglm.convert.formats import (DATASET_FORMATS, DatasetFormat, classify, detect_format,
                                         resolve_format)
from instructglm.convert.sources import BadInput, scan_records
from instructglm.errors import UserError, where
from instructglm.files import dumps
from instructglm.record import Conversation, RecordError

log = logging.getLogger(__name__)

DETECT_SAMPLES = 8  # records that vote on a file's format
DETECT_MAX_LINES = 64  # stop looking for readable samples after this many items


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
        text = dumps(obj)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape in the record: keep it escaped
            text = json.dumps(obj, ensure_ascii=True)
        return text


def column_map(items: list[str], fmt_name: str = "auto") -> ColumnMap | None:
    """The column map of ``--map FIELD=KEY`` items (None for none). It sets the layout, so it excludes
    a ``--format`` other than ``auto``; a bad item is a UserError naming it."""
    columns = ColumnMap.parse(items)
    if columns is not None and fmt_name != "auto":
        raise UserError(f"--map with --format {fmt_name}: the map sets the layout; give one of them")
    return columns


def open_dataset(path: Path, fmt_name: str = "auto", reply: bool = True,
                 columns: ColumnMap | None = None) -> tuple[DatasetFormat, Iterator[tuple[int, Any]]]:
    """``(format, items)`` for one file: the one the column map makes, the forced format, or the one
    detected from its first records.

    ``items`` are ``(line, record | BadInput)`` from :func:`scan_records`, the sampled ones included.
    """
    fmt = resolve_format(fmt_name)
    items = scan_records(path)
    if columns is not None:
        log.info("%s: read with %s", path, columns.describe())
        return columns.as_format(), items
    if fmt is not None:
        log.info("%s: format '%s' (given with --format)", path, fmt.name)
        return fmt, items
    buffered: list[tuple[int, Any]] = []
    for item in items:
        buffered.append(item)
        if sum(not isinstance(x, BadInput) for _, x in buffered) >= DETECT_SAMPLES or len(buffered) >= DETECT_MAX_LINES:
            break
    samples = [x for _, x in buffered if not isinstance(x, BadInput)]
    if not samples and buffered:  # nothing readable: the first bad line is the clearer message
        line, bad = buffered[0]
        raise UserError(f"{where(path, line)}: {bad.reason}")
    fmt = detect_format(samples, reply)
    if fmt is None:
        raise undetected(path, samples, list(DATASET_FORMATS))
    votes = sum(classify(s, reply) == fmt.name for s in samples)
    log.info("%s: detected format '%s' (%d of %d sampled records)", path, fmt.name, votes, len(samples))
    return fmt, chain(buffered, items)


def _metadata(rec: dict, fmt: DatasetFormat, source: str, index: int, dropped: set[str]) -> dict:
    """The record's non-consumed scalar keys, then ``source``, ``index`` and ``category`` unless it has
    them; names of non-scalar keys are added to ``dropped``."""
    meta: dict[str, Any] = {}
    for key, value in rec.items():
        if key in fmt.fields:
            continue
        if value is None or isinstance(value, (str, int, float, bool)):
            meta[key] = value
        else:
            dropped.add(key)
    meta.setdefault("source", source)
    meta.setdefault("index", index)
    for key in ("kind", "class"):  # firefly's kind, BELLE's class: the eval stage groups by category
        if "category" not in meta and isinstance(meta.get(key), str) and meta[key]:
            meta["category"] = meta[key]
    return meta


def convert_record(rec: Any, fmt: DatasetFormat, source: str, index: int, dropped: set[str] | None = None,
                   reply: bool = True) -> Conversation:
    """One record -> a checked conversation with its metadata; RecordError if it is malformed."""
    if not isinstance(rec, dict):
        raise RecordError(f"expected a JSON object, got {type(rec).__name__}")
    messages = fmt.read(rec, reply)
    if not messages:  # possible with reply=False: a lone empty answer was dropped
        raise RecordError("the conversation has no user message")
    conv = Conversation(messages).check(reply)
    conv.metadata = _metadata(rec, fmt, source, index, dropped if dropped is not None else set())
    _check_unicode([*conv.metadata, *conv.metadata.values(),
                    *(text for m in messages for text in (m.content, m.instruction, m.input))])
    return conv


def _check_unicode(texts: list) -> None:
    """RecordError if a text cannot be written as UTF-8 (JSON lets a lone surrogate escape through)."""
    for text in texts:
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise RecordError(f"text holds a lone surrogate escape (\\u{ord(text[e.start]):04x}), "
                                  f"which is not valid Unicode") from None


def convert_each(path: Path, items: Iterable[tuple[int, Any]], convert_one: Callable[[Any, int, set], Any],
                 on_reject: Callable[[Rejected], None] | None) -> Iterator[Any]:
    """``convert_one(item, index, dropped)`` for every good item of ``path`` (SFT conversations and
    preference records alike); each bad one goes to ``on_reject`` (or, when that is ``None``, raises
    UserError with ``FILE:LINE``). ``dropped`` collects metadata keys left out, logged once at the end."""
    dropped: set[str] = set()
    for index, (line, item) in enumerate(items):
        try:
            if isinstance(item, BadInput):
                rejected = Rejected(str(path), line, item.reason, item.raw)
            else:
                yield convert_one(item, index, dropped)
                continue
        except RecordError as e:
            rejected = Rejected(str(path), line, str(e), item)
        if on_reject is None:
            raise UserError(rejected.message())
        on_reject(rejected)
    if dropped:
        log.info("%s: dropped non-scalar metadata keys: %s", path, ", ".join(sorted(dropped)))


def convert_items(path: Path, fmt: DatasetFormat, items: Iterable[tuple[int, Any]],
                  on_reject: Callable[[Rejected], None] | None, reply: bool = True) -> Iterator[Conversation]:
    """A conversation for every good item; each bad one goes to ``on_reject`` (or, when that is
    ``None``, raises UserError with ``FILE:LINE``)."""
    yield from convert_each(path, items, lambda item, index, dropped: convert_record(
        item, fmt, path.name, index, dropped, reply), on_reject)


def read_conversations(path: str | Path, fmt_name: str = "auto", limit: int | None = None,
                       columns: ColumnMap | None = None) -> list[Conversation]:
    """The conversations of a data file in any format ``convert`` reads, the reply optional.

    ``columns`` (``infer --map``, as ``convert --map``) reads a layout no format lists; with a map the
    reply's key may be missing from a record, every other mapped key is a ``FILE:LINE`` error when missing.

    A record whose answer is missing or empty ends with the user's turn (``conv.reference`` is
    ``None``); one with an answer keeps it as ``conv.reference``. Metadata is what ``convert``
    writes. ``limit`` stops after that many records. A malformed record, or a file without any, is
    a :class:`UserError` (``FILE:LINE`` for a record).
    """
    path = Path(path)
    fmt, items = open_dataset(path, fmt_name, reply=False, columns=columns)
    conversations: list[Conversation] = []
    for conv in convert_items(path, fmt, items, None, reply=False):
        conversations.append(conv)
        if limit and len(conversations) >= limit:
            break
    if not conversations:
        raise UserError(f"{path}: no records")
    return conversations
