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
