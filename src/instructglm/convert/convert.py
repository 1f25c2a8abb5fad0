"""``convert``: dataset files in a supported format -> one canonical JSONL file.

Malformed records are reported as ``FILE:LINE: reason``. With ``on_error="fail"`` the first one
stops the run (``UserError``, exit status 2); with ``"skip"`` every rejected record is written with
its reason to ``OUT.rejects.jsonl`` and the run goes on. The formats and their detection are in
:mod:`instructglm.convert.formats`; a file of another layout is read with a column map
(``--map instruction=question --map output=std_answer``, :mod:`instructglm.convert.columns`).
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from instructglm.config import opt
from instructglm.convert.columns import ColumnMap
from instructglm.convert.formats import DATASET_FORMATS, resolve_format
from instructglm.convert.pref_files import convert_preference_files, preference_inputs
from instructglm.convert.reading import column_map, convert_items, open_dataset
from instructglm.convert.writing import write_converted
from instructglm.errors import UserError
from instructglm.paths import output_file, refuse_inputs

log = logging.getLogger(__name__)



@dataclass
class ConvertConfig:
    inputs: list[str] = opt(help="input files (JSON array or JSONL) or glob patterns; also given as positionals",
                            aliases=("--data_path",))
    output: str = opt(help="output canonical JSONL file", aliases=("-o", "--save_path"))
    format: str = opt("auto", help=f"input format: auto (detected per file) or one of {', '.join(DATASET_FORMATS)}")
    on_error: Literal["fail", "skip"] = opt(
        "fail", help="fail: stop at the first malformed record (exit status 2); skip: write each one with "
                     "its reason to OUT.rejects.jsonl and go on")
    dedup: bool = opt(False, help="drop records whose messages exactly repeat an earlier record's")
    map: list[str] = opt([], help="read a layout no format lists: FIELD=KEY, the file's KEY for FIELD "
                                  "(instruction, input, output, history, system; or messages, role, content "
                                  "for a list of turns; preference data: chosen, rejected, or completion, label "
                                  "for KTO), e.g. --map instruction=question --map output=std_answer")

    def validate(self) -> None:
        self.columns()

    def columns(self) -> ColumnMap | None:
        """The column map of ``--map``; it replaces format detection, so it excludes ``--format``."""
        resolve_format(self.format)
        return column_map(self.map, self.format)


def expand_inputs(patterns: list[str], origin: dict[str, str] | None = None) -> list[Path]:
    """The input files; ``origin`` (when given) gets the glob pattern that matched each matched file."""
    paths: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matched = sorted(glob.glob(pattern))
            if not matched:
                raise UserError(f"{pattern}: no file matches")
            paths += [Path(m) for m in matched]
            if origin is not None:
                origin.update((m, pattern) for m in matched)
        else:
            paths.append(Path(pattern))
    return paths


def check_outputs(cfg: ConvertConfig, inputs: list[Path], origin: dict[str, str]) -> Path | None:
    """Check the output and rejects paths before anything is read or written; the rejects path.

    Refused: an output or rejects file that cannot be written (see :mod:`instructglm.paths`), or
    that is one of the inputs (also when a glob matched it, e.g. ``g/*.jsonl -o g/all.jsonl`` run twice).
    """
    out = output_file(cfg.output, "--output")
    rej_path = rejects_path(cfg.output) if cfg.on_error == "skip" else None
    if rej_path is not None:
        if out.stream:
            raise UserError(f"--output {cfg.output}: not a regular file, so there is no place for its rejects "
                            f"file ({rej_path}) that --on-error skip writes; give a file name for the output")
        output_file(rej_path, "rejects file")
    refuse_inputs([("--output", cfg.output), *([("rejects file", rej_path)] if rej_path else [])], inputs, origin)
    return rej_path


def rejects_path(output: str | Path) -> Path:
    """``OUT.rejects.jsonl`` next to the output (``train.jsonl`` -> ``train.rejects.jsonl``)."""
    out = Path(output)
    if out.suffix in (".jsonl", ".json"):
        return out.with_name(out.stem + ".rejects.jsonl")
    return out.with_name(out.name + ".rejects.jsonl")


def convert_files(cfg: ConvertConfig) -> dict:
    """Convert every input file to one canonical JSONL file (written atomically).

    Returns ``records`` (written), ``converted``, ``rejected``, ``duplicates`` (removed by ``dedup``),
    ``files`` (records converted per file), ``formats`` (format per file), ``output`` and
    ``rejects`` (the rejects file with ``on_error="skip"``, else ``None``).
    """
    columns = cfg.columns()
    if cfg.on_error not in ("fail", "skip"):
        raise UserError(f"--on-error {cfg.on_error}: expected fail or skip")
    origin: dict[str, str] = {}
    paths = expand_inputs(cfg.inputs, origin)
    rej_path = check_outputs(cfg, paths, origin)
    # chosen/rejected or KTO data (detected, or named by --map): pref_files.py
    if (columns.preference if columns is not None else preference_inputs(paths, cfg.format)):
        return convert_preference_files(cfg, paths, rej_path)

    def records_of(path: Path, on_reject):
        fmt, items = open_dataset(path, cfg.format, columns=columns)
        return fmt.name, (conv.to_json() for conv in convert_items(path, fmt, items, on_reject))

    return write_converted(cfg.output, paths, rej_path, records_of, ("messages",) if cfg.dedup else None)
