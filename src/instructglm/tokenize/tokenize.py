"""``tokenize``: canonical JSONL + template + tokenizer -> a saved ``datasets`` dataset.

Each row gets ``input_ids`` and ``labels``; labels are ``IGNORE_INDEX`` on prompt tokens and equal
the ids on assistant responses and the closing (EOS or end-of-turn) of each of them; with
``--train-on-prompt`` every token is trained. The output directory also holds ``stats.json`` and
``manifest.json`` (see :mod:`instructglm.tokenize.manifest`), which ``train`` checks against the
model it trains.

Rows longer than ``--max-seq-length`` (``--overlength``):

* ``skip`` (default; ChatGLM-Tuning's ``--skip_overlength``): the row is left out.
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
are identical to a single-process run (:mod:`instructglm.tokenize.shards`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from instructglm.config import opt
from instructglm.constants import DEFAULT_TEMPLATE, IGNORE_INDEX
from instructglm.errors import UserError, where
from instructglm.files import atomic_dir, file_sha256
from instructglm.paths import output_dir, refuse_inputs
from instructglm.templates import Template, get_template
from instructglm.tokenize import manifest as dataset_manifest
from instructglm.tokenize import shards
from instructglm.tokenize.encode import SegmentEncoder, format_example
from instructglm.tokenize.pretrain import tokenize_documents

log = logging.getLogger(__name__)

MIN_BYTES_PER_PROC = 4 << 20  # a worker process only pays off for a few MB of input


@dataclass
class TokenizeConfig:
    input: str = opt(help="canonical JSONL file (from 'instructglm convert'); with --stage pt a text file, or "
                     "JSONL with a 'text' field", aliases=("--jsonl_path", "--data_path"))
    output: str = opt(help="output dataset directory", aliases=("-o", "--save_path"))
    model: str = opt("gemma3-270m", help="model whose tokenizer to use")
    tokenizer: str | None = opt(None, help="tokenizer directory that extends the model's (only adds tokens); "
                                "train with the same option")
    add_tokens: str | None = opt(None, help="file of tokens to add to the model's tokenizer, one per line; "
                                 "train with the same option")
    stage: Literal["sft", "pt"] = opt("sft", help="sft: instruction rows through a template; pt: plain text for "
                                      "continued pretraining (no template, every token trained, EOS after each "
                                      "document, long documents split into rows of max_seq_length)")
    text_per_line: bool = opt(False, help="--stage pt, text file: one document per line (default: per block of "
                              "lines separated by a blank line)")
    template: str = opt(DEFAULT_TEMPLATE, help="prompt template: alpaca, chatglm, chatglm-6b, chatglm2, chatglm3, "
                        "glm4, model (the tokenizer's chat template), auto (the model family's own) or a "
                        ".yaml/.json template file")
    max_seq_length: int = opt(512, help="maximum tokens per row", aliases=("--max_seq_length",), min=8)
    overlength: Literal["skip", "truncate", "fail"] = opt("skip", help="what to do with rows longer than "
                                                          "max_seq_length")
    skip_overlength: bool = opt(False, help="ChatGLM-Tuning's flag: same as --overlength skip",
                                aliases=("--skip_overlength",))
    train_on_prompt: bool = opt(False, help="train on every token (no prompt masking)",
                                aliases=("--train_on_prompt",))
    num_proc: int | None = opt(None, help="worker processes (default: all cores)", aliases=("--num_proc",), min=1)
    batch_size: int = opt(1000, help="rows per tokenizer call", min=1)
    show: int = opt(0, help="print N tokenized examples with the trained span marked", min=0)
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
        if self.stage == "pt" and (self.overlength != "skip" or self.skip_overlength):
            raise UserError("--overlength/--skip_overlength: not with --stage pt (long documents are split into "
                            "rows of max_seq_length, none dropped)")
        if self.text_per_line and self.stage != "pt":
            raise UserError("--text-per-line: only with --stage pt (plain-text input)")


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
    from instructglm.models.loading import resolve_model

    if cfg.skip_overlength:
        cfg.overlength = "skip"
    if tokenizer is None and (cfg.tokenizer or cfg.add_tokens):  # loaded now: its fingerprint decides up-to-date
        from instructglm.models.loading import load_tokenizer
        from instructglm.train.vocab import extended_tokenizer

        tokenizer = extended_tokenizer(load_tokenizer(cfg.model), cfg.tokenizer, cfg.add_tokens)
    src = Path(cfg.input)
    if src.is_dir():
        raise UserError(f"{src}: is a directory, expected a canonical JSONL file")
    if not src.is_file():
        raise UserError(f"{src}: file not found")
    from instructglm.tokenize.pairs import is_preference_file, tokenize_preferences

    if is_preference_file(src):  # chosen/rejected pairs or KTO completions: tokenize/pairs.py
        return tokenize_preferences(cfg, tokenizer)
    if cfg.stage == "sft" and src.suffix.lower() == ".txt":
        raise UserError(f"{src}: a text file; tokenize reads canonical JSONL ('instructglm convert'), or plain "
                        f"text for continued pretraining with --stage pt")
    out = Path(cfg.output)
    output_dir(out, "--output")
    refuse_inputs([("--output", out)], [src], directory=True)
    if out.exists() and not (out.is_dir() and (dataset_manifest.has_manifest(out) or not any(out.iterdir()))):
        raise UserError(f"{out}: exists and is not a tokenized dataset; choose another output directory")

    source_sha = file_sha256(src)
    # model/auto: the name is known once the tokenizer is loaded
    pretrain = cfg.stage == "pt"  # no template (tokenize/pretrain.py)
    template_name = None if pretrain or cfg.template in ("model", "auto") else get_template(cfg.template).name
    model_path = resolve_model(cfg.model) if tokenizer is None else None
    tok_files = dataset_manifest.tokenizer_files(model_path) if model_path else None

    def load():
        from instructglm.models.loading import load_tokenizer

        return tokenizer if tokenizer is not None else load_tokenizer(model_path)

    if not cfg.force and dataset_manifest.is_up_to_date(out, cfg, source_sha, template_name, tok_files, tokenizer):
        result = dataset_manifest.read_stats(out)
        result["up_to_date"] = True
        log.info("%s: up to date (same input, tokenizer, template and options); --force to redo", out)
        if cfg.show:
            result["examples"] = _examples(out, load(), cfg.show, color)
        return result

    tokenizer = load()
    template = None if pretrain else get_template(cfg.template, tokenizer)
    encoder = SegmentEncoder(tokenizer)
    manifest = dataset_manifest.build_manifest(cfg, template, tokenizer, tok_files, source_sha)
    if pretrain:
        stats = tokenize_documents(cfg, src, out, encoder, manifest)
    else:
        stats = _tokenize_into(cfg, src, out, template, encoder, manifest)
    result = dict(stats, up_to_date=False)
    if cfg.show:
        result["examples"] = _examples(out, tokenizer, cfg.show, color)
    return result


def _worker_count(cfg: TokenizeConfig, size: int) -> int:
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cfg.num_proc is not None:
        return cfg.num_proc
    return min(cores, max(1, size // MIN_BYTES_PER_PROC))


def _run_ranges(tasks: list[tuple[int, int, str]], bar) -> list[dict]:
    """Each task's result, in input order: in this process for one range, else in forked workers."""
    import multiprocessing as mp

    if len(tasks) == 1:
        return [shards.tokenize_range(*tasks[0], bar.update)]
    ctx = mp.get_context("fork")
    counter = shards.WORKER_STATE["counter"] = ctx.Value("q", 0)
    seen = 0
    with ctx.Pool(len(tasks)) as pool:
        pending = pool.map_async(shards.run_worker, tasks, chunksize=1)
        while not pending.ready():
            pending.wait(0.25)
            bar.update(counter.value - seen)
            seen = counter.value
        return pending.get()


def _total_stats(cfg: TokenizeConfig, results: list[dict]) -> dict:
    import numpy as np

    stats = {k: sum(r["stats"][k] for r in results) for k in results[0]["stats"]}
    stats["rows_truncated"] = stats["rows_truncated_prompt"] + stats["rows_truncated_response"]
    stats["overlength"] = cfg.overlength
    stats["max_seq_length"] = cfg.max_seq_length
    stats["num_proc"] = len(results)
    if stats["rows_out"] == 0:
        raise UserError(f"{cfg.input}: no rows left after tokenization "
                        f"({stats['rows_skipped']} longer than max_seq_length={cfg.max_seq_length}; "
                        f"raise --max-seq-length or use --overlength truncate)")
    before = np.zeros(0, dtype=np.int64)
    after = np.zeros(0, dtype=np.int64)
    for r in results:
        before, after = shards.merge_histograms(before, r["before"]), shards.merge_histograms(after, r["after"])
    stats["length_before"] = shards.histogram_percentiles(before)
    stats["length_after"] = shards.histogram_percentiles(after)
    return stats


def _tokenize_into(cfg: TokenizeConfig, src: Path, out: Path, template: Template, encoder: SegmentEncoder,
                   manifest: dict) -> dict:
    import datasets
    from tqdm.auto import tqdm

    datasets.disable_progress_bars()
    started = time.perf_counter()
    if shards.is_json_array(src):
        raise UserError(f"{src}: a JSON array, not canonical JSONL; run 'instructglm convert' first")
    size = src.stat().st_size
    ranges = shards.split_ranges(src, _worker_count(cfg, size))
    bar = tqdm(total=size, desc="tokenize", unit="B", unit_scale=True, disable=None)
    try:
        with atomic_dir(out) as tmp:
            names = [str(tmp / f"shard-{i:04d}.arrow") for i in range(len(ranges))]
            shards.WORKER_STATE.update(cfg=cfg, template=template, encoder=encoder)
            results = _run_ranges([(a, b, s) for (a, b), s in zip(ranges, names)], bar)
            bar.update(max(0, size - bar.n))
            for (start, _), res in zip(ranges, results):
                if res["error"]:
                    line, message = res["error"]
                    raise UserError(f"{where(src, shards.count_lines_before(src, start) + line)}: {message}")
            stats = _total_stats(cfg, results)
            shards.shards_as_dataset(tmp, names, stats["rows_out"])
            stats["seconds"] = round(time.perf_counter() - started, 2)
            dataset_manifest.save(tmp, manifest, stats)
    finally:
        bar.close()
        shards.WORKER_STATE.clear()
    return stats
