"""``demo --stage dpo`` (or orpo, simpo): preference alignment of the embedded base model on embedded pairs.

Under the Alpaca template the base model fails a short task in one of two ways: it echoes the
question (most Chinese prompts) or answers and then invents ``### Answer:`` sections up to the token
limit (most English prompts). The pairs in ``demo/data/pref_{train,test}.json`` (written by
``scripts/make_pref_demo_data.py``) prefer the short answer over one of those two failures, and the
demo measures, on held-out pairs, what the alignment changed:

* preference accuracy and mean margin of chosen over rejected (as ``eval`` reports them), base vs tuned;
* generated answers, base vs tuned: the share that is one short answer (:func:`one_short_answer`)
  and the share that is right (normalised exact match against the chosen answer).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from instructglm.files import read_jsonl, write_json
from instructglm.report.preference import PREF_EVAL

if TYPE_CHECKING:
    from instructglm.demo.demo import DemoConfig

# What a preference demo uses when not told. Without the SFT term, DPO on this base model lowers the chosen
# answers' log-probs with the rejected ones', and 40 steps at 5e-4 turned its answers into noise.
DEFAULTS = {"max_steps": 24, "learning_rate": 2e-4, "sft_weight": 1.0}


def one_short_answer(answer: str | None, question: str, reference: str) -> bool:
    """True when ``answer`` answers once and stops: something other than the question echoed back, with
    no invented ``###`` section or second paragraph, and at most twice the reference's length (+10)."""
    from instructglm.eval.metrics import normalize

    text = (answer or "").strip()
    if not text or "###" in text or "\n\n" in text or len(text) > 2 * len(reference) + 10:
        return False
    first_line = question.strip().splitlines()[0] if question.strip() else ""
    return normalize(text) != normalize(first_line) and not normalize(text).startswith(normalize(first_line) or "\0")


def behaviour(rows: list[dict], column: str) -> dict:
    """Shares (percent) of answers in ``column`` that are one short answer, and that are right."""
    from instructglm.eval.metrics import normalized_exact_match

    n = len(rows)
    short = sum(one_short_answer(r.get(column), r.get("question", ""), r["reference"]) for r in rows)
    right = sum(normalized_exact_match(r.get(column) or "", r["reference"]) for r in rows)
    return {"n": n, "one_short_answer": round(100 * short / n, 1), "correct": round(100 * right / n, 1)}


def prepare_pairs(cfg: DemoConfig, work: Path, data_dir: Path) -> dict:
    """Convert both splits of pairs, tokenize the training one, and write the held-out prompts (with the
    chosen answer as the reference) for generation; the tokenize stats."""
    from instructglm.config import load_config
    from instructglm.convert import ConvertConfig, convert_files
    from instructglm.files import atomic_file, dumps
    from instructglm.tokenize import TokenizeConfig, tokenize_file

    for split in ("train", "test"):
        convert_files(load_config(ConvertConfig, inputs=[str(data_dir / f"pref_{split}.json")],
                                  output=str(work / f"pairs_{split}.jsonl")))
    with atomic_file(work / "prompts_test.jsonl") as out:
        for pair in read_jsonl(work / "pairs_test.jsonl"):
            out.write(dumps({"messages": [*pair["messages"], pair["chosen"]], "category": pair.get("category", "-"),
                             "question": pair["messages"][-1]["content"]}) + "\n")
    return tokenize_file(load_config(TokenizeConfig, input=str(work / "pairs_train.jsonl"),
                                     output=str(work / "tokenized_pairs"), model=cfg.model, template="alpaca",
                                     max_seq_length=256))


def sft_weight(cfg: DemoConfig) -> float:
    return DEFAULTS["sft_weight"] if cfg.sft_weight is None else cfg.sft_weight


def tune_pairs(cfg: DemoConfig, work: Path, steps: int, lr: float) -> dict:
    import shutil

    from instructglm.config import load_config
    from instructglm.train import TrainConfig, train

    shutil.rmtree(work / "adapter", ignore_errors=True)  # the demo's scratch space: each demo trains afresh
    return train(load_config(TrainConfig, dataset=str(work / "tokenized_pairs"), output_dir=str(work / "adapter"),
                             model=cfg.model, stage=cfg.stage, beta=cfg.beta, sft_weight=sft_weight(cfg),
                             method="lora", lora_rank=cfg.lora_rank, lora_alpha=2.0 * cfg.lora_rank,
                             lora_dropout=0.0, learning_rate=lr, warmup_steps=min(5, steps // 4),
                             per_device_train_batch_size=cfg.batch_size, max_steps=steps,
                             logging_steps=max(1, min(5, steps // 4)), seed=42))


def print_behaviour(pref: dict, base: dict, tuned: dict) -> None:
    b, t = pref["systems"]["base"], pref["systems"]["tuned"]
    print(f"  {'held-out (' + str(pref['n']) + ' pairs / ' + str(tuned['n']) + ' prompts)':<34}{'base':>10}"
          f"{'tuned':>10}")
    print(f"  {'preference accuracy %':<34}{b['accuracy']:>10.1f}{t['accuracy']:>10.1f}")
    print(f"  {'mean margin (nats/token)':<34}{b['mean_margin']:>10.3f}{t['mean_margin']:>10.3f}")
    print(f"  {'one short answer %':<34}{base['one_short_answer']:>10.1f}{tuned['one_short_answer']:>10.1f}")
    print(f"  {'correct (normalised EM) %':<34}{base['correct']:>10.1f}{tuned['correct']:>10.1f}")


def run_preference_demo(cfg: DemoConfig, data_dir: Path) -> dict:
    """The preference demo's six stages; the summary it writes to ``summary.json``."""
    from instructglm.constants import LOSS_PLOT
    from instructglm.demo.demo import Stopwatch, answer_held_out, print_examples
    from instructglm.eval.preference import evaluate_preferences
    from instructglm.models.loading import resolve_model
    from instructglm.report.report import PREDICTIONS, SUMMARY, ReportConfig, write_report

    steps = cfg.max_steps or DEFAULTS["max_steps"]
    lr = cfg.learning_rate or DEFAULTS["learning_rate"]
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch()
    print(f"[1/6] preparing model '{cfg.model}' (cached after the first run)", flush=True)
    resolve_model(cfg.model)
    clock.lap("prepare model")
    print("[2/6] convert + tokenize the embedded bilingual preference pairs", flush=True)
    stats = prepare_pairs(cfg, work, data_dir)
    clock.lap("convert + tokenize")
    print(f"      {stats['rows_out']} training pairs", flush=True)
    print(f"[3/6] {cfg.stage.upper()} with LoRA, {steps} steps of {cfg.batch_size} pairs (beta {cfg.beta}, "
          f"SFT weight {sft_weight(cfg)}, lr {lr:g})", flush=True)
    logs = tune_pairs(cfg, work, steps, lr)["logs"]
    clock.lap("train")
    print("[4/6] preference accuracy and margin on the held-out pairs, adapter off (base) and on (tuned)", flush=True)
    pref = evaluate_preferences(str(work / "pairs_test.jsonl"), [str(work / "adapter")], cfg.model,
                                limit=cfg.test_limit)
    write_json(work / PREF_EVAL, pref)
    clock.lap("eval pairs")
    print("[5/6] generating held-out answers with the adapter off (base) and on (tuned)", flush=True)
    rows = answer_held_out(cfg, work, work / "prompts_test.jsonl", work / PREDICTIONS)
    clock.lap("infer")
    base, tuned = behaviour(rows, "base_prediction"), behaviour(rows, "prediction")
    print("[6/6] held-out examples: base model vs tuned model vs chosen answer\n")
    print_examples(rows, cfg.show)
    total = clock.total()
    print_behaviour(pref, base, tuned)
    print(f"  training loss {logs[0]['loss']:.3f} -> {logs[-1]['loss']:.3f}, reward accuracy "
          f"{logs[0].get('reward_accuracy', 0):.2f} -> {logs[-1].get('reward_accuracy', 0):.2f}; "
          f"curves: {work / 'adapter' / LOSS_PLOT}")
    print(f"  wall time {total:.0f}s: " + ", ".join(f"{k} {v:.0f}s" for k, v in clock.stages.items()))
    summary = {"stage": cfg.stage, "preference": pref["systems"], "behaviour": {"base": base, "tuned": tuned},
               "loss_first": logs[0]["loss"], "loss_last": logs[-1]["loss"], "steps": steps, "learning_rate": lr,
               "sft_weight": sft_weight(cfg),
               "timings_s": clock.stages, "wall_s": total}
    write_json(work / SUMMARY, summary)
    print(f"  HTML report: {write_report(ReportConfig(run_dir=str(work)))}")
    return summary
