"""``tokenize --stage pt``: plain text -> rows for continued pretraining (every token trained).

Chinese-LLaMA/Alpaca's first half: before instruction tuning, the model reads more text of the
language. The input is

* a text file (any name but ``.json``/``.jsonl``): one document per block of lines separated by
  blank lines, or one per line with ``--text-per-line``;
* JSON lines or a JSON array (``.jsonl``/``.json``): one document per record, its ``text`` field.

No template: each document becomes its tokens (after the tokenizer's BOS when it adds one) and EOS,
and ``labels`` equal ``input_ids``. A document longer than ``--max-seq-length`` is not dropped (this
is pretraining) but split into rows of at most that many tokens, each starting at the last token of
the one before: a row's first token is never a target (nothing before it in the row predicts it),
so with that one-token overlap every token after a document's first is trained exactly once.
``stats.json`` says how many documents were split into how many rows.

Training packs the rows of a micro-batch padding-free with a block-diagonal mask
(:mod:`instructglm.train.packing`), so documents never attend to each other; ``manifest.json``
records ``"stage": "pt"`` and :func:`check_dataset_stage` keeps pretraining rows and instruction
rows apart at ``train`` time.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from instructglm.convert.sources import BadInput, scan_records
from instructglm.errors import UserError, where
from instructglm.files import atomic_dir
from instructglm.tokenize import manifest as dataset_manifest
from instructglm.tokenize import shards
from instructglm.tokenize.encode import SegmentEncoder

if TYPE_CHECKING:
    from instructglm.tokenize.tokenize import TokenizeConfig

log = logging.getLogger(__name__)

STAGE = "pt"  # manifest["stage"] of a pretraining dataset
JSON_SUFFIXES = (".json", ".jsonl")
TEXT_FIELD = "text"


def is_json_input(path: Path) -> bool:
    return path.suffix.lower() in JSON_SUFFIXES


def dataset_stage(manifest: dict) -> str:
    """``pt``, ``preference`` or ``sft``: what kind of rows a tokenized dataset holds."""
    if manifest.get("stage") == STAGE:
        return STAGE
    if manifest.get("rows") == "preference":
        return "preference"
    return "sft"


_KIND = {STAGE: "plain-text pretraining rows (tokenize --stage pt)", "preference": "preference pairs",
         "sft": "instruction (SFT) rows"}


def check_dataset_stage(stage: str, manifest: dict, dataset: str | Path = "dataset") -> None:
    """UserError (one line naming ``dataset``) when ``train --stage STAGE`` is given rows of another kind:
    ``--stage pt`` needs a dataset from ``tokenize --stage pt``, every other stage refuses one."""
    kind = dataset_stage(manifest)
    if stage == STAGE and kind != STAGE:
        raise UserError(f"{dataset}: {_KIND[kind]}; --stage pt trains on plain text tokenized with "
                        f"'instructglm tokenize --stage pt'")
    if stage != STAGE and kind == STAGE:
        raise UserError(f"{dataset}: {_KIND[STAGE]}; train them with --stage pt, or tokenize instruction data "
                        f"for --stage {stage}")


def check_parts_stage(stage: str, dataset_spec: str) -> None:
    """:func:`check_dataset_stage` for every part of a ``--dataset`` value (comma-separated directories)."""
    from instructglm.train.data import dataset_parts

    for part in dataset_parts(dataset_spec):
        check_dataset_stage(stage, dataset_manifest.read_manifest(part), part)


# --------------------------------------------------------------------------- reading documents


def read_documents(path: Path, per_line: bool = False) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of every document of ``path`` (the line where it starts); a malformed record
    or undecodable line is a UserError naming ``FILE:LINE``. JSON records with empty text come back
    as ``""`` (counted, not trained)."""
    if is_json_input(path):
        if per_line:
            raise UserError(f"--text-per-line: {path} is JSON (one document per record); the flag is for text files")
        yield from _json_documents(path)
    else:
        yield from _text_documents(path, per_line)


def _json_documents(path: Path) -> Iterator[tuple[int, str]]:
    for line, rec in scan_records(path):
        if isinstance(rec, BadInput):
            raise UserError(f"{where(path, line)}: {rec.reason}")
        if not isinstance(rec, dict) or TEXT_FIELD not in rec:
            keys = ", ".join(sorted(map(str, rec))) if isinstance(rec, dict) else type(rec).__name__
            raise UserError(f"{where(path, line)}: no '{TEXT_FIELD}' field ({keys}); --stage pt reads JSON records "
                            f"with the document in '{TEXT_FIELD}', or a plain text file")
        text = rec[TEXT_FIELD]
        if not isinstance(text, str):
            raise UserError(f"{where(path, line)}: '{TEXT_FIELD}' must be a string, got {type(text).__name__}")
        yield line, text if text.strip() else ""


def _text_documents(path: Path, per_line: bool) -> Iterator[tuple[int, str]]:
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a text file")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    block: list[str] = []
    start = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise UserError(f"{where(path, lineno)}: not valid UTF-8 (byte {e.start} of the line); "
                                f"--stage pt reads UTF-8 text") from None
            if not text.strip():
                if block:
                    yield start, "\n".join(block)
                    block = []
                continue
            if per_line:
                yield lineno, text
                continue
            if not block:
                start = lineno
            block.append(text)
    if block:
        yield start, "\n".join(block)


# --------------------------------------------------------------------------- rows


def split_document(ids: list[int], max_len: int) -> list[list[int]]:
    """``ids`` as rows of at most ``max_len`` tokens, each starting at the previous row's last token,
    so that every token but the first is a target in exactly one row (a row's first never is)."""
    rows = [ids[:max_len]]
    start = 0
    while start + max_len < len(ids):
        start += max_len - 1
        rows.append(ids[start:start + max_len])
    return rows


class DocumentRows:
    """Documents -> rows (``input_ids`` = ``labels``), counting what happened to them."""

    def __init__(self, encoder: SegmentEncoder, max_len: int):
        import numpy as np

        self.encoder, self.max_len = encoder, max_len
        self.stats = {"documents_in": 0, "documents_empty": 0, "documents_split": 0, "rows_from_split": 0,
                      "rows_out": 0, "tokens": 0, "trained_tokens": 0}
        self.before = np.zeros(0, dtype=np.int64)
        self.after = np.zeros(0, dtype=np.int64)

    def rows(self, texts: list[str]) -> list[list[int]]:
        stats, encoder = self.stats, self.encoder
        stats["documents_in"] += len(texts)
        kept = [t for t in texts if t]
        stats["documents_empty"] += len(texts) - len(kept)
        out, before = [], []
        for ids in encoder.encode_texts(kept) if kept else []:
            ids = [*encoder.prefix, *ids, encoder.eos]
            before.append(len(ids))
            stats["tokens"] += len(ids)
            pieces = split_document(ids, self.max_len)
            if len(pieces) > 1:
                stats["documents_split"] += 1
                stats["rows_from_split"] += len(pieces)
            out += pieces
        stats["rows_out"] += len(out)
        stats["trained_tokens"] += sum(len(r) - 1 for r in out)
        self.before = shards.add_to_histogram(self.before, before)
        self.after = shards.add_to_histogram(self.after, [len(r) for r in out])
        return out

    def totals(self, cfg: TokenizeConfig) -> dict:
        s = self.stats
        stats = dict(s, stage=STAGE, rows_in=s["documents_in"], rows_skipped=s["documents_empty"], rows_truncated=0,
                     rows_truncated_prompt=0, rows_truncated_response=0, overlength="split",
                     max_seq_length=cfg.max_seq_length, num_proc=1,
                     length_before=shards.histogram_percentiles(self.before),
                     length_after=shards.histogram_percentiles(self.after))
        stats["note"] = (f"{s['documents_split']} document(s) longer than max_seq_length={cfg.max_seq_length} split "
                         f"into {s['rows_from_split']} rows (each starts at the last token of the one before, so "
                         f"every token after a document's first is trained once); none dropped")
        return stats


def tokenize_documents(cfg: TokenizeConfig, src: Path, out: Path, encoder: SegmentEncoder, manifest: dict) -> dict:
    """Write the rows of the documents of ``src`` as the dataset ``out`` (atomically); return the stats."""
    import datasets
    import pyarrow as pa
    from tqdm.auto import tqdm

    datasets.disable_progress_bars()
    started = time.perf_counter()
    work = DocumentRows(encoder, cfg.max_seq_length)
    list_type = pa.list_(pa.int32())
    schema = pa.schema([("input_ids", list_type), ("labels", list_type)])

    def write(writer, texts: list[str]) -> None:
        rows = work.rows(texts)
        if rows:
            column = pa.array(rows, type=list_type)
            writer.write_batch(pa.record_batch([column, column], schema=schema))

    with atomic_dir(out) as tmp, tqdm(desc="tokenize", unit=" docs", disable=None) as bar:
        shard = str(tmp / "shard-0000.arrow")
        with pa.OSFile(shard, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            batch: list[str] = []
            for _, text in read_documents(src, cfg.text_per_line):
                batch.append(text)
                if len(batch) >= cfg.batch_size:
                    write(writer, batch)
                    bar.update(len(batch))
                    batch = []
            write(writer, batch)
            bar.update(len(batch))
        stats = work.totals(cfg)
        if stats["rows_out"] == 0:
            raise UserError(f"{src}: no text to train on ({stats['documents_in']} documents, all empty)")
        shards.shards_as_dataset(tmp, [shard], stats["rows_out"])
        stats["seconds"] = round(time.perf_counter() - started, 2)
        dataset_manifest.save(tmp, manifest, stats)
    if stats["documents_split"]:
        log.info("%s: %s", out, stats["note"])
    return stats
