"""``eval``: score predictions (exact match, BLEU-4, ROUGE), overall, per language and per category."""

from instructglm.eval.evaluate import EvalConfig, evaluate, format_table

__all__ = ["EvalConfig", "evaluate", "format_table"]
