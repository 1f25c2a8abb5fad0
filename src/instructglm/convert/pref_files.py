"""``convert`` for preference files: any layout of :mod:`instructglm.convert.preference` -> canonical JSONL.

Same behaviour as SFT conversion (:mod:`instructglm.convert.convert`): the layout is detected per file
(or forced with ``--format``), every bad record is ``FILE:LINE: reason`` (``--on-error skip`` writes
them to ``OUT.rejects.jsonl``), ``--dedup`` drops repeats, unused scalar keys stay as metadata, and
the output is written atomically. ``convert_files`` hands over here when the inputs are preference
data (:func:`preference_inputs`) or ``--map`` names preference answers (``chosen``/``rejected``,
``completion``/``label``: :mod:`instructglm.convert.columns`); one output never mixes preference and
SFT records.
"""

from __future__ import annotations

import logging
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from instructglm.convert.preference import PREFERENCE_ALIASES, PREFERENCE_FORMATS, PreferenceFormat, detect_preference
from instructglm.convert.reading import DETECT_SAMPLES, _check_unicode, _metadata, convert_each
from instructglm.convert.sources import BadInput, scan_records
from instructglm.errors import UserError, where
from instructglm.record import Preference, RecordError

if TYPE_CHECKING:
    from instructglm.convert.convert import ConvertConfig

log = logging.getLogger(__name__)


def preference_format(name: str) -> PreferenceFormat | None:
    """The preference layout called ``name`` (or an alias), None for any other name."""
    return PREFERENCE_FORMATS.get(PREFERENCE_ALIASES.get(name, name))


def _sample(path: Path) -> tuple[list[tuple[int, Any]], Iterator[tuple[int, Any]]]:
    items = scan_records(path)
    buffered: list[tuple[int, Any]] = []
    for item in items:
        buffered.append(item)
        if sum(not isinstance(x, BadInput) for _, x in buffered) >= DETECT_SAMPLES:
            break
    return buffered, items


def open_preferences(path: Path, fmt_name: str = "auto") -> tuple[PreferenceFormat | None, Iterator]:
    """``(layout, items)`` of one file; layout None when the file is not preference data."""
    forced = preference_format(fmt_name)
    if fmt_name != "auto" and forced is None:
        return None, iter(())
    buffered, rest = _sample(path)
    fmt = forced or detect_preference([x for _, x in buffered if not isinstance(x, BadInput)])
    if fmt is not None:
        log.info("%s: %s preference format '%s'", path, "given" if forced else "detected", fmt.name)
    return fmt, chain(buffered, rest)


def open_mapped(path: Path, cfg: ConvertConfig) -> tuple[PreferenceFormat | None, Iterator]:
    """``open_preferences`` for ``convert``: the layout ``--map`` makes when it names preference answers."""
    columns = cfg.columns()
    if columns is None or not columns.preference:
        return open_preferences(path, cfg.format)
    log.info("%s: read as preference data with %s", path, columns.describe())
    return columns.as_format(), scan_records(path)


def preference_inputs(paths: list[Path], fmt_name: str = "auto") -> bool:
    """True when every input file is preference data; UserError when some are and some are not."""
    kinds = {p: open_preferences(p, fmt_name)[0] is not None for p in paths}
    if any(kinds.values()) and not all(kinds.values()):
        sft = next(str(p) for p, pref in kinds.items() if not pref)
        raise UserError(f"{sft}: not preference data, unlike the other inputs; convert SFT and preference "
                        f"files into separate outputs")
    return bool(paths) and all(kinds.values())


def convert_preference(rec: Any, fmt: PreferenceFormat, source: str, index: int, dropped: set[str]) -> Preference:
    """One record -> a checked preference with its metadata; RecordError if it is malformed."""
    if not isinstance(rec, dict):
        raise RecordError(f"expected a JSON object, got {type(rec).__name__}")
    pref = fmt.read_preference(rec).check()
    pref.metadata = _metadata(rec, fmt, source, index, dropped)
    _check_unicode([*pref.metadata, *pref.metadata.values(),
                    *(m.content for m in [*pref.prompt, *pref.completions])])
    return pref


def iter_preferences(path: Path, fmt: PreferenceFormat, items, on_reject) -> Iterator[Preference]:
    """A preference for every good item; each bad one goes to ``on_reject`` or raises ``FILE:LINE``."""
    yield from convert_each(path, items, lambda item, index, dropped: convert_preference(
        item, fmt, path.name, index, dropped), on_reject)


def read_preference_file(path: str | Path, fmt_name: str = "auto") -> list[Preference]:
    """Every preference of a data file in any preference layout (FILE:LINE errors); for ``eval``."""
    path = Path(path)
    fmt, items = open_preferences(path, fmt_name)
    if fmt is None:
        raise UserError(f"{path}: not preference data (expected e.g. chosen/rejected answers; layouts: "
                        f"{', '.join(PREFERENCE_FORMATS)})")
    out = list(iter_preferences(path, fmt, items, None))
    if not out:
        raise UserError(f"{path}: no records")
    return out


def convert_preference_files(cfg: ConvertConfig, paths: list[Path], rej_path: Path | None = None) -> dict:
    """What ``convert_files`` returns, for preference inputs (plus ``kind: preference``); ``rej_path``:
    the rejects file (``convert_files`` has checked it), by default ``OUT.rejects.jsonl`` with ``skip``."""
    from instructglm.convert.convert import rejects_path
    from instructglm.convert.writing import write_converted

    if rej_path is None and cfg.on_error == "skip":
        rej_path = rejects_path(cfg.output)

    def records_of(path: Path, on_reject):
        fmt, items = open_mapped(path, cfg)
        if fmt is None:
            raise UserError(f"{where(path)}: not preference data")
        return fmt.name, (pref.to_json() for pref in iter_preferences(path, fmt, items, on_reject))

    fields = ("messages", "chosen", "rejected", "completion", "label") if cfg.dedup else None
    return {**write_converted(cfg.output, paths, rej_path, records_of, fields), "kind": "preference"}
