"""``report``: one self-contained HTML page about a run (no network: inline CSS, inline SVG).

It shows the run summary, the training loss curve (drawn as SVG from ``trainer_log.jsonl``), the
resolved training config, the metrics of every prediction column (base, tuned or one per adapter,
:func:`instructglm.eval.evaluate.evaluate_rows`) and the held-out answers side by side. For a preference
run (``train --stage dpo|orpo|simpo|kto``) it adds the rewards chart and, when ``eval`` on held-out pairs
was saved (``preference_eval.json``), preference accuracy and margin base vs tuned
(:mod:`instructglm.report.preference`). Every piece of text from files (model answers above all) is
HTML-escaped.

Two layouts are understood::

    RUN_DIR/predictions.jsonl + RUN_DIR/adapter/{trainer_log.jsonl,train_config.yaml,...}   (demo)
    RUN_DIR/{trainer_log.jsonl,train_config.yaml,...} + --predictions FILE                  (train)
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

from instructglm.config import opt
from instructglm.constants import LOSS_PLOT, RUN_INFO, TRAIN_CONFIG, TRAINER_LOG
from instructglm.errors import UserError
from instructglm.eval.evaluate import METRICS, cell, evaluate_rows, prediction_columns, read_predictions, table_columns
from instructglm.eval.metrics import exact_match, normalized_exact_match
from instructglm.files import atomic_file, read_json, read_jsonl
from instructglm.report.preference import find_preference_eval, preference_card, preference_section, rewards_svg
from instructglm.runinfo import RunInfo

TRAIN_FILES = (TRAINER_LOG, TRAIN_CONFIG, RUN_INFO)  # any of them marks a training output directory
PREDICTIONS = "predictions.jsonl"  # the demo's file name
SUMMARY = "summary.json"  # the demo's timings and scores


@dataclass
class ReportConfig:
    run_dir: str = opt(help="run directory: a demo work dir (predictions.jsonl + adapter/) or a train output dir")
    predictions: str | None = opt(None, help="predictions JSONL; default: RUN_DIR/predictions.jsonl")
    output: str | None = opt(None, help="HTML file to write; default: RUN_DIR/report.html", aliases=("-o",))
    title: str | None = opt(None, help="page title; default: 'InstructGLM report: <run dir name>'")
    max_examples: int = opt(500, help="answers shown side by side (the first N rows; 0 = all)", min=0)
    preference_eval: str | None = opt(None, help="preference accuracy and margin, base vs tuned: the JSON of "
                                      "'eval PAIRS --adapter DIR -o FILE'; default: preference_eval.json in the run "
                                      "or training dir, when there is one")


def esc(value) -> str:
    """HTML-escape any value (``None`` -> empty)."""
    return html.escape("" if value is None else str(value), quote=True)


# --------------------------------------------------------------------------------------------
# inputs


def locate(cfg: ReportConfig) -> tuple[Path, Path | None, Path | None]:
    """(run dir, training output dir or None, predictions file or None) for either layout."""
    run = Path(cfg.run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: run directory not found")
    train_dir = next((d for d in (run / "adapter", run) if any((d / f).is_file() for f in TRAIN_FILES)), None)
    if cfg.predictions:
        predictions = Path(cfg.predictions)
        if not predictions.is_file():
            raise UserError(f"--predictions {predictions}: file not found")
    else:
        predictions = run / PREDICTIONS if (run / PREDICTIONS).is_file() else None
    if train_dir is None and predictions is None:
        raise UserError(f"{run}: nothing to report: no {', '.join(TRAIN_FILES)} (in it or in adapter/) "
                        f"and no {PREDICTIONS} (pass --predictions)")
    return run, train_dir, predictions


def read_log(train_dir: Path | None) -> list[dict]:
    """The lines of ``trainer_log.jsonl`` (empty when there is none)."""
    path = train_dir / TRAINER_LOG if train_dir else None
    return read_jsonl(path) if path and path.is_file() else []


def _read_text(path: Path | None) -> str | None:
    return path.read_text(encoding="utf-8") if path and path.is_file() else None


# --------------------------------------------------------------------------------------------
# loss curve


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering ``[low, high]``."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def chart_frame(points: list[tuple[float, float]], ylabel: str, aria: str, width: int = 760, height: int = 320):
    """``(svg parts, x, y)``: an SVG chart's grid, ticks and axis labels for ``points``; ``x``/``y`` map a
    step / value to the drawing (the value axis starts at 0 unless a value is below it)."""
    left, right, top, bottom = 56, 16, 16, 44
    xs = nice_ticks(0, max(p[0] for p in points))
    ys = nice_ticks(min(0.0, min(p[1] for p in points)), max(p[1] for p in points))

    def x(v: float) -> float:
        return left + (v - xs[0]) / (xs[-1] - xs[0]) * (width - left - right)

    def y(v: float) -> float:
        return height - bottom - (v - ys[0]) / (ys[-1] - ys[0]) * (height - top - bottom)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
             f'role="img" aria-label="{aria}">']
    for t in ys:
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}"/>'
                     f'<text class="tick" x="{left - 8}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for t in xs:
        parts.append(f'<text class="tick" x="{x(t):.1f}" y="{height - bottom + 18}" text-anchor="middle">{t:g}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}"/>')
    parts.append(f'<text class="label" x="{(left + width - right) / 2:.0f}" y="{height - 6}" '
                 f'text-anchor="middle">optimizer step</text>')
    parts.append(f'<text class="label" x="14" y="{(top + height - bottom) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(top + height - bottom) / 2:.0f})">{ylabel}</text>')
    return parts, x, y


def loss_svg(log: list[dict], width: int = 760, height: int = 320) -> str:
    """An inline SVG line chart of ``loss`` (and ``eval_loss`` points) against ``step``."""
    train = [(r["step"], r["loss"]) for r in log if "loss" in r and "step" in r]
    evals = [(r["step"], r["eval_loss"]) for r in log if "eval_loss" in r and "step" in r]
    if not train + evals:
        return ""
    parts, x, y = chart_frame(train + evals, "loss", "training loss curve", width, height)
    if train:
        path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in train)
        parts.append(f'<polyline class="train" points="{path}"/>')
        parts += [f'<circle class="train" cx="{x(s):.1f}" cy="{y(v):.1f}" r="3"><title>step {s}: loss {v:.4f}'
                  f'</title></circle>' for s, v in train]
    parts += [f'<rect class="eval" x="{x(s) - 4:.1f}" y="{y(v) - 4:.1f}" width="8" height="8"><title>step {s}: '
              f'eval loss {v:.4f}</title></rect>' for s, v in evals]
    parts.append("</svg>")
    legend = '<span class="key train"></span>train loss'
    if evals:
        legend += ' <span class="key eval"></span>eval loss'
    return "".join(parts) + f'<div class="legend">{legend}</div>' + rewards_svg(log, width, height)


def loss_section(train_dir: Path | None, log: list[dict]) -> str:
    """The loss curve: SVG from the log, else the trainer's ``loss.png`` inlined as base64."""
    svg = loss_svg(log)
    if svg:
        return svg
    png = train_dir / LOSS_PLOT if train_dir else None
    if png and png.is_file():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return f'<img class="chart" alt="training loss curve" src="data:image/png;base64,{data}">'
    return f'<p class="muted">No {TRAINER_LOG} or {LOSS_PLOT} found.</p>'


# --------------------------------------------------------------------------------------------
# metrics and answers


def _delta_cell(value: float) -> str:
    cls = "up" if value > 0 else "down" if value < 0 else ""
    return f'<td class="num delta {cls}">{value:+.1f}</td>'


def _bar_cell(value: float) -> str:
    """A number with a faint bar behind it, as wide as the value in percent."""
    pct = max(0.0, min(100.0, value))
    return f'<td class="num bar" style="--w:{pct:.1f}%">{value:.1f}</td>'


def _number_cell(block: dict, kind: str, system: str, metric: str) -> str:
    value = cell(block, kind, system, metric)
    if value is None:
        return '<td class="num muted">-</td>'
    return _delta_cell(value) if kind == "delta" else _bar_cell(value)


def metrics_table(block: dict, systems: list[str]) -> str:
    """Metric x systems (base, tuned or one per adapter) and their deltas against the base, for one group."""
    columns = table_columns(systems)
    head = "".join(f"<th>{esc(h)}</th>" for _, _, h in columns)
    rows = []
    for m, label in METRICS.items():
        cells = "".join(_number_cell(block, k, s, m) for k, s, _ in columns)
        rows.append(f"<tr><th scope=row>{esc(label)}</th>{cells}</tr>")
    return f'<table class="metrics"><thead><tr><th>metric</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def breakdown_table(title: str, blocks: dict, systems: list[str], metrics=("exact_match", "bleu4", "rougeL")) -> str:
    """One row per group (language or category): n, then every system and delta of a few metrics."""
    columns = table_columns(systems)
    top = "".join(f'<th colspan="{len(columns)}" class="group">{esc(METRICS[m])}</th>' for m in metrics)
    sub = "".join(f"<th>{esc(h)}</th>" for _ in metrics for _, _, h in columns)
    rows = []
    for name, block in blocks.items():
        cells = "".join(_number_cell(block, k, s, m) for m in metrics for k, s, _ in columns)
        rows.append(f'<tr><th scope=row>{esc(name)}</th><td class="num">{block["n"]}</td>{cells}</tr>')
    return (f'<table class="metrics breakdown"><thead><tr><th rowspan=2>{esc(title)}</th><th rowspan=2>n</th>{top}'
            f'</tr><tr>{sub}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def verdict(prediction: str | None, reference: str | None) -> str:
    """CSS class of an answer: ``ok`` (exact match), ``near`` (normalised match only) or ``bad``."""
    if prediction is None or reference is None:
        return "none"
    if exact_match(prediction, reference):
        return "ok"
    return "near" if normalized_exact_match(prediction, reference) else "bad"


def answers_table(rows: list[dict], limit: int) -> str:
    """Prompt / every system's answer / reference side by side, answers coloured by exact match."""
    systems = prediction_columns(rows)
    has_cat = any("category" in r for r in rows)
    shown = rows[:limit] if limit else rows
    head = ('<th class="c-idx">#</th>' + ('<th class="c-cat">category</th>' if has_cat else "") + "<th>prompt</th>"
            + "".join(f"<th>{esc(name)}</th>" for name in systems) + "<th>reference</th>")
    body = []
    for i, r in enumerate(shown):
        ref = r.get("reference")
        cells = f'<td class="num muted">{esc(r.get("index", i))}</td>'
        if has_cat:
            cells += f'<td><span class="tag">{esc(r.get("category", "-"))}</span></td>'
        cells += f'<td class="text prompt">{esc((r.get("prompt") or "").strip())}</td>'
        for column in systems.values():
            cells += f'<td class="text answer {verdict(r.get(column), ref)}">{esc(r.get(column))}</td>'
        cells += f'<td class="text reference">{esc(ref)}</td>'
        body.append(f"<tr>{cells}</tr>")
    note = (f'<p class="muted">Showing the first {len(shown)} of {len(rows)} rows (--max-examples).</p>'
            if len(shown) < len(rows) else "")
    return (f'{note}<table class="answers"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


# --------------------------------------------------------------------------------------------
# page


def summary_cards(info: RunInfo | None, log: list[dict], metrics: dict | None, extra: dict,
                  preference: dict | None = None) -> str:
    """The run at a glance: model, method, steps, loss, held-out size and exact match."""
    cards = []
    for label, key in (("base model", "base_model"), ("method", "method"), ("template", "template"),
                       ("steps", "steps")):
        if info is not None and getattr(info, key) is not None:
            cards.append((label, esc(getattr(info, key))))
    losses = [r["loss"] for r in log if "loss" in r]
    if losses:
        cards.append(("training loss", f"{losses[0]:.3f} &rarr; {losses[-1]:.3f}"))
    if metrics:
        langs = ", ".join(f"{b['n']} {esc(lang)}" for lang, b in metrics["by_language"].items())
        cards.append(("held-out rows", f"{metrics['n']} <small>({langs})</small>"))
        scores = metrics["overall"]["scores"]
        tuned = [s for s in scores if s != "base"]
        named = len(tuned) > 1  # several adapters: say whose score each is
        em = ", ".join(f"{esc(s) + ' ' if named else ''}{scores[s]['exact_match']:.1f}%" for s in tuned) or "-"
        if "base" in scores:
            em = f"{scores['base']['exact_match']:.1f}% &rarr; {em}"
        cards.append(("exact match", em))
    if (card := preference_card(preference)) is not None:
        cards.append(card)
    if extra.get("wall_s") is not None:
        cards.append(("wall time", f"{float(extra['wall_s']):.0f} s"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in cards) + "</div>"


CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--bg:#f6f8fa;--accent:#0969da;
--ok:#1a7f37;--ok-bg:#dafbe1;--near:#9a6700;--near-bg:#fff8c5;--bad:#cf222e;--bad-bg:#ffebe9}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;line-height:1.5;font-size:14px;
font-family:-apple-system,BlinkMacSystemFont,"Segoe UI","Helvetica Neue",Arial,"PingFang SC","Hiragino Sans GB",
"Microsoft YaHei","Noto Sans CJK SC","Source Han Sans SC","WenQuanYi Micro Hei",sans-serif}
main{max-width:1160px;margin:0 auto;padding:32px 24px 64px}
header{border-bottom:1px solid var(--line);padding-bottom:16px;margin-bottom:8px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:36px 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:20px 0 8px}
.muted{color:var(--muted)}small{color:var(--muted);font-weight:400}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Noto Sans Mono CJK SC",monospace;
font-size:12.5px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.card{background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:10px 14px;min-width:130px}
.card .k{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:17px;font-weight:600}
.chart{width:100%;max-width:760px;height:auto;display:block}
.chart .grid{stroke:#eaeef2}.chart .axis{stroke:#8c959f}
.chart .tick{font-size:11px;fill:var(--muted)}.chart .label{font-size:12px;fill:var(--fg)}
.chart polyline.train{fill:none;stroke:var(--accent);stroke-width:2}
.chart circle.train{fill:var(--accent)}.chart rect.eval{fill:#bf8700}
.legend{font-size:12px;color:var(--muted);margin:4px 0 0 56px}
.key{display:inline-block;width:14px;height:4px;margin:0 6px 3px 0;vertical-align:middle;background:var(--accent)}
.key.eval{width:8px;height:8px;background:#bf8700;margin-left:12px}
.key.ok{background:var(--ok-bg);border:1px solid var(--ok);height:12px}
.key.near{background:var(--near-bg);border:1px solid var(--near);height:12px;margin-left:12px}
.key.bad{background:var(--bad-bg);border:1px solid var(--bad);height:12px;margin-left:12px}
table{border-collapse:collapse;margin:8px 0 16px}
th,td{border:1px solid var(--line);padding:6px 10px;vertical-align:top;text-align:left}
thead th{background:var(--bg);font-weight:600}
th.group{text-align:center}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.bar{background:linear-gradient(90deg,#ddf4ff var(--w),transparent var(--w))}
td.delta.up{color:var(--ok);font-weight:600}td.delta.down{color:var(--bad);font-weight:600}
table.metrics tbody th{font-weight:500;white-space:nowrap}
table.answers{width:100%;table-layout:fixed}
table.answers th.c-idx{width:48px}table.answers th.c-cat{width:128px}
td.text{white-space:pre-wrap;word-break:break-word;overflow-wrap:anywhere}
td.prompt{color:var(--muted);font-size:12.5px}
td.answer.ok{background:var(--ok-bg);box-shadow:inset 3px 0 var(--ok)}
td.answer.near{background:var(--near-bg);box-shadow:inset 3px 0 var(--near)}
td.answer.bad{background:var(--bad-bg);box-shadow:inset 3px 0 var(--bad)}
td.reference{background:var(--bg)}
.tag{display:inline-block;background:#eef1f4;border-radius:10px;padding:0 8px;font-size:12px;white-space:nowrap}
pre{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:12px 14px;overflow:auto;
max-height:560px;margin:0}
.cols{display:flex;gap:20px;flex-wrap:wrap}.cols>div{flex:1 1 360px;min-width:0}
footer{margin-top:48px;color:var(--muted);font-size:12px}
"""

METRIC_NOTES = ("Scores in percent. Exact match compares the stripped answer with the reference; the normalised "
                "form also ignores case, edge punctuation and spacing. BLEU-4: sacrebleu corpus BLEU "
                "(Chinese rows tokenized by character with its zh tokenizer, English rows with 13a; n-gram orders "
                "absent from the whole set are left out). ROUGE: rouge-score F-measure averaged over rows "
                "(Chinese by character, English by word); ROUGE-2 is 0 for answers shorter than two tokens. "
                "A row is Chinese when its reference contains CJK characters.")


def config_section(config: str | None, info: RunInfo | None) -> str:
    """The resolved training config (``train_config.yaml``) and the run info next to it."""
    parts = ['<section id="config"><h2>Configuration</h2><div class="cols">']
    parts.append(f'<div><h3>{TRAIN_CONFIG}</h3><pre>{esc(config)}</pre></div>' if config else
                 f'<div><p class="muted">No {TRAIN_CONFIG} found.</p></div>')
    if info is not None:
        text = json.dumps(info.to_json(), indent=2, ensure_ascii=False)
        parts.append(f'<div><h3>{RUN_INFO}</h3><pre>{esc(text)}</pre></div>')
    return "".join(parts) + "</div></section>"


def metrics_section(metrics: dict | None) -> str:
    """Overall metrics table, then the per-language and per-category breakdowns."""
    parts = ['<section id="metrics"><h2>Metrics</h2>']
    if metrics:
        systems = list(metrics["systems"])
        parts.append(f'<p class="muted">{esc(METRIC_NOTES)}</p>{metrics_table(metrics["overall"], systems)}')
        if len(metrics["by_language"]) > 1:
            parts.append(f'<h3>By language</h3>{breakdown_table("language", metrics["by_language"], systems)}')
        if metrics.get("by_category"):
            parts.append(f'<h3>By category</h3>{breakdown_table("category", metrics["by_category"], systems)}')
    else:
        parts.append('<p class="muted">No predictions file: run <code>instructglm infer --compare-base</code> '
                     'and pass it with <code>--predictions</code>.</p>')
    return "".join(parts) + "</section>"


def render(title: str, run: Path, train_dir: Path | None, predictions: Path | None, rows: list[dict],
           metrics: dict | None, max_examples: int, preference: dict | None = None) -> str:
    """The whole HTML page as a string."""
    log = read_log(train_dir)
    info = RunInfo.load(train_dir) if train_dir else None
    extra = read_json(run / SUMMARY) if (run / SUMMARY).is_file() else {}
    config = _read_text(train_dir / TRAIN_CONFIG) if train_dir else None
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    sources = [f"run <code>{esc(run.resolve())}</code>"]
    if predictions:
        sources.append(f"predictions <code>{esc(predictions)}</code>")
    parts = [f"<header><h1>{esc(title)}</h1><div class=muted>{' &middot; '.join(sources)} &middot; "
             f"generated {generated}</div>{summary_cards(info, log, metrics, extra, preference)}</header>"]
    parts.append(f'<section id="loss"><h2>Training loss</h2>{loss_section(train_dir, log)}</section>')
    parts.append(config_section(config, info))
    parts.append(preference_section(preference, extra.get("behaviour")))
    if metrics or not preference:  # a preference run without generated answers has no text metrics to show
        parts.append(metrics_section(metrics))
    if rows:
        legend = ('<div class="legend" style="margin-left:0"><span class="key ok"></span>exact match'
                  '<span class="key near"></span>matches after normalisation<span class="key bad"></span>wrong</div>')
        parts.append(f'<section id="answers"><h2>Answers side by side</h2>{legend}'
                     f'{answers_table(rows, max_examples)}</section>')
    parts.append("<footer>Written by <code>instructglm report</code>; this file is self-contained.</footer>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main>{''.join(parts)}</main></body></html>\n")


def write_report(cfg: ReportConfig) -> Path:
    """Write the HTML report for ``cfg.run_dir``; return its path."""
    run, train_dir, predictions = locate(cfg)
    rows = read_predictions(predictions) if predictions else []
    metrics = evaluate_rows(rows) if any(r.get("reference") is not None for r in rows) else None
    preference = find_preference_eval(cfg.preference_eval, run, train_dir)
    title = cfg.title or f"InstructGLM report: {run.resolve().name}"
    out = Path(cfg.output) if cfg.output else run / "report.html"
    with atomic_file(out) as f:
        f.write(render(title, run, train_dir, predictions, rows, metrics, cfg.max_examples, preference))
    return out
