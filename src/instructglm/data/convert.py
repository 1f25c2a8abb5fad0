"""``convert``: dataset files in a supported format -> canonical JSONL.

Each format is a function ``record -> messages`` registered in ``FORMATS`` with a detector.
Malformed records are reported as ``FILE:LINE: reason``.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from instructglm.config import opt
from instructglm.data.records import (RecordError, read_records, user_message, validate_messages,
                                      write_jsonl)
from instructglm.errors import UserError, where

log = logging.getLogger(__name__)


def _text(rec: dict, key: str, required: bool = True) -> str:
    value = rec.get(key)
    if value is None:
        if required:
            raise RecordError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RecordError(f"field '{key}' must be text, got {type(value).__name__}")
    return value


def alpaca_to_messages(rec: dict) -> list[dict]:
    """Alpaca: ``instruction``, optional ``input``, ``output``, optional ``system`` and
    ``history`` (a list of ``[user, assistant]`` pairs before this turn)."""
    instruction, input_text, output = _text(rec, "instruction"), _text(rec, "input", False), _text(rec, "output")
    if not instruction.strip() and not input_text.strip():
        raise RecordError("empty 'instruction' and 'input'")
    if not output.strip():
        raise RecordError("empty 'output'")
    messages: list[dict] = []
    system = _text(rec, "system", False)
    if system:
        messages.append({"role": "system", "content": system})
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise RecordError("field 'history' must be a list of [user, assistant] pairs")
    for i, turn in enumerate(history):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise RecordError(f"history[{i}] must be a [user, assistant] pair of texts")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    if instruction.strip():
        messages.append(user_message(instruction, input_text))
    else:
        messages.append(user_message(input_text))
    messages.append({"role": "assistant", "content": output})
    return messages


def canonical_to_messages(rec: dict) -> list[dict]:
    return rec["messages"]


@dataclass(frozen=True)
class Format:
    name: str
    to_messages: Callable[[dict], list[dict]]
    detect: Callable[[dict], bool]
    fields: tuple[str, ...]  # the fields the reader consumes; all others are kept as metadata


FORMATS: dict[str, Format] = {
    "canonical": Format("canonical", canonical_to_messages,
                        lambda r: isinstance(r.get("messages"), list), ("messages",)),
    "alpaca": Format("alpaca", alpaca_to_messages,
                     lambda r: "instruction" in r and "output" in r,
                     ("instruction", "input", "output", "system", "history")),
}


def detect_format(path: Path, samples: list[dict]) -> Format:
    """The format that matches most of the first records (a malformed record among them is then
    reported by the reader with its line, instead of failing detection)."""
    votes = {name: sum(isinstance(s, dict) and fmt.detect(s) for s in samples) for name, fmt in FORMATS.items()}
    best = max(votes, key=votes.get) if votes else None
    if best and votes[best] > 0:
        return FORMATS[best]
    keys = sorted(samples[0]) if samples and isinstance(samples[0], dict) else []
    raise UserError(f"{path}: cannot detect the dataset format (first record's keys: {keys}); "
                    f"known formats: {', '.join(FORMATS)}; use --format NAME")


@dataclass
class ConvertConfig:
    inputs: list[str] = opt(help="input files (JSON array or JSONL) or glob patterns")
    output: str = opt(help="output canonical JSONL file", aliases=("-o",))
    format: str = opt("auto", help=f"input format: auto or one of {', '.join(FORMATS)}")


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


def iter_converted(path: Path, fmt_name: str = "auto"):
    """Yield canonical records from one file; raise UserError at the first malformed record."""
    records = read_records(path)
    fmt = None if fmt_name == "auto" else FORMATS.get(fmt_name)
    if fmt is None and fmt_name != "auto":
        raise UserError(f"--format {fmt_name}: unknown format; known: auto, {', '.join(FORMATS)}")
    buffered: list[tuple[int, Any]] = []
    if fmt is None:
        for item in records:
            buffered.append(item)
            if len(buffered) >= 8:
                break
        fmt = detect_format(path, [r for _, r in buffered])
        log.info("%s: detected format '%s'", path, fmt.name)

    def all_records():
        yield from buffered
        yield from records

    for index, (line, rec) in enumerate(all_records()):
        try:
            if not isinstance(rec, dict):
                raise RecordError(f"expected a JSON object, got {type(rec).__name__}")
            messages = validate_messages(fmt.to_messages(rec))
        except RecordError as e:
            raise UserError(f"{where(path, line)}: {e}") from None
        out: dict[str, Any] = {"messages": messages}
        meta = {k: v for k, v in rec.items() if k not in fmt.fields}
        out.update(meta)
        out.setdefault("source", path.name)
        out.setdefault("index", index)
        yield out


def convert_files(cfg: ConvertConfig) -> dict:
    """Convert every input file to one canonical JSONL file; return counts per file."""
    paths = expand_inputs(cfg.inputs)
    counts: dict[str, int] = {}

    def all_files():
        for path in paths:
            count = 0
            for rec in iter_converted(path, cfg.format):
                count += 1
                yield rec
            counts[str(path)] = count

    total = write_jsonl(cfg.output, all_files())
    return {"records": total, "files": counts, "output": cfg.output}
