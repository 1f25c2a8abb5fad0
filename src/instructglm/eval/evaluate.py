"""``eval``: score a predictions file, overall, per language and per category, base vs tuned.

Input is what ``instructglm infer`` writes: one JSON object per line with ``reference`` and
``prediction``, and optionally ``base_prediction`` (``infer --compare-base``) and ``category``.
Every metric is in percent (see :mod:`instructglm.eval.metrics`); ``delta`` is tuned minus base.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from instructglm.config import opt
from instructglm.errors import UserError, where
from instructglm.eval.metrics import language, score_full
from instructglm.files import iter_jsonl, write_json

METRICS = {  # key -> label, in display order
    "exact_match": "exact match",
    "normalized_exact_match": "normalised exact match",
    "char_f1": "char F1",
    "bleu4": "BLEU-4",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
}
SYSTEMS = {"base": "base_prediction", "tuned": "prediction"}  # column -> row field


@dataclass
class EvalConfig:
    predictions: str = opt(help="predictions JSONL from 'instructglm infer' (reference, prediction; "
                                "optional base_prediction and category)")
    output: str | None = opt(None, help="also write the metrics as JSON to this file", aliases=("-o",))


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a predictions JSONL file; a bad line is a :class:`UserError` naming it."""
    rows = []
    for line, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise UserError(f"{where(path, line)}: expected a JSON object")
        rows.append(row)
    return rows


def compare(rows: list[dict]) -> dict:
    """``{"n", "base"?, "tuned", "delta"?}`` for one group of rows; base and delta only when the
    rows carry ``base_prediction``."""
    block: dict = {"n": len(rows)}
    for system, key in SYSTEMS.items():
        if any(r.get(key) is not None for r in rows):
            block[system] = score_full(rows, key)
    if "base" in block and "tuned" in block:
        block["delta"] = {m: round(block["tuned"][m] - block["base"][m], 1) for m in METRICS}
    return block


def _group(rows: list[dict], key) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return dict(sorted(groups.items()))


def evaluate_rows(rows: list[dict]) -> dict:
    """Metrics of already-loaded prediction rows (rows without a reference are skipped and counted)."""
    scored = [r for r in rows if r.get("reference") is not None]
    if not scored:
        raise UserError("no rows with a reference to score against")
    result = {"n": len(scored), "skipped_no_reference": len(rows) - len(scored), "overall": compare(scored),
              "by_language": {lang: compare(g) for lang, g in
                              _group(scored, lambda r: language(r["reference"])).items()}}
    if any("category" in r for r in scored):
        result["by_category"] = {c: compare(g) for c, g in
                                 _group(scored, lambda r: str(r.get("category", "-"))).items()}
    return result


def evaluate(cfg: EvalConfig) -> dict:
    """Score ``cfg.predictions``; write ``cfg.output`` (JSON) when given; return the metrics."""
    result = {"predictions": str(cfg.predictions), **evaluate_rows(read_predictions(cfg.predictions))}
    if cfg.output:
        write_json(cfg.output, result)
    return result


def _systems(block: dict) -> list[str]:
    return [s for s in ("base", "tuned", "delta") if s in block]


def _cell(block: dict, system: str, metric: str) -> str:
    if system not in block:
        return "-"
    value = block[system][metric]
    return f"{value:+.1f}" if system == "delta" else f"{value:.1f}"


def format_table(result: dict) -> str:
    """The metrics as plain-text tables: metric x base/tuned/delta, then one line per language and
    per category (exact match and ROUGE-L, base -> tuned)."""
    overall = result["overall"]
    systems = _systems(overall)
    langs = ", ".join(f"{b['n']} {lang}" for lang, b in result["by_language"].items())
    lines = [f"{result.get('predictions', 'predictions')}: {result['n']} rows ({langs})"
             + (f", {result['skipped_no_reference']} without reference skipped"
                if result.get("skipped_no_reference") else ""), ""]
    lines.append(f"  {'metric':<24}" + "".join(f"{s:>9}" for s in systems))
    for m, label in METRICS.items():
        lines.append(f"  {label:<24}" + "".join(f"{_cell(overall, s, m):>9}" for s in systems))
    groups = [("language", result["by_language"]), ("category", result.get("by_category", {}))]
    for title, blocks in groups:
        if not blocks or (title == "language" and len(blocks) < 2):
            continue
        width = 8 * len(systems)
        lines += ["", f"  {'':<25}" + "".join(f"   {head:^{width}}" for head in ("EM", "ROUGE-L")).rstrip(),
                  f"  {title:<20}{'n':>5}" + ("   " + "".join(f"{s:>8}" for s in systems)) * 2]
        for name, block in blocks.items():
            lines.append(f"  {name:<20}{block['n']:>5}" + "".join(
                "   " + "".join(f"{_cell(block, s, m):>8}" for s in systems) for m in ("exact_match", "rougeL")))
    return "\n".join(lines)
