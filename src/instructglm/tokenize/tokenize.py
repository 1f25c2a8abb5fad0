"""``tokenize``: canonical JSONL + template + tokenizer -> a saved ``datasets`` dataset.

Each row gets ``input_ids`` and ``labels``; labels are -100 on prompt tokens and equal the ids on
assistant responses and the closing (EOS or end-of-turn) of each of them; with
``--train-on-prompt`` every token is trained. The output directory also holds ``stats.json``
(row counts, what the length policy did, token-length percentiles before and after) and
``manifest.json`` (template, tokenizer fingerprint, max length, policy, source sha256), which
``train`` checks against the model it trains.

Rows longer than ``--max-seq-length`` (``--overlength``):

* ``skip`` (default; the seeds' ``--skip_overlength``): the row is left out.
* ``fail``: stop with an error naming ``FILE:LINE`` of the first such record.
* ``truncate``: the last response survives. The prompt before it is cut in the middle: its start
  (BOS, system text) and its end (the template's response opening, e.g. ``### Response:\\n``) are
  kept, and earlier turns left in it become masked context. When even the response does not fit
  next to a prompt of half the length, the response is cut instead, keeping its closing
  (EOS/end-of-turn), so a truncated row still teaches the model to stop and always has trained
  tokens.

Running again with the same input (sha256), tokenizer, template and options finds the output up
to date and returns at once (``--force`` redoes it). The input is read in byte ranges split at
line boundaries, one range per worker process (``--num-proc``, default all cores; small files use
fewer); each worker writes an Arrow shard and the shards are joined in input order, so the rows
are identical to a single-process run. Memory stays flat: rows are written in batches and the
length statistics are histograms.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from instructglm.config import opt
from instructglm.files import file_sha256
from instructglm.templates import Segment, Template, get_template
from instructglm.errors import UserError, where

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
MANIFEST = "manifest.json"
STATS = "stats.json"
FORMAT = "instructglm.tokenized/2"
MIN_BYTES_PER_PROC = 4 << 20  # a worker process only pays off for a few MB of input


@dataclass
class TokenizeConfig:
    input: str = opt(help="canonical JSONL file (from 'instructglm convert')", aliases=("--jsonl_path", "--data_path"))
    output: str = opt(help="output dataset directory", aliases=("-o", "--save_path"))
    model: str = opt("gemma3-270m", help="model whose tokenizer to use")
    template: str = opt("alpaca", help="prompt template: alpaca, chatglm, model (the tokenizer's chat template) "
                        "or a .yaml/.json template file")
    max_seq_length: int = opt(512, help="maximum tokens per row", aliases=("--max_seq_length",))
    overlength: Literal["skip", "truncate", "fail"] = opt("skip", help="what to do with rows longer than "
                                                          "max_seq_length")
    skip_overlength: bool = opt(False, help="the seeds' flag: same as --overlength skip",
                                aliases=("--skip_overlength",))
    train_on_prompt: bool = opt(False, help="train on every token (no prompt masking)",
                                aliases=("--train_on_prompt",))
    num_proc: int | None = opt(None, help="worker processes (default: all cores)", aliases=("--num_proc",))
    batch_size: int = opt(1000, help="rows per tokenizer call")
    show: int = opt(0, help="print N tokenized examples with the trained span marked")
    force: bool = opt(False, help="tokenize again even if the output is up to date")

    def validate(self) -> None:
        if self.max_seq_length < 8:
            raise UserError(f"max_seq_length: must be at least 8, got {self.max_seq_length}")
        if self.skip_overlength:
            if self.overlength not in ("skip",):
                raise UserError(f"--skip_overlength contradicts --overlength {self.overlength}")
        if self.num_proc is not None and self.num_proc < 1:
            raise UserError(f"num_proc: must be at least 1, got {self.num_proc}")
        if self.batch_size < 1:
            raise UserError(f"batch_size: must be at least 1, got {self.batch_size}")
        if self.show < 0:
            raise UserError(f"show: must be 0 or more, got {self.show}")


class SegmentEncoder:
    """Encodes template segments into ``(input_ids, labels)`` with one batched tokenizer call."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise UserError("the tokenizer has no EOS token; cannot mark where a response ends")
        probe = tokenizer("a").input_ids
        bos = tokenizer.bos_token_id
        self.prefix = [bos] if bos is not None and probe and probe[0] == bos else []

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens. Fast tokenizers are called directly (the Rust
        ``encode_batch``): transformers' wrapper would build offsets, masks and dicts nobody reads here."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # encode_batch_fast (tokenizers >= 0.20) skips the offsets: same ids
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            return [e.ids for e in encode(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def encode(self, conversations: list[list[Segment]]) -> list[tuple[list[int], list[int]]]:
        return [(ids, labels) for ids, labels, _, _ in self.encode_rows(conversations)]

    def encode_rows(self, conversations: list[list[Segment]]) -> list[tuple[list[int], list[int], int, int]]:
        """``(ids, labels, response_start, closing_length)`` per conversation: where the last
        response starts and how many tokens at its end close it (EOS or end-of-turn)."""
        texts = [seg.text for segs in conversations for seg in segs if seg.text]
        encoded = iter(self.encode_texts(texts)) if texts else iter(())
        out = []
        for segs in conversations:
            ids, labels = list(self.prefix), [IGNORE_INDEX] * len(self.prefix)
            start, close, prev_train = len(ids), 0, False
            for seg in segs:
                piece = next(encoded) if seg.text else []
                if seg.train:
                    if seg.eos:
                        piece = piece + [self.eos]
                    if not prev_train:
                        start = len(ids)
                        close = 1 if seg.eos else 0
                    else:
                        close = len(piece)  # a closing segment (end-of-turn text)
                    labels += piece
                else:
                    labels += [IGNORE_INDEX] * len(piece)
                ids += piece
                prev_train = seg.train
            out.append((ids, labels, start, close))
        return out


def apply_length_policy(ids: list[int], labels: list[int], max_len: int, policy: str, eos: int,
                        response_start: int | None = None, closing: int = 1, keep_tail: int = 0):
    """Return ``(ids, labels, action)``; action is ``kept``, ``skipped``, ``overlong`` (policy
    ``fail``), ``truncated_prompt`` or ``truncated_response``.

    ``response_start`` is where the last response starts (default: the last run of trained labels),
    ``closing`` how many tokens at the end close it (kept on truncation), ``keep_tail`` how many
    tokens at the end of the prompt open the response (kept when the prompt is cut in the middle).
    """
    n = len(ids)
    if n <= max_len:
        return ids, labels, "kept"
    if policy == "skip":
        return None, None, "skipped"
    if policy == "fail":
        return None, None, "overlong"
    r = response_start
    if r is None:
        r = n
        while r > 0 and labels[r - 1] == IGNORE_INDEX:
            r -= 1
        while r > 0 and labels[r - 1] != IGNORE_INDEX:
            r -= 1
    closing = max(0, min(closing, n - r))
    prompt_len, resp_len = r, n - r
    if prompt_len == 0 or resp_len == 0:
        return None, None, "skipped"
    keep_tail = max(0, min(keep_tail, prompt_len - 1))

    def cut_prompt(budget: int) -> tuple[list[int], list[int]]:
        if budget >= prompt_len:
            return ids[:r], labels[:r]
        tail = min(keep_tail, budget - 1)
        head = budget - tail
        # the prompt lost its middle: earlier turns left in it are context, not targets
        return ids[:head] + ids[r - tail:r], [IGNORE_INDEX] * budget

    if resp_len <= max_len - min(prompt_len, keep_tail + 1):
        p_ids, p_labels = cut_prompt(max_len - resp_len)
        new_ids, new_labels, action = p_ids + ids[r:], p_labels + labels[r:], "truncated_prompt"
    else:
        budget = min(prompt_len, max_len // 2)
        room = max_len - budget - closing
        if room < 1:
            budget, room = max_len - closing - 1, 1
        p_ids, p_labels = cut_prompt(budget)
        body = slice(r, r + room)
        new_ids = p_ids + ids[body] + ids[n - closing:]
        new_labels = p_labels + labels[body] + labels[n - closing:]
        action = "truncated_response"
    if all(x == IGNORE_INDEX for x in new_labels):
        return None, None, "skipped"
    return new_ids, new_labels, action


# ---------------------------------------------------------------------------------------------
# statistics


def _add_hist(hist, lengths):
    import numpy as np

    if not lengths:
        return hist
    counts = np.bincount(np.asarray(lengths, dtype=np.int64))
    if len(counts) > len(hist):
        counts[:len(hist)] += hist
        return counts
    hist[:len(counts)] += counts
    return hist


def _merge_hist(a, b):
    if len(a) < len(b):
        a, b = b, a
    a = a.copy()
    a[:len(b)] += b
    return a


def _hist_percentiles(hist) -> dict:
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


# ---------------------------------------------------------------------------------------------
# workers


class _LineError(Exception):
    """A record problem at a line counted from the start of a worker's byte range."""

    def __init__(self, line: int, message: str):
        super().__init__(line, message)
        self.line, self.message = line, message


_STATE: dict = {}  # set by the parent before forking workers: template, encoder, cfg, tokenizer


def _split_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
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


try:  # orjson parses JSON lines about 3x faster than the standard library; optional
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads


def _read_range(path: Path, start: int, end: int, progress):
    """Yield ``(local_line, record)`` for the lines in ``[start, end)``; validated canonical records."""
    from instructglm.record import Conversation, RecordError

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
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise _LineError(line, f"not valid UTF-8 (byte {e.start})") from None
            if not text:
                continue
            try:
                rec = _loads(text)
            except ValueError:
                try:  # the standard library decides (it accepts NaN, lone surrogates) and names the column
                    rec = json.loads(text)
                except json.JSONDecodeError as e:
                    raise _LineError(line, f"invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(rec, dict) or "messages" not in rec:
                raise _LineError(line, "not a canonical record (no 'messages'); run 'instructglm convert' first")
            try:
                Conversation.from_messages(rec["messages"])
            except RecordError as e:
                raise _LineError(line, str(e)) from None
            yield line, rec
    progress(done)


def _opening_tokens(tokenizer, template: Template, prompt_ids: list[int], cache: dict) -> int:
    """How many tokens at the end of ``prompt_ids`` spell the template's response opening."""
    opening = template.opening
    if not opening or not prompt_ids:
        return 0
    if "guess" not in cache:
        cache["guess"] = max(1, len(tokenizer(opening, add_special_tokens=False).input_ids))
    k = min(cache["guess"], len(prompt_ids))
    while k < len(prompt_ids) and opening not in tokenizer.decode(prompt_ids[-k:]):
        k += 1
        if k > cache["guess"] + 8:
            return cache["guess"]
    return k


def _tokenize_range(start: int, end: int, shard: str, progress) -> dict:
    """Tokenize one byte range of the input into an Arrow stream file ``shard``."""
    import numpy as np
    import pyarrow as pa

    cfg: TokenizeConfig = _STATE["cfg"]
    template: Template = _STATE["template"]
    encoder: SegmentEncoder = _STATE["encoder"]
    path = Path(cfg.input)
    stats = {"rows_in": 0, "rows_out": 0, "rows_skipped": 0, "rows_truncated_prompt": 0,
             "rows_truncated_response": 0, "trained_tokens": 0}
    before = np.zeros(0, dtype=np.int64)
    after = np.zeros(0, dtype=np.int64)
    list_type = pa.list_(pa.int32())
    schema = pa.schema([("input_ids", list_type), ("labels", list_type)])
    cache: dict = {}

    def flush(writer, ids_rows, label_rows):
        writer.write_batch(pa.record_batch([pa.array(ids_rows, type=list_type),
                                            pa.array(label_rows, type=list_type)], schema=schema))

    def handle(batch, writer):
        nonlocal before, after
        convs = []
        for line, rec in batch:
            try:
                convs.append(template.render(rec["messages"]))
            except UserError as e:
                raise _LineError(line, str(e)) from None
        ids_rows, label_rows, lens_before, lens_after = [], [], [], []
        for (line, _), (ids, labels, resp, close) in zip(batch, encoder.encode_rows(convs)):
            stats["rows_in"] += 1
            lens_before.append(len(ids))
            tail = 0
            if len(ids) > cfg.max_seq_length and cfg.overlength == "truncate":
                tail = _opening_tokens(encoder.tokenizer, template, ids[:resp], cache)
            ids, labels, action = apply_length_policy(ids, labels, cfg.max_seq_length, cfg.overlength,
                                                      encoder.eos, resp, close, tail)
            if action == "overlong":
                raise _LineError(line, f"{lens_before[-1]} tokens, longer than max_seq_length="
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
        before = _add_hist(before, lens_before)
        after = _add_hist(after, lens_after)
        if ids_rows:
            flush(writer, ids_rows, label_rows)

    error = None
    with pa.OSFile(shard, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        batch = []
        try:
            for item in _read_range(path, start, end, progress):
                batch.append(item)
                if len(batch) >= cfg.batch_size:
                    handle(batch, writer)
                    batch = []
            if batch:
                handle(batch, writer)
        except _LineError as e:
            error = (e.line, e.message)
    return {"stats": stats, "before": before, "after": after, "error": error}


def _run_worker(task) -> dict:
    start, end, shard = task
    counter = _STATE["counter"]

    def progress(n):
        with counter.get_lock():
            counter.value += n

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    return _tokenize_range(start, end, shard, progress)


# ---------------------------------------------------------------------------------------------
# manifest and reuse


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "added_tokens.json")


def _tokenizer_files(model_path: str) -> dict | None:
    """Size and mtime of the tokenizer files of a local model directory (None for a hub id)."""
    folder = Path(model_path)
    if not folder.is_dir():
        return None
    out = {}
    for name in _TOKENIZER_FILES:
        p = folder / name
        if p.is_file():
            st = p.stat()
            out[name] = [st.st_size, st.st_mtime_ns]
    return {"path": str(folder.resolve()), "files": out}


def _settings(cfg: TokenizeConfig) -> dict:
    return {"max_seq_length": cfg.max_seq_length, "overlength": cfg.overlength,
            "train_on_prompt": cfg.train_on_prompt}


def _is_up_to_date(out: Path, cfg: TokenizeConfig, source_sha: str, template_name: str | None,
                   tok_files: dict | None, tokenizer) -> bool:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not ((out / STATS).is_file() and (out / "state.json").is_file()):
        return False
    if manifest.get("format") != FORMAT or manifest.get("settings") != _settings(cfg):
        return False
    if [s.get("sha256") for s in manifest.get("sources", [])] != [source_sha]:
        return False
    if template_name is not None and manifest.get("template") != template_name:
        return False
    if tokenizer is not None:
        from instructglm.models.loading import tokenizer_fingerprint

        if manifest.get("tokenizer") != tokenizer_fingerprint(tokenizer):
            return False
        if cfg.template == "model":
            return manifest.get("template_sha256") == get_template("model", tokenizer).manifest()["template_sha256"]
        return True
    # without a loaded tokenizer: the same local tokenizer files, untouched since
    return tok_files is not None and manifest.get("tokenizer_files") == tok_files


def read_manifest(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{dataset_dir}: not a tokenized dataset (no {MANIFEST}); run 'instructglm tokenize' first")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# the command


def _count_lines_before(path: Path, offset: int) -> int:
    n = 0
    with open(path, "rb") as f:
        while offset > 0:
            chunk = f.read(min(offset, 16 << 20))
            if not chunk:
                break
            n += chunk.count(b"\n")
            offset -= len(chunk)
    return n


def format_example(tokenizer, ids: list[int], labels: list[int], color: bool = False) -> str:
    """The decoded row with its trained spans marked: ``[[...]]``, or green when ``color``."""
    parts, run, trained = [], [], None
    for tok, lab in zip(ids, labels):
        t = lab != IGNORE_INDEX
        if trained is not None and t != trained:
            parts.append((trained, run))
            run = []
        trained = t
        run.append(tok)
    if run:
        parts.append((trained, run))
    out = []
    for t, run in parts:
        text = tokenizer.decode(run, skip_special_tokens=False)
        if t:
            out.append(f"\x1b[1;32m{text}\x1b[0m" if color else f"[[{text}]]")
        else:
            out.append(text)
    return "".join(out)


def _examples(out: Path, tokenizer, n: int, color: bool) -> list[str]:
    import datasets

    ds = datasets.load_from_disk(str(out))
    shown = []
    for i in range(min(n, len(ds))):
        row = ds[i]
        trained = sum(x != IGNORE_INDEX for x in row["labels"])
        head = f"--- example {i + 1}: {len(row['input_ids'])} tokens, {trained} trained " \
               f"({'green' if color else '[[marked]]'}) ---"
        shown.append(head + "\n" + format_example(tokenizer, row["input_ids"], row["labels"], color))
    return shown


def tokenize_file(cfg: TokenizeConfig, tokenizer=None, color: bool = False) -> dict:
    """Tokenize ``cfg.input`` into the dataset directory ``cfg.output``; return the stats.

    The result also has ``up_to_date`` (True when an existing output was reused) and, with
    ``cfg.show``, ``examples`` (decoded rows with the trained spans marked).
    """
    from instructglm.models.loading import resolve_model, tokenizer_fingerprint

    if cfg.skip_overlength:
        cfg.overlength = "skip"
    src = Path(cfg.input)
    if src.is_dir():
        raise UserError(f"{src}: is a directory, expected a canonical JSONL file")
    if not src.is_file():
        raise UserError(f"{src}: file not found")
    out = Path(cfg.output)
    if out.exists() and not (out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir()))):
        raise UserError(f"{out}: exists and is not a tokenized dataset; choose another output directory")

    source_sha = file_sha256(src)
    template_name = None if cfg.template == "model" else get_template(cfg.template).name
    model_path = resolve_model(cfg.model) if tokenizer is None else None
    tok_files = _tokenizer_files(model_path) if model_path else None

    def load():
        from instructglm.models.loading import load_tokenizer

        return tokenizer if tokenizer is not None else load_tokenizer(model_path)

    if not cfg.force and _is_up_to_date(out, cfg, source_sha, template_name, tok_files, tokenizer):
        result = json.loads((out / STATS).read_text())
        result["up_to_date"] = True
        log.info("%s: up to date (same input, tokenizer, template and options); --force to redo", out)
        if cfg.show:
            result["examples"] = _examples(out, load(), cfg.show, color)
        return result

    tokenizer = load()
    template = get_template(cfg.template, tokenizer)
    encoder = SegmentEncoder(tokenizer)
    tmplinfo = template.manifest()  # also checks a model template (chat template present)
    manifest = {
        "format": FORMAT,
        **tmplinfo,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "tokenizer_files": tok_files,
        "model": cfg.model,
        "settings": _settings(cfg),
        "config": asdict(cfg),
        "sources": [{"path": str(cfg.input), "sha256": source_sha}],
    }
    stats = _tokenize_into(cfg, src, out, template, encoder, manifest)
    result = dict(stats, up_to_date=False)
    if cfg.show:
        result["examples"] = _examples(out, tokenizer, cfg.show, color)
    return result


def _shards_as_dataset(folder: Path, shards: list[str], rows: int) -> None:
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


def _tokenize_into(cfg: TokenizeConfig, src: Path, out: Path, template: Template, encoder: SegmentEncoder,
                   manifest: dict) -> dict:
    import multiprocessing as mp

    import datasets
    import numpy as np
    from tqdm.auto import tqdm

    datasets.disable_progress_bars()
    started = time.perf_counter()
    size = src.stat().st_size
    with open(src, "rb") as f:
        is_array = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()[:1] == b"["
    if is_array:
        raise UserError(f"{src}: a JSON array, not canonical JSONL; run 'instructglm convert' first")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    procs = cfg.num_proc or cores
    if cfg.num_proc is None:
        procs = min(procs, max(1, size // MIN_BYTES_PER_PROC))
    if "fork" not in mp.get_all_start_methods():
        procs = 1
    ranges = _split_ranges(src, max(1, procs))

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise UserError(f"{out}: cannot create the output directory: {e.strerror}") from None
    bar = tqdm(total=size, desc="tokenize", unit="B", unit_scale=True, disable=None)
    try:
        shards = [str(tmp / f"shard-{i:04d}.arrow") for i in range(len(ranges))]
        tasks = [(a, b, s) for (a, b), s in zip(ranges, shards)]
        _STATE.update(cfg=cfg, template=template, encoder=encoder)
        if len(tasks) == 1:
            results = [_tokenize_range(*tasks[0], bar.update)]
        else:
            ctx = mp.get_context("fork")
            _STATE["counter"] = ctx.Value("q", 0)
            seen = 0
            with ctx.Pool(len(tasks)) as pool:
                pending = pool.map_async(_run_worker, tasks, chunksize=1)
                while not pending.ready():
                    pending.wait(0.25)
                    now = _STATE["counter"].value
                    bar.update(now - seen)
                    seen = now
                results = pending.get()
        bar.update(max(0, size - bar.n))
        _STATE.clear()
        for (start, _), res in zip(ranges, results):
            if res["error"]:
                line, message = res["error"]
                raise UserError(f"{where(src, _count_lines_before(src, start) + line)}: {message}")
        stats = {k: sum(r["stats"][k] for r in results) for k in results[0]["stats"]}
        stats["rows_truncated"] = stats["rows_truncated_prompt"] + stats["rows_truncated_response"]
        stats["overlength"] = cfg.overlength
        stats["max_seq_length"] = cfg.max_seq_length
        stats["num_proc"] = len(tasks)
        if stats["rows_out"] == 0:
            raise UserError(f"{cfg.input}: no rows left after tokenization "
                            f"({stats['rows_skipped']} longer than max_seq_length={cfg.max_seq_length}; "
                            f"raise --max-seq-length or use --overlength truncate)")
        before = np.zeros(0, dtype=np.int64)
        after = np.zeros(0, dtype=np.int64)
        for r in results:
            before, after = _merge_hist(before, r["before"]), _merge_hist(after, r["after"])
        stats["length_before"] = _hist_percentiles(before)
        stats["length_after"] = _hist_percentiles(after)
        _shards_as_dataset(tmp, shards, stats["rows_out"])
        stats["seconds"] = round(time.perf_counter() - started, 2)
        (tmp / STATS).write_text(json.dumps(stats, indent=2) + "\n")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        bar.close()
        _STATE.clear()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return stats
