"""``eval`` on held-out preference data: does the model prefer the chosen answer, base vs tuned?

For each pair the score is the length-normalised log-probability margin: the chosen answer's
token-mean log-probability minus the rejected one's, both given the prompt rendered with the
adapters' template. Reported per system (``base``: adapters off; then each adapter): preference
accuracy (share of pairs with a positive margin, in percent) and the mean margin (nats per token).
Any preference layout ``convert`` reads is accepted (KTO completions are left out: they have no pair).
"""

from __future__ import annotations

from contextlib import nullcontext

from instructglm.errors import UserError

BATCH = 8


def pair_margins(model, tokenizer, template, prefs, batch_size: int = BATCH) -> list[float]:
    """Chosen minus rejected token-mean log-probability of every pair, in order."""
    import torch

    from instructglm.tokenize.encode import SegmentEncoder
    from instructglm.tokenize.pairs import encode_preference
    from instructglm.train.preference.collate import PAIR, collate_sequences
    from instructglm.train.preference.logprobs import sequence_logps

    encoder = SegmentEncoder(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    margins: list[float] = []
    for start in range(0, len(prefs), batch_size):
        columns: dict[str, list] = {k: [] for k in ("prompt_ids", "chosen_ids", "chosen_labels", "rejected_ids",
                                                    "rejected_labels", "label")}
        for pref in prefs[start:start + batch_size]:
            prompt, ((c_ids, c_lab, _), (r_ids, r_lab, _)) = encode_preference(encoder, template, pref)
            for key, value in zip(columns, (prompt, c_ids, c_lab, r_ids, r_lab, PAIR)):
                columns[key].append(value)
        batch = {k: v.to(device) for k, v in collate_sequences(columns, pad, None).items()}
        with torch.no_grad():
            sums, counts = sequence_logps(model, batch, len(batch["desirable"]))
        mean = (sums / counts.clamp(min=1)).cpu()
        b = len(mean) // 2
        margins += (mean[:b] - mean[b:]).tolist()
    return margins


def summarize(margins: list[float]) -> dict:
    return {"n": len(margins), "accuracy": round(100 * sum(m > 0 for m in margins) / len(margins), 1),
            "mean_margin": round(sum(margins) / len(margins), 4)}


def evaluate_preferences(data: str, adapters: list[str] | None, model: str | None = None,
                         template: str | None = None, limit: int | None = None) -> dict:
    """Preference accuracy and mean margin of ``data`` for the base model and each adapter."""
    from instructglm.convert.pref_files import read_preference_file
    from instructglm.generation.loading import choose_adapters
    from instructglm.models.adapters import load_with_adapters
    from instructglm.templates import get_template

    prefs = [p for p in read_preference_file(data) if p.is_pair][:limit or None]
    if not prefs:
        raise UserError(f"{data}: no chosen/rejected pairs to evaluate")
    named, template_name = choose_adapters(adapters, template)
    loaded, tokenizer, names = load_with_adapters(model, named)
    tmpl = get_template(template_name, tokenizer)
    systems: dict[str, dict] = {}
    per_pair: dict[str, list[float]] = {}
    adapter_model = hasattr(loaded, "disable_adapter")
    if adapter_model or not named:
        with loaded.disable_adapter() if adapter_model else nullcontext():
            per_pair["base"] = pair_margins(loaded, tokenizer, tmpl, prefs)
    for name in names:
        if adapter_model:
            loaded.set_adapter(name)
        per_pair[name if len(names) > 1 else "tuned"] = pair_margins(loaded, tokenizer, tmpl, prefs)
    for system, margins in per_pair.items():
        systems[system] = summarize(margins)
    result = {"kind": "preference", "data": str(data), "n": len(prefs), "template": tmpl.name, "systems": systems}
    if "base" in systems:
        result["delta"] = {s: {k: round(v[k] - systems["base"][k], 4) for k in ("accuracy", "mean_margin")}
                           for s, v in systems.items() if s != "base"}
    return result


def format_preference_table(result: dict) -> str:
    lines = [f"{result['data']}: {result['n']} preference pairs (template {result['template']})", "",
             f"  {'system':<12}{'accuracy %':>12}{'mean margin':>14}"]
    for name, s in result["systems"].items():
        lines.append(f"  {name:<12}{s['accuracy']:>12.1f}{s['mean_margin']:>14.4f}")
    for name, d in result.get("delta", {}).items():
        lines.append(f"  {'delta ' + name:<12}{d['accuracy']:>+12.1f}{d['mean_margin']:>+14.4f}")
    lines.append("  (margin: chosen minus rejected token-mean log-probability, nats per token)")
    return "\n".join(lines)
