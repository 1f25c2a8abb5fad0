"""``eval``: score a predictions file, overall, per language and per category, base vs tuned.

Input is what ``instructglm infer`` writes: one JSON object per line with ``reference`` and
``prediction`` (one adapter) or one ``prediction_NAME`` per adapter (several), and optionally
``base_prediction`` (``infer --compare-base``) and ``category``. Every prediction column is scored
side by side as a *system* (``tuned``, ``NAME``, ``base``). Every metric is in percent (see
:mod:`instructglm.eval.metrics`); ``delta`` is a system minus the base.
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
BASE_COLUMN, TUNED_COLUMN, ADAPTER_PREFIX = "base_prediction", "prediction", "prediction_"


@dataclass
class EvalConfig:
    predictions: str = opt(help="predictions JSONL from 'instructglm infer' (reference, prediction; "
                                "optional base_prediction and category)")
    output: str | None = opt(None, help="also write the metrics as JSON to this file", aliases=("-o",))
    adapter: list[str] = opt([], help="preference data only: the tuned result(s) to score beside the base model "
                             "(DIR or NAME=DIR)")
    model: str | None = opt(None, help="preference data only: base model (default: the adapter's)")
    template: str | None = opt(None, help="preference data only: prompt template (default: the adapter's)")
    limit: int = opt(0, help="preference data only: score at most N pairs (0: all)", min=0)


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a predictions JSONL file; a bad line is a :class:`UserError` naming it."""
    rows = []
    for line, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise UserError(f"{where(path, line)}: expected a JSON object")
        rows.append(row)
    return rows


def prediction_columns(rows: list[dict]) -> dict[str, str]:
    """``{system: column}`` for every prediction column with an answer in ``rows``: ``base``
    (``base_prediction``), ``tuned`` (``prediction``), then one system per adapter (``prediction_NAME``
    is ``NAME``, in the order the columns first appear; one named like the others keeps its column name)."""
    found: list[str] = []
    for r in rows:
        found += [k for k, v in r.items() if v is not None and k not in found
                  and (k in (BASE_COLUMN, TUNED_COLUMN) or (k.startswith(ADAPTER_PREFIX) and k != ADAPTER_PREFIX))]
    fixed = {BASE_COLUMN: "base", TUNED_COLUMN: "tuned"}
    systems: dict[str, str] = {}
    for column in sorted(found, key=lambda c: (c != BASE_COLUMN, c != TUNED_COLUMN)):  # stable: adapters keep order
        name = fixed.get(column) or column.removeprefix(ADAPTER_PREFIX)
        # an adapter named "base" is not the base model (deltas are taken against "base")
        systems[column if column not in fixed and name in fixed.values() else name] = column
    return systems


def compare(rows: list[dict], systems: dict[str, str]) -> dict:
    """``{"n", "scores": {system: metrics}, "delta"?: {system: metrics}}`` for one group of rows; a
    system without an answer in the group is left out; ``delta`` (each system minus ``base``) only
    when the rows carry ``base_prediction``."""
    scores = {name: score_full(rows, column) for name, column in systems.items()
              if any(r.get(column) is not None for r in rows)}
    block: dict = {"n": len(rows), "scores": scores}
    if "base" in scores and len(scores) > 1:
        block["delta"] = {name: {m: round(s[m] - scores["base"][m], 1) for m in METRICS}
                          for name, s in scores.items() if name != "base"}
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
    systems = prediction_columns(scored)
    if not systems:
        raise UserError(f"no prediction column to score (expected {TUNED_COLUMN}, {BASE_COLUMN} or "
                        f"{ADAPTER_PREFIX}NAME)")
    result = {"n": len(scored), "skipped_no_reference": len(rows) - len(scored), "systems": systems,
              "overall": compare(scored, systems),
              "by_language": {lang: compare(g, systems) for lang, g in
                              _group(scored, lambda r: language(r["reference"])).items()}}
    if any("category" in r for r in scored):
        result["by_category"] = {c: compare(g, systems) for c, g in
                                 _group(scored, lambda r: str(r.get("category", "-"))).items()}
    return result


def evaluate(cfg: EvalConfig) -> dict:
    """Score ``cfg.predictions``; write ``cfg.output`` (JSON) when given; return the metrics.

    A file of preference data (chosen/rejected answers, any layout ``convert`` reads) is scored by the
    models instead: preference accuracy and mean margin, base vs tuned (:mod:`instructglm.eval.preference`)."""
    from instructglm.convert.pref_files import preference_inputs

    if Path(cfg.predictions).is_file() and preference_inputs([Path(cfg.predictions)]):
        from instructglm.eval.preference import evaluate_preferences

        result = evaluate_preferences(cfg.predictions, cfg.adapter, cfg.model, cfg.template, cfg.limit)
    else:
        result = {"predictions": str(cfg.predictions), **evaluate_rows(read_predictions(cfg.predictions))}
    if cfg.output:
        write_json(cfg.output, result)
    return result


def table_columns(systems: list[str]) -> list[tuple[str, str, str]]:
    """``(kind, system, header)`` per table column: each system's scores, then its delta against
    ``base`` (headed ``delta`` when only one system is compared with the base)."""
    compared = [s for s in systems if s != "base"] if "base" in systems else []
    columns = [("scores", s, s) for s in systems]
    return columns + [("delta", s, "delta" if len(compared) == 1 else f"delta_{s}") for s in compared]


def cell(block: dict, kind: str, system: str, metric: str) -> float | None:
    """A number of the table: a system's score or its delta (None where the group has no answer)."""
    value = block.get(kind, {}).get(system)
    return None if value is None else value[metric]


def _text(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if kind == "delta" else f"{value:.1f}"


def format_table(result: dict) -> str:
    """The metrics as plain-text tables: metric x systems (base, tuned or one per adapter) and their
    deltas, then one line per language and per category (exact match and ROUGE-L); for preference
    data, accuracy and mean margin per system."""
    if result.get("kind") == "preference":
        from instructglm.eval.preference import format_preference_table

        return format_preference_table(result)
    columns = table_columns(list(result["systems"]))
    width = max(9, *(len(head) + 2 for _, _, head in columns))
    overall = result["overall"]
    langs = ", ".join(f"{b['n']} {lang}" for lang, b in result["by_language"].items())
    lines = [f"{result.get('predictions', 'predictions')}: {result['n']} rows ({langs})"
             + (f", {result['skipped_no_reference']} without reference skipped"
                if result.get("skipped_no_reference") else ""), ""]
    lines.append(f"  {'metric':<24}" + "".join(f"{head:>{width}}" for _, _, head in columns))
    for m, label in METRICS.items():
        lines.append(f"  {label:<24}" + "".join(f"{_text(cell(overall, k, s, m), k):>{width}}" for k, s, _ in columns))
    groups = [("language", result["by_language"]), ("category", result.get("by_category", {}))]
    for title, blocks in groups:
        if not blocks or (title == "language" and len(blocks) < 2):
            continue
        span = width * len(columns)
        lines += ["", f"  {'':<25}" + "".join(f"   {head:^{span}}" for head in ("EM", "ROUGE-L")).rstrip(),
                  f"  {title:<20}{'n':>5}" + ("   " + "".join(f"{h:>{width}}" for _, _, h in columns)) * 2]
        for name, block in blocks.items():
            lines.append(f"  {name:<20}{block['n']:>5}" + "".join(
                "   " + "".join(f"{_text(cell(block, k, s, m), k):>{width}}" for k, s, _ in columns)
                for m in ("exact_match", "rougeL")))
    return "\n".join(lines)
