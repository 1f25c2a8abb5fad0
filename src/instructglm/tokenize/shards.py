"""The work of ``tokenize``: byte ranges of the input -> Arrow shards -> one ``datasets`` directory.

The input is split at line boundaries into one byte range per worker process; each worker reads
its range, checks every record, renders and encodes the rows in batches, applies the length
policy and writes an Arrow stream shard. Length statistics are histograms, so memory stays flat.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from instructglm.constants import IGNORE_INDEX
from instructglm.convert.sources import BadInput, parse_line
from instructglm.errors import UserError
from instructglm.record import Conversation, RecordError
from instructglm.templates import Template
from instructglm.tokenize.encode import SegmentEncoder, apply_length_policy, opening_length

if TYPE_CHECKING:
    from instructglm.tokenize.tokenize import TokenizeConfig

try:  # orjson parses JSON lines about 3x faster than the standard library; optional
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads

_BOM = b"\xef\xbb\xbf"


class LineError(Exception):
    """A record problem at a line counted from the start of a worker's byte range."""

    def __init__(self, line: int, message: str):
        super().__init__(line, message)
        self.line, self.message = line, message


# What the workers share, set by the parent before it forks them (fork copies it, nothing is
# pickled): cfg, template, encoder, and the progress counter.
WORKER_STATE: dict = {}


def split_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """``parts`` (or fewer) byte ranges covering the file, each starting at the start of a line."""
    size = path.stat().st_size
    bounds = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            f.seek(max(bounds[-1], size * i // parts))
            if f.tell() > 0:
                f.seek(f.tell() - 1)
                f.readline()  # to the start of the next line
            pos = f.tell()
            if bounds[-1] < pos < size:
                bounds.append(pos)
    bounds.append(size)
    return list(zip(bounds[:-1], bounds[1:]))


def count_lines_before(path: Path, offset: int) -> int:
    n = 0
    with open(path, "rb") as f:
        while offset > 0:
            chunk = f.read(min(offset, 16 << 20))
            if not chunk:
                break
            n += chunk.count(b"\n")
            offset -= len(chunk)
    return n


def is_json_array(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4096).lstrip(_BOM).lstrip()[:1] == b"["


def _parse_line(raw: bytes, line: int) -> Conversation | None:
    """The checked conversation on one line; ``None`` for a blank line. Parsing (and what is a bad
    line) is :func:`instructglm.convert.sources.parse_line`'s, with orjson as the fast path."""
    value = parse_line(raw, _loads)
    if value is None:
        return None
    if isinstance(value, BadInput):
        raise LineError(line, value.reason)
    try:
        return Conversation.from_json(value)
    except RecordError as e:
        raise LineError(line, str(e)) from None


def read_range(path: Path, start: int, end: int, progress: Callable[[int], None]) -> Iterator[tuple[int, Conversation]]:
    """``(local_line, conversation)`` for the lines in ``[start, end)``; bytes read go to ``progress``."""
    done = 0
    with open(path, "rb") as f:
        f.seek(start)
        pos, line = start, 0
        while pos < end:
            raw = f.readline()
            if not raw:
                break
            pos += len(raw)
            line += 1
            done += len(raw)
            if done >= 1 << 20:
                progress(done)
                done = 0
            if line == 1 and start == 0:
                raw = raw.removeprefix(_BOM)
            conv = _parse_line(raw, line)
            if conv is not None:
                yield line, conv
    progress(done)


# --------------------------------------------------------------------------- length statistics


def add_to_histogram(hist, lengths):
    import numpy as np

    if not lengths:
        return hist
    counts = np.bincount(np.asarray(lengths, dtype=np.int64))
    if len(counts) > len(hist):
        counts[:len(hist)] += hist
        return counts
    hist[:len(counts)] += counts
    return hist


def merge_histograms(a, b):
    if len(a) < len(b):
        a, b = b, a
    a = a.copy()
    a[:len(b)] += b
    return a


def histogram_percentiles(hist) -> dict:
    import numpy as np

    hist = np.asarray(hist, dtype=np.int64)
    total = int(hist.sum())
    if not total:
        return {}
    cum = np.cumsum(hist)

    def at(rank: int) -> int:
        return int(np.searchsorted(cum, rank + 1))

    def pct(p):
        return at(min(total - 1, int(round(p / 100 * (total - 1)))))

    mean = float((np.arange(len(hist)) * hist).sum()) / total
    return {"min": at(0), "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": at(total - 1),
            "mean": round(mean, 1)}


# --------------------------------------------------------------------------- one worker's range


class _RangeTokenizer:
    """Turns batches of one byte range's conversations into rows of a shard, counting what happened."""

    def __init__(self, cfg: TokenizeConfig, template: Template, encoder: SegmentEncoder):
        import numpy as np

        self.cfg, self.template, self.encoder = cfg, template, encoder
        self.stats = {"rows_in": 0, "rows_out": 0, "rows_skipped": 0, "rows_truncated_prompt": 0,
                      "rows_truncated_response": 0, "trained_tokens": 0}
        self.before = np.zeros(0, dtype=np.int64)
        self.after = np.zeros(0, dtype=np.int64)
        self.opening_cache: dict = {}

    def rows(self, batch: list[tuple[int, Conversation]]) -> tuple[list[list[int]], list[list[int]]]:
        cfg, stats = self.cfg, self.stats
        rendered = []
        for line, conv in batch:
            try:
                rendered.append(self.template.render(conv.messages))
            except UserError as e:
                raise LineError(line, str(e)) from None
        ids_rows, label_rows, lens_before, lens_after = [], [], [], []
        for (line, _), (ids, labels, resp, close) in zip(batch, self.encoder.encode_rows(rendered)):
            stats["rows_in"] += 1
            lens_before.append(len(ids))
            tail = 0
            if len(ids) > cfg.max_seq_length and cfg.overlength == "truncate":
                tail = opening_length(self.encoder.tokenizer, self.template, ids[:resp], self.opening_cache)
            ids, labels, action = apply_length_policy(ids, labels, cfg.max_seq_length, cfg.overlength,
                                                      resp, close, tail)
            if action == "overlong":
                raise LineError(line, f"{lens_before[-1]} tokens, longer than max_seq_length="
                                      f"{cfg.max_seq_length} (--overlength fail)")
            if action == "skipped":
                stats["rows_skipped"] += 1
                continue
            if action != "kept":
                stats["rows_" + action] += 1
            if cfg.train_on_prompt:
                labels = list(ids)
            stats["rows_out"] += 1
            stats["trained_tokens"] += len(labels) - labels.count(IGNORE_INDEX)
            lens_after.append(len(ids))
            ids_rows.append(ids)
            label_rows.append(labels)
        self.before = add_to_histogram(self.before, lens_before)
        self.after = add_to_histogram(self.after, lens_after)
        return ids_rows, label_rows


def tokenize_range(start: int, end: int, shard: str, progress: Callable[[int], None]) -> dict:
    """Tokenize one byte range of the input into an Arrow stream file ``shard``.

    Returns the range's ``stats``, length histograms ``before``/``after`` the length policy, and
    ``error``: ``(local line, message)`` of the first bad record, or ``None``.
    """
    import pyarrow as pa

    cfg: TokenizeConfig = WORKER_STATE["cfg"]
    work = _RangeTokenizer(cfg, WORKER_STATE["template"], WORKER_STATE["encoder"])
    list_type = pa.list_(pa.int32())
    schema = pa.schema([("input_ids", list_type), ("labels", list_type)])

    def write(writer, batch) -> None:
        ids_rows, label_rows = work.rows(batch)
        if ids_rows:
            writer.write_batch(pa.record_batch([pa.array(ids_rows, type=list_type),
                                                pa.array(label_rows, type=list_type)], schema=schema))

    error = None
    with pa.OSFile(shard, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        batch = []
        try:
            for item in read_range(Path(cfg.input), start, end, progress):
                batch.append(item)
                if len(batch) >= cfg.batch_size:
                    write(writer, batch)
                    batch = []
            if batch:
                write(writer, batch)
        except LineError as e:
            error = (e.line, e.message)
    return {"stats": work.stats, "before": work.before, "after": work.after, "error": error}


def run_worker(task: tuple[int, int, str]) -> dict:
    """:func:`tokenize_range` in a forked worker process, its progress added to the shared counter."""
    start, end, shard = task
    counter = WORKER_STATE["counter"]

    def progress(n):
        with counter.get_lock():
            counter.value += n

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    return tokenize_range(start, end, shard, progress)


# --------------------------------------------------------------------------- the dataset directory


def shards_as_dataset(folder: Path, shards: list[str], rows: int) -> None:
    """Make ``folder`` a dataset ``datasets.load_from_disk`` opens, from the workers' Arrow shards.

    The shards already are Arrow stream files, the format ``save_to_disk`` writes, so they are
    renamed into place with the two small JSON files that describe them, instead of being read back
    and copied (which, at 2M rows, touched every page of the data again). The result is opened once
    to check it; should that fail, the shards are copied with ``save_to_disk`` after all.
    """
    import datasets

    full = [s for s in shards if datasets.Dataset.from_file(s).num_rows]
    for s in set(shards) - set(full):
        os.unlink(s)
    names = [f"data-{i:05d}-of-{len(full):05d}.arrow" for i in range(len(full))]
    for s, name in zip(full, names):
        os.replace(s, folder / name)
    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                  "labels": datasets.List(datasets.Value("int32"))})
    info = {"citation": "", "description": "", "features": features.to_dict(), "homepage": "", "license": ""}
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": os.urandom(8).hex(),
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (folder / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    try:
        ds = datasets.load_from_disk(str(folder))
        ok = ds.num_rows == rows and ds.column_names == ["input_ids", "labels"]
    except Exception:  # noqa: BLE001  (any failure: take the slow, library-written path)
        ok = False
    if ok:
        return
    parts = [datasets.Dataset.from_file(str(folder / n)) for n in names]
    ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    ds.save_to_disk(str(folder / "data"))
    del ds, parts
    for n in names + ["dataset_info.json", "state.json"]:
        os.unlink(folder / n)
    for item in (folder / "data").iterdir():
        os.replace(item, folder / item.name)
    (folder / "data").rmdir()
