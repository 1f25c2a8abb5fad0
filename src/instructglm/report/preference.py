"""The rewards chart of a preference run (``train --stage dpo|orpo|simpo|kto``), shown beside its loss curve:
the chosen and rejected rewards and their margin per logged step, and the reward accuracy in the tooltips."""

from __future__ import annotations

SERIES = (("rewards_chosen", "chosen reward", "#2e7d32"), ("rewards_rejected", "rejected reward", "#c62828"),
          ("reward_margin", "margin", "#1565c0"))


def rewards_svg(log: list[dict], width: int = 760, height: int = 320) -> str:
    """An inline SVG of the rewards against ``step``; empty for an SFT run."""
    from instructglm.report.report import chart_frame, esc

    lines = {key: [(r["step"], r[key]) for r in log if key in r and "step" in r] for key, _, _ in SERIES}
    points = [p for series in lines.values() for p in series]
    if not points:
        return ""
    accuracy = {r["step"]: r["reward_accuracy"] for r in log if "reward_accuracy" in r}
    parts, x, y = chart_frame(points, "reward", "preference rewards", width, height)
    legend = []
    for key, label, colour in SERIES:
        if not lines[key]:
            continue
        path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in lines[key])
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>step {s}: {esc(label)} '
                  f'{v:.4f}' + (f", accuracy {accuracy[s]:.2f}" if s in accuracy else "") + "</title></circle>"
                  for s, v in lines[key]]
        legend.append(f'<span class="key" style="background:{colour}"></span>{esc(label)}')
    parts.append("</svg>")
    return "<h3>Rewards</h3>" + "".join(parts) + f'<div class="legend">{" ".join(legend)}</div>'


PREF_EVAL = "preference_eval.json"  # what the demo writes; ``eval PAIRS --adapter DIR -o DIR/preference_eval.json``
BEHAVIOUR = {"one_short_answer": "one short answer", "correct": "correct (normalised exact match)"}


def find_preference_eval(given: str | None, *dirs) -> dict | None:
    """The ``eval`` result on preference data: ``given`` (``--preference-eval``; a UserError when it is not
    one), else ``preference_eval.json`` in the first of ``dirs`` that has it; None when there is none."""
    from pathlib import Path

    from instructglm.errors import UserError
    from instructglm.files import read_json

    if given:
        path = Path(given)
        if not path.is_file():
            raise UserError(f"--preference-eval {path}: file not found")
        result = read_json(path)
        if not isinstance(result, dict) or result.get("kind") != "preference" or "systems" not in result:
            raise UserError(f"--preference-eval {path}: not the output of 'instructglm eval' on preference data "
                            f"(eval PAIRS --adapter DIR -o FILE)")
        return result
    for d in dirs:
        if d is not None and (Path(d) / PREF_EVAL).is_file():
            return read_json(Path(d) / PREF_EVAL)
    return None


def preference_card(result: dict | None) -> tuple[str, str] | None:
    """The summary card ``preference accuracy: base% -> tuned%`` (None without a result)."""
    if not result:
        return None
    systems = result["systems"]
    tuned = ", ".join(f"{s['accuracy']:.1f}%" for name, s in systems.items() if name != "base") or "-"
    if "base" in systems:
        tuned = f"{systems['base']['accuracy']:.1f}% &rarr; {tuned}"
    return "preference accuracy", tuned


def _row(label: str, values: list[str]) -> str:
    from instructglm.report.report import esc

    return f'<tr><th scope=row>{esc(label)}</th>' + "".join(f'<td class="num">{v}</td>' for v in values) + "</tr>"


def preference_section(result: dict | None, behaviour: dict | None = None) -> str:
    """Preference accuracy and mean margin of every system on held-out pairs, the deltas against the base,
    and (from the demo's summary) the behaviour measured on generated answers; empty without a result."""
    from instructglm.report.report import esc

    if not result:
        return ""
    systems = list(result["systems"])
    deltas = result.get("delta", {})
    head = "".join(f"<th>{esc(s)}</th>" for s in systems) + "".join(f"<th>&Delta; {esc(s)}</th>" for s in deltas)
    rows = []
    for key, label, form in (("accuracy", "preference accuracy %", "{:.1f}"), ("mean_margin", "mean margin", "{:.4f}")):
        values = [form.format(result["systems"][s][key]) for s in systems]
        values += [("{:+.1f}" if key == "accuracy" else "{:+.4f}").format(d[key]) for d in deltas.values()]
        rows.append(_row(label, values))
    parts = [f'<section id="preference"><h2>Preference accuracy</h2><p class="muted">{result["n"]} held-out pairs '
             f'of <code>{esc(result.get("data", ""))}</code> (template {esc(result.get("template", ""))}). Margin: '
             f'the chosen answer\'s token-mean log-probability minus the rejected one\'s, in nats per token; '
             f'accuracy: the share of pairs with a positive margin.</p>'
             f'<table class="metrics"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>']
    if behaviour:
        names = list(behaviour)
        n = next(iter(behaviour.values()))["n"]
        table = "".join(_row(label + " %", [f"{behaviour[s][key]:.1f}" for s in names])
                        for key, label in BEHAVIOUR.items())
        parts.append(f'<h3>Generated answers ({n} held-out prompts)</h3><table class="metrics"><thead><tr><th></th>'
                     + "".join(f"<th>{esc(s)}</th>" for s in names) + f'</tr></thead><tbody>{table}</tbody></table>')
    return "".join(parts) + "</section>"
