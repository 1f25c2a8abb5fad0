"""``tokenize`` for preference data: canonical preference JSONL -> a dataset of tokenized pairs.

Each row holds the prompt once (``prompt_ids``, never trained) and its completions with their own
labels: ``chosen_ids``/``chosen_labels`` and ``rejected_ids``/``rejected_labels`` (empty for a KTO
row), and ``label``: -1 for a pair, 1 (desirable) or 0 (undesirable) for a KTO completion. The
prompt and both completions come from the same template as SFT (the prompt rendered with each
answer, the answer's tokens and closing trained exactly as in SFT), so a DPO run continues an SFT
run's format. Earlier answers inside the prompt are context here, not targets.

Length policy (``--max-seq-length`` applies to prompt + the longer completion, so the pair stays
together): ``skip`` leaves the pair out, ``fail`` stops at ``FILE:LINE``, ``truncate`` cuts the
prompt's middle first (keeping its start and the template's response opening) and, when even the
longer answer does not fit beside half the length of prompt, cuts the answers too (keeping their
closing, so both still end as trained).

``manifest.json`` is the SFT one plus ``"rows": "preference"``; ``stats.json`` counts pairs and KTO
rows and gives length percentiles of prompts, chosen and rejected answers.
"""

from __future__ import annotations

import time
from pathlib import Path

from instructglm.constants import IGNORE_INDEX
from instructglm.errors import UserError, where
from instructglm.files import atomic_dir, file_sha256
from instructglm.record import Preference, read_preferences
from instructglm.templates import Template, get_template
from instructglm.tokenize import manifest as dataset_manifest
from instructglm.tokenize.encode import SegmentEncoder, opening_length
from instructglm.tokenize.shards import add_to_histogram, histogram_percentiles
from instructglm.tokenize.tokenize import TokenizeConfig

ROWS_KIND = "preference"  # manifest["rows"] of a preference dataset
COLUMNS = ("prompt_ids", "chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels", "label")
PAIR = -1


def is_preference_dataset(manifest: dict) -> bool:
    return manifest.get("rows") == ROWS_KIND


def is_preference_file(path: str | Path) -> bool:
    """Whether a canonical JSONL file holds preference records (judged by its first record)."""
    import json

    from instructglm.record import is_preference_json

    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    return is_preference_json(json.loads(raw.decode("utf-8", "replace").lstrip("\ufeff")))
                except ValueError:
                    return False
    return False


def encode_preference(encoder: SegmentEncoder, template: Template, pref: Preference):
    """``(prompt_ids, [(completion_ids, completion_labels, closing)], ...)`` for one preference."""
    rendered = [template.render([*pref.prompt, answer]) for answer in pref.completions]
    rows = encoder.encode_rows(rendered)
    start = min(r[2] for r in rows)
    prompt = rows[0][0][:start]
    if any(ids[:start] != prompt for ids, *_ in rows):  # cannot happen with segment-wise encoding
        raise UserError("the template renders the prompt differently for the two answers")
    return prompt, [(ids[start:], labels[start:], close) for ids, labels, _, close in rows]


def _cut_prompt(prompt: list[int], budget: int, tail: int) -> list[int]:
    if budget >= len(prompt):
        return prompt
    tail = max(0, min(tail, budget - 1))
    return prompt[:budget - tail] + prompt[len(prompt) - tail:]


def _cut_answer(ids: list[int], labels: list[int], close: int, room: int):
    if len(ids) <= room:
        return ids, labels
    close = min(close, room - 1)
    body = room - close
    return ids[:body] + ids[len(ids) - close:], labels[:body] + labels[len(ids) - close:]


def fit_pair(prompt: list[int], answers: list[tuple], max_len: int, policy: str, keep_tail: int = 0):
    """``(prompt, answers, action)`` within ``max_len`` tokens per side; action is ``kept``, ``skipped``,
    ``overlong`` (policy ``fail``), ``truncated_prompt`` or ``truncated_response``."""
    longest = max(len(ids) for ids, _, _ in answers)
    if len(prompt) + longest <= max_len:
        return prompt, answers, "kept"
    if policy != "truncate":
        return None, None, "skipped" if policy == "skip" else "overlong"
    if longest <= max_len - min(len(prompt), keep_tail + 1):
        return _cut_prompt(prompt, max_len - longest, keep_tail), answers, "truncated_prompt"
    budget = min(len(prompt), max_len // 2)
    room = max_len - budget
    if room < 2:
        return None, None, "skipped"
    cut = [(*_cut_answer(ids, labels, close, room), close) for ids, labels, close in answers]
    return _cut_prompt(prompt, budget, keep_tail), cut, "truncated_response"


class PairTokenizer:
    """Preferences -> dataset columns, counting what the length policy did."""

    def __init__(self, cfg: TokenizeConfig, template: Template, encoder: SegmentEncoder):
        import numpy as np

        self.cfg, self.template, self.encoder = cfg, template, encoder
        self.columns: dict[str, list] = {c: [] for c in COLUMNS}
        self.stats = {"rows_in": 0, "rows_out": 0, "rows_skipped": 0, "rows_truncated_prompt": 0,
                      "rows_truncated_response": 0, "pairs": 0, "desirable": 0, "undesirable": 0}
        self.hist = {k: np.zeros(0, dtype=np.int64) for k in ("prompt", "chosen", "rejected", "before", "after")}
        self.cache: dict = {}

    def add(self, line: int, pref: Preference) -> None:
        cfg, stats = self.cfg, self.stats
        stats["rows_in"] += 1
        try:
            prompt, answers = encode_preference(self.encoder, self.template, pref)
        except UserError as e:
            raise UserError(f"{where(cfg.input, line)}: {e}") from None
        tail = opening_length(self.encoder.tokenizer, self.template, prompt, self.cache) \
            if cfg.overlength == "truncate" else 0
        before = len(prompt) + max(len(a[0]) for a in answers)
        self.hist["before"] = add_to_histogram(self.hist["before"], [before])
        prompt, answers, action = fit_pair(prompt, answers, cfg.max_seq_length, cfg.overlength, tail)
        if action == "overlong":
            raise UserError(f"{where(cfg.input, line)}: longer than max_seq_length={cfg.max_seq_length} tokens "
                            f"(prompt + the longer answer); raise --max-seq-length or use --overlength truncate|skip")
        if action == "skipped":
            stats["rows_skipped"] += 1
            return
        if action != "kept":
            stats["rows_" + action] += 1
        stats["rows_out"] += 1
        stats["pairs" if pref.is_pair else ("desirable" if pref.label else "undesirable")] += 1
        rejected = answers[1] if pref.is_pair else ([], [], 0)
        label = PAIR if pref.is_pair else int(pref.label)
        row = (prompt, answers[0][0], answers[0][1], rejected[0], rejected[1], label)
        for column, value in zip(COLUMNS, row):
            self.columns[column].append(value)
        longest = answers[0][0] if len(answers[0][0]) >= len(rejected[0]) else rejected[0]
        for key, ids in (("prompt", prompt), ("chosen", answers[0][0]), ("rejected", rejected[0]),
                         ("after", prompt + longest)):
            if ids or key != "rejected":
                self.hist[key] = add_to_histogram(self.hist[key], [len(ids)])

    def totals(self) -> dict:
        stats = dict(self.stats, overlength=self.cfg.overlength, max_seq_length=self.cfg.max_seq_length, num_proc=1)
        stats["rows_truncated"] = stats["rows_truncated_prompt"] + stats["rows_truncated_response"]
        stats["trained_tokens"] = sum(len(x) - x.count(IGNORE_INDEX) for c in ("chosen_labels", "rejected_labels")
                                      for x in self.columns[c])
        for key, hist in self.hist.items():
            stats[f"length_{key}"] = histogram_percentiles(hist)
        return stats


def tokenize_preferences(cfg: TokenizeConfig, tokenizer=None) -> dict:
    """Tokenize the canonical preference file ``cfg.input`` into the dataset directory ``cfg.output``."""
    import datasets

    from instructglm.models.loading import load_tokenizer, resolve_model

    started = time.perf_counter()
    src, out = Path(cfg.input), Path(cfg.output)
    if not src.is_file():
        raise UserError(f"{src}: file not found")
    if out.exists() and not (out.is_dir() and (dataset_manifest.has_manifest(out) or not any(out.iterdir()))):
        raise UserError(f"{out}: exists and is not a tokenized dataset; choose another output directory")
    model_path = resolve_model(cfg.model) if tokenizer is None else None
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_path)
    template = get_template(cfg.template, tokenizer)
    work = PairTokenizer(cfg, template, SegmentEncoder(tokenizer))
    for line, pref in read_preferences(src):
        work.add(line, pref)
    stats = work.totals()
    if stats["rows_out"] == 0:
        raise UserError(f"{src}: no pairs left after tokenization ({stats['rows_skipped']} longer than "
                        f"max_seq_length={cfg.max_seq_length}; raise --max-seq-length or use --overlength truncate)")
    tok_files = dataset_manifest.tokenizer_files(model_path) if model_path else None
    manifest = dataset_manifest.build_manifest(cfg, template, tokenizer, tok_files, file_sha256(src))
    manifest["rows"] = ROWS_KIND
    datasets.disable_progress_bars()
    with atomic_dir(out) as tmp:
        ids = datasets.List(datasets.Value("int32"))
        features = datasets.Features({**{c: ids for c in COLUMNS[:-1]}, "label": datasets.Value("int8")})
        datasets.Dataset.from_dict(work.columns, features=features).save_to_disk(str(tmp))
        stats["seconds"] = round(time.perf_counter() - started, 2)
        dataset_manifest.save(tmp, manifest, stats)
    result = dict(stats, up_to_date=False)
    if cfg.show:
        result["examples"] = show_pairs(work.columns, tokenizer, cfg.show)
    return result


def show_pairs(columns: dict, tokenizer, n: int) -> list[str]:
    """The first ``n`` rows decoded, each answer after its prompt with the trained span marked ``[[...]]``."""
    from instructglm.tokenize.encode import format_example

    shown = []
    for i in range(min(n, len(columns["prompt_ids"]))):
        prompt = columns["prompt_ids"][i]
        for side in ("chosen", "rejected"):
            if columns[f"{side}_ids"][i] or side == "chosen":
                name = side if columns["label"][i] == PAIR else ("desirable" if columns["label"][i] else "undesirable")
                text = format_example(tokenizer, prompt + columns[f"{side}_ids"][i],
                                      [IGNORE_INDEX] * len(prompt) + columns[f"{side}_labels"][i])
                shown.append(f"--- example {i + 1}, {name} ---\n{text}")
    return shown
