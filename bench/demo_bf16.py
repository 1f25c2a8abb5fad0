"""The SFT demo's held-out exact match under bf16 training, and how far bf16 rounding alone moves it.

``instructglm demo`` trains in bf16 on CPUs with native bf16 (``--precision auto``). Its 64 held-out
answers are a coarse yardstick (one answer is 1.6 points), and bf16 rounds differently whenever the
order of operations changes. This script runs the whole demo (default settings, its own work
directory each, generation fp32 as always) as shipped, then with each of the bf16 step paths (the
LM head's bf16 softmax, the fused LoRA layers, the fused RMSNorms, the per-example attention)
switched back to the plain computation in turn (same maths, other rounding), and once with fp32
training; ``--seeds`` repeats each with other training seeds (the demo's own is 42: LoRA's initial
weights and the row order change), so the bf16-vs-fp32 gap can be told from the seed's noise.

    python bench/demo_bf16.py                                  # all variants, seed 42: 2-4 minutes each
    python bench/demo_bf16.py --variants shipped,fp32 --seeds 42,1,2

Writes ``bench/results/demo-bf16.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/tokenize.py shadows the stdlib
VARIANTS = ("shipped", "plain-head", "plain-lora", "plain-norm", "plain-attention", "fp32")
DEMO_SEED = 42


def child(variant: str, work: str, seed: int) -> None:
    """Run the demo with ``variant``'s switch and training seed ``seed`` (this process only)."""
    import dataclasses

    import instructglm.train as train
    import instructglm.train.attention as attention
    import instructglm.train.loss as loss
    import instructglm.train.model as model
    import instructglm.train.norms as norms
    from instructglm.cli import main
    from instructglm.train.methods.lora import fused

    real_train = train.train
    train.train = lambda cfg: real_train(dataclasses.replace(cfg, seed=seed))  # the demo's _tune imports it late

    if variant == "plain-head":
        loss.bf16_head = lambda *a: False  # the fp32 log-softmax of the bf16 logits
    elif variant == "plain-lora":
        fused.fuse_lora_layers = lambda m: 0  # PEFT's forward
    elif variant == "plain-norm":
        norms.fuse_rms_norms = lambda m: 0  # transformers' RMSNorm forward
    elif variant == "plain-attention":
        attention.use_packed_attention = lambda m: False  # SDPA over the packed rows with their block mask
    elif variant == "fp32":
        model.cpu_bf16_instructions = lambda: None  # precision auto then trains in fp32
    sys.exit(main(["demo", "--work-dir", work, "--show", "0"]))


def run_variant(variant: str, seed: int, work: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--seed", str(seed), "--work", str(work)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{variant} (seed {seed}) failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((work / "summary.json").read_text())
    return {"exact_match": summary["tuned"]["exact_match"], "char_f1": summary["tuned"]["char_f1"],
            "loss_last": round(summary["loss_last"], 4), "train_s": summary["timings_s"]["train"],
            "wall_s": summary["wall_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default=str(DEMO_SEED), help="comma-separated training seeds (the demo's: 42)")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "results" / "demo-bf16.json"))
    args = p.parse_args()
    if args.variant:
        return child(args.variant, args.work, args.seed)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in variants:
        if variant not in VARIANTS:
            sys.exit(f"--variants: unknown '{variant}' (known: {', '.join(VARIANTS)})")
    seeds = [int(x) for x in args.seeds.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    load = round(os.getloadavg()[0], 2)
    rows: dict = {v: {"seeds": {}} for v in variants}
    for seed in seeds:  # seed by seed, so a partial run still compares the variants on the same seeds
        for variant in variants:
            row = run_variant(variant, seed, root / f"{variant}-{seed}")
            rows[variant]["seeds"][str(seed)] = row
            print(variant, seed, json.dumps(row), flush=True)
    for row in rows.values():
        row["exact_match_mean"] = round(sum(r["exact_match"] for r in row["seeds"].values()) / len(seeds), 2)
    bf16 = [r["exact_match"] for v, row in rows.items() if v != "fp32" for r in row["seeds"].values()]
    result = {"load_average_at_start": load, "seeds": seeds, "variants": rows,
              "bf16_exact_match_range": [min(bf16), max(bf16)] if bf16 else None}
    if "shipped" in rows and "fp32" in rows:
        result["fp32_minus_shipped_mean"] = round(rows["fp32"]["exact_match_mean"] - rows["shipped"]["exact_match_mean"], 2)
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
