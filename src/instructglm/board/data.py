"""The Data page: an uploaded or picked file goes through ``instructglm convert`` and ``instructglm
tokenize`` (run as CLI commands, shown on the page), and what they wrote is read back: the detected
format, the counts, the rejects with their ``FILE:LINE`` reasons, the token-length statistics and a
few rows rendered with the template, the trained span marked (``tokenize --show``)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from instructglm.board.messages import BoardError, cli_error_line
from instructglm.board.runs import safe_name
from instructglm.constants import STATS
from instructglm.errors import UserError

DETECTED = re.compile(r"(?P<file>\S+?): (?:detected format|format) '(?P<format>[\w-]+)'")
WROTE = re.compile(r"wrote (?P<records>\d+) records to .* \((?P<converted>\d+) converted, (?P<rejected>\d+) "
                   r"rejected, (?P<duplicates>\d+) duplicates removed")
EXAMPLE_HEAD = re.compile(r"^--- example \d+: .*---$", re.M)
SUMMARY = re.compile(r"^(\d+ rows written to |\S.*: up to date \()", re.M)
MAX_UPLOAD = 200 * 2**20
SHOWN_REJECTS = 50
TIMEOUT_S = 1800


def run_cli(args: list[str], timeout: float = TIMEOUT_S) -> dict:
    """Run ``instructglm ARGS`` to the end: ``{"command", "code", "output"}``; a failure is a
    UserError carrying the CLI's own error line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    command = shlex.join(["instructglm", *args])
    try:
        done = subprocess.run([sys.executable, "-m", "instructglm", *args], capture_output=True, text=True,
                              env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BoardError("timeout", command=command, seconds=f"{timeout:.0f}") from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        line = cli_error_line(output)
        if line is None:
            raise BoardError("exit_status", command=command, code=done.returncode, tail=output[-2000:])
        raise UserError(line)  # the CLI's own line; the page adds what its kind of mistake means
    return {"command": command, "code": done.returncode, "output": output}


def save_upload(workdir: Path, name: str, body: bytes) -> Path:
    name = safe_name(Path(name or "").name, "file")
    if len(body) > MAX_UPLOAD:
        raise BoardError("too_large", name=name, mb=MAX_UPLOAD // 2**20)
    folder = workdir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(body)
    os.replace(tmp, path)
    return path


def marked_segments(example: str) -> list[dict]:
    """``tokenize --show``'s ``[[trained]]`` marks as segments ``{"text", "trained"}``."""
    parts, pos = [], 0
    for m in re.finditer(r"\[\[(.*?)\]\]", example, re.S):
        if m.start() > pos:
            parts.append({"text": example[pos:m.start()], "trained": False})
        parts.append({"text": m.group(1), "trained": True})
        pos = m.end()
    if pos < len(example):
        parts.append({"text": example[pos:], "trained": False})
    return parts


def _examples(output: str) -> list[dict]:
    heads = list(EXAMPLE_HEAD.finditer(output))
    shown = []
    for i, head in enumerate(heads):
        if i + 1 < len(heads):
            end = heads[i + 1].start()
        else:  # the last example ends where the summary line starts
            tail = SUMMARY.search(output, head.end())
            end = tail.start() if tail else len(output)
        body = output[head.end() + 1:end].rstrip("\n")
        shown.append({"head": head.group(0).strip("- ").replace(" ([[marked]])", ""), "segments": marked_segments(body)})
    return shown


def _rejects(path: Path) -> list[dict]:
    if not path.exists():
        return []
    found = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            found.append({"where": f"{r.get('file')}:{r.get('line')}", "reason": r.get("reason", "")})
            if len(found) >= SHOWN_REJECTS:
                break
    return found


def length_histogram(tokenized: Path, bins: int = 16) -> dict:
    """Rows per token-length bin of a tokenized dataset, read from its Arrow columns (memory-mapped,
    only the list lengths are computed)."""
    import datasets
    import numpy as np
    import pyarrow.compute as pc

    lengths = pc.list_value_length(datasets.load_from_disk(str(tokenized)).data.column("input_ids")).to_numpy()
    if not len(lengths):
        return {"edges": [], "counts": []}
    low, high = int(lengths.min()), int(lengths.max())
    width = -(-(high - low + 1) // bins)  # whole tokens per bin; bin i holds lengths edges[i] .. edges[i+1]-1
    edges = np.arange(low, high + width + 1, width)
    counts, _ = np.histogram(lengths, bins=edges)
    return {"edges": [int(e) for e in edges], "counts": [int(c) for c in counts]}


def prepare(workdir: Path, source: str, name: str, model: str, template: str, max_seq_length: int,
            show: int = 3) -> dict:
    """Convert ``source`` (a path under the work directory or any file the user names) into
    ``WORKDIR/data/NAME.jsonl`` and tokenize it into ``WORKDIR/data/NAME``."""
    src = Path(source).expanduser()
    if not src.is_file():
        raise BoardError("no_such_file", path=source)
    name = safe_name(name or src.stem.split(".")[0], "dataset")
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    canonical, tokenized = data / f"{name}.jsonl", data / name
    convert = run_cli(["convert", str(src), "-o", str(canonical), "--on-error", "skip"])
    tok_args = ["tokenize", str(canonical), "-o", str(tokenized), "--model", model, "--template", template,
                "--max-seq-length", str(max_seq_length), "--show", str(show)]
    tokenize = run_cli(tok_args)
    formats = {m.group("file"): m.group("format") for m in DETECTED.finditer(convert["output"])}
    counts = WROTE.search(convert["output"])
    stats = json.loads((tokenized / STATS).read_text(encoding="utf-8")) if (tokenized / STATS).exists() else {}
    return {"name": name, "source": str(src), "canonical": str(canonical), "dataset": str(tokenized),
            "model": model, "template": template,
            "format": formats.get(str(src)) or next(iter(formats.values()), "?"),
            "counts": {k: int(v) for k, v in counts.groupdict().items()} if counts else {},
            "rejects": _rejects(canonical.with_name(canonical.stem + ".rejects.jsonl")),
            "stats": {k: stats.get(k) for k in ("rows_in", "rows_out", "rows_skipped", "rows_truncated",
                                                  "length_before", "length_after")},
            "examples": _examples(tokenize["output"]), "histogram": length_histogram(tokenized),
            "commands": [convert["command"], tokenize["command"]],
            "output": convert["output"][-3000:] + tokenize["output"][-3000:]}
