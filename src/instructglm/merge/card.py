"""The model card (``README.md``) of a merged model: what went in, how the merge was checked, metrics."""

from __future__ import annotations

from pathlib import Path

from instructglm.errors import UserError
from instructglm.files import read_json
from instructglm.report.report import SUMMARY

METRIC_FILES = (SUMMARY, "metrics.json")  # the demo's summary; 'eval -o metrics.json'
MAX_METRICS = 40


def _numbers(value, prefix: str = "", depth: int = 0) -> dict:
    """The numeric leaves of a JSON value, two levels deep, keyed ``a.b.c``."""
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)):
        return {prefix: value}
    if isinstance(value, dict) and depth < 2:
        found: dict = {}
        for k, v in value.items():
            found.update(_numbers(v, f"{prefix}.{k}" if prefix else str(k), depth + 1))
        return found
    return {}


def adapter_metrics(adapter: str) -> tuple[str, dict] | None:
    """Numeric results from a ``summary.json``/``metrics.json`` in the adapter directory or next to it."""
    for folder in (Path(adapter), Path(adapter).parent):
        for name in METRIC_FILES:
            path = folder / name
            if not path.is_file():
                continue
            try:
                numbers = _numbers(read_json(path))
            except (UserError, OSError):  # an unreadable metrics file only leaves the card without metrics
                continue
            if numbers:
                return str(path), dict(list(numbers.items())[:MAX_METRICS])
    return None


def _known(value) -> str:
    return "?" if value is None else str(value)


def model_card(base: str, chain: list, template: str, check: dict, n_probes: int) -> str:
    """Markdown with a Hugging Face metadata header; ``chain`` holds the merged links, in order."""
    base_line = f"base_model: {base}\n" if base.count("/") == 1 and not Path(base).exists() else ""
    lines = ["---", f"{base_line}library_name: transformers", "tags:", "- instructglm", "- merged",
             *[f"- {m}" for m in dict.fromkeys(link.info.method for link in chain)], "---", "",
             "# Merged model", "",
             "Written by `instructglm merge`: the trained weights below folded into the base model, in order.", "",
             f"- **Base model:** `{base}`", f"- **Prompt template:** `{template}` (also the tokenizer's "
             f"`chat_template`)", f"- **Saved dtype:** {check['dtype']}", "", "## Adapters", "",
             "| # | adapter | method | dataset | steps |", "|---|---|---|---|---|"]
    for i, link in enumerate(chain, 1):
        lines.append(f"| {i} | `{link.path}` | {link.info.method} | `{_known(link.info.dataset)}` | "
                     f"{_known(link.info.steps)} |")
    lines += ["", "## Merge check", "",
              f"Logits on {n_probes} probe prompts, merged vs base + adapters applied in order (fp32): "
              f"max |diff| {check['max_abs_logit_diff']:.2e} (tolerance {check['tolerance']:.0e}); the adapters "
              f"changed the logits by up to {check['adapter_effect']:.2e}.",
              f"Saved as {check['dtype']} (max |logit diff| from the cast: {check['cast_logit_diff']:.2e}); "
              f"the written files reproduce the saved model within {check['readback_diff']:.2e}.", ""]
    for link in chain:
        found = adapter_metrics(link.path)
        if found:
            source, values = found
            lines += [f"## Metrics of `{link.path}` (from `{source}`)", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in values.items()]
            lines.append("")
    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'tok = AutoTokenizer.from_pretrained("PATH")', 'model = AutoModelForCausalLM.from_pretrained("PATH")',
              'text = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], '
              'add_generation_prompt=True, tokenize=False)', "```", ""]
    return "\n".join(lines)
