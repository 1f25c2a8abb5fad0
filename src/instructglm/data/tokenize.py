"""``tokenize``: canonical JSONL + template + tokenizer -> a saved ``datasets`` dataset.

Each row gets ``input_ids`` and ``labels``; labels are -100 on prompt tokens and equal the ids on
assistant responses and the EOS that closes each of them. The output directory also holds
``stats.json`` (row counts, token-length percentiles) and ``manifest.json`` (template, tokenizer
fingerprint, max length, source hashes), which ``train`` checks against the model it trains.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal

from instructglm.config import opt
from instructglm.data.records import read_canonical
from instructglm.data.templates import Segment, get_template
from instructglm.errors import UserError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
MANIFEST = "manifest.json"
STATS = "stats.json"


@dataclass
class TokenizeConfig:
    input: str = opt(help="canonical JSONL file (from 'instructglm convert')", aliases=("--jsonl_path",))
    output: str = opt(help="output dataset directory", aliases=("-o", "--save_path"))
    model: str = opt("gemma3-270m", help="model whose tokenizer to use")
    template: str = opt("alpaca", help="prompt template")
    max_seq_length: int = opt(512, help="maximum tokens per row", aliases=("--max_seq_length",))
    overlength: Literal["skip", "truncate"] = opt("skip", help="what to do with rows longer than max_seq_length")
    batch_size: int = opt(1000, help="rows per tokenizer call")

    def validate(self) -> None:
        if self.max_seq_length < 8:
            raise UserError(f"max_seq_length: must be at least 8, got {self.max_seq_length}")


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

    def encode(self, conversations: list[list[Segment]]) -> list[tuple[list[int], list[int]]]:
        texts = [seg.text for segs in conversations for seg in segs if seg.text]
        encoded = iter(self.tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
        out = []
        for segs in conversations:
            ids, labels = list(self.prefix), [IGNORE_INDEX] * len(self.prefix)
            for seg in segs:
                piece = next(encoded) if seg.text else []
                if seg.train:
                    piece = piece + [self.eos]
                    labels += piece
                else:
                    labels += [IGNORE_INDEX] * len(piece)
                ids += piece
            out.append((ids, labels))
        return out


def apply_length_policy(ids: list[int], labels: list[int], max_len: int, policy: str, eos: int):
    """Return ``(ids, labels, action)`` with action in ``kept``, ``truncated``, ``skipped``.

    Truncation keeps the first ``max_len - 1`` tokens and closes the row with EOS (trained when the
    cut fell inside a response), so a truncated row still teaches the model to stop. A row left with
    no trained token is skipped.
    """
    if len(ids) <= max_len:
        return ids, labels, "kept"
    if policy == "skip":
        return None, None, "skipped"
    ids, labels = ids[: max_len - 1] + [eos], labels[: max_len - 1]
    labels.append(eos if labels[-1] != IGNORE_INDEX else IGNORE_INDEX)
    if all(x == IGNORE_INDEX for x in labels):
        return None, None, "skipped"
    return ids, labels, "truncated"


def _percentiles(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    s = sorted(lengths)

    def pct(p):
        return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

    return {"min": s[0], "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": s[-1],
            "mean": round(sum(s) / len(s), 1)}


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_file(cfg: TokenizeConfig, tokenizer=None) -> dict:
    """Tokenize ``cfg.input`` into the dataset directory ``cfg.output``; return the stats."""
    import datasets
    from tqdm.auto import tqdm

    datasets.disable_progress_bars()

    from instructglm.models import load_tokenizer, resolve_model, tokenizer_fingerprint

    template = get_template(cfg.template)
    if tokenizer is None:
        tokenizer = load_tokenizer(resolve_model(cfg.model))
    encoder = SegmentEncoder(tokenizer)
    stats = {"rows_in": 0, "rows_out": 0, "rows_skipped": 0, "rows_truncated": 0, "trained_tokens": 0}
    before: list[int] = []
    after: list[int] = []

    def rows():
        records = read_canonical(cfg.input)
        bar = tqdm(desc="tokenize", unit=" rows", disable=None)
        for batch in _batched(records, cfg.batch_size):
            encoded = encoder.encode([template.render(rec["messages"]) for _, rec in batch])
            for ids, labels in encoded:
                stats["rows_in"] += 1
                before.append(len(ids))
                ids, labels, action = apply_length_policy(ids, labels, cfg.max_seq_length, cfg.overlength,
                                                          encoder.eos)
                if action == "skipped":
                    stats["rows_skipped"] += 1
                    continue
                stats["rows_truncated"] += action == "truncated"
                stats["rows_out"] += 1
                stats["trained_tokens"] += sum(x != IGNORE_INDEX for x in labels)
                after.append(len(ids))
                yield {"input_ids": ids, "labels": labels}
            bar.update(len(batch))
        bar.close()

    out = Path(cfg.output)
    if out.exists() and not (out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir()))):
        raise UserError(f"{out}: exists and is not a tokenized dataset; choose another output directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                      "labels": datasets.Sequence(datasets.Value("int32"))})
        try:
            ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(tmp / "cache"),
                                                 keep_in_memory=False)
        except ValueError:
            if stats["rows_out"]:
                raise
        if stats["rows_out"] == 0:
            raise UserError(f"{cfg.input}: no rows left after tokenization "
                            f"({stats['rows_skipped']} longer than max_seq_length={cfg.max_seq_length}; "
                            f"raise --max-seq-length or use --overlength truncate)")
        ds.save_to_disk(str(tmp / "data"))
        del ds
        shutil.rmtree(tmp / "cache", ignore_errors=True)
        for item in (tmp / "data").iterdir():
            os.replace(item, tmp / item.name)
        (tmp / "data").rmdir()
        stats["length_before"] = _percentiles(before)
        stats["length_after"] = _percentiles(after)
        manifest = {
            "format": "instructglm.tokenized/1",
            "template": template.name,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "model": cfg.model,
            "config": asdict(cfg),
            "sources": [{"path": str(cfg.input), "sha256": _sha256(cfg.input)}],
        }
        (tmp / STATS).write_text(json.dumps(stats, indent=2) + "\n")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return stats


def read_manifest(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{dataset_dir}: not a tokenized dataset (no {MANIFEST}); run 'instructglm tokenize' first")
    return json.loads(path.read_text())
