"""The SFT demo's held-out exact match under bf16 training, and how far bf16 rounding alone moves it.

``instructglm demo`` trains in bf16 on CPUs with native bf16 (``--precision auto``). Its 64 held-out
answers are a coarse yardstick (one answer is 1.6 points), and bf16 rounds differently whenever the
order of operations changes. This script runs the whole demo (default settings, its own work
directory each, generation fp32 as always) as shipped, then with each of the three bf16 step paths
(the LM head's bf16 softmax, the fused LoRA layers, the fused RMSNorms) switched back to the plain
computation in turn (same maths, other rounding: their gradients are equally close to fp32's), and
once with fp32 training. The spread of the bf16 rows is the noise the demo's figure carries.

    python bench/demo_bf16.py                    # all variants, about 2-4 minutes each
    python bench/demo_bf16.py --variants shipped,fp32

Writes ``bench/results/demo-bf16.json``.
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
VARIANTS = ("shipped", "plain-head", "plain-lora", "plain-norm", "fp32")


def child(variant: str, work: str) -> None:
    """Run the demo with ``variant``'s switch (this process only)."""
    import instructglm.train.loss as loss
    import instructglm.train.model as model
    import instructglm.train.norms as norms
    from instructglm.cli import main
    from instructglm.train.methods.lora import fused

    if variant == "plain-head":
        loss.bf16_head = lambda *a: False  # the fp32 log-softmax of the bf16 logits
    elif variant == "plain-lora":
        fused.fuse_lora_layers = lambda m: 0  # PEFT's forward
    elif variant == "plain-norm":
        norms.fuse_rms_norms = lambda m: 0  # transformers' RMSNorm forward
    elif variant == "fp32":
        model.cpu_bf16_instructions = lambda: None  # precision auto then trains in fp32
    sys.exit(main(["demo", "--work-dir", work, "--show", "0"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "results" / "demo-bf16.json"))
    args = p.parse_args()
    if args.variant:
        return child(args.variant, args.work)
    root = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    load = round(os.getloadavg()[0], 2)
    rows = {}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if variant not in VARIANTS:
            sys.exit(f"--variants: unknown '{variant}' (known: {', '.join(VARIANTS)})")
        work = root / variant
        proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--work", str(work)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((work / "summary.json").read_text())
        rows[variant] = {"exact_match": summary["tuned"]["exact_match"], "char_f1": summary["tuned"]["char_f1"],
                         "loss_last": round(summary["loss_last"], 4), "train_s": summary["timings_s"]["train"],
                         "wall_s": summary["wall_s"]}
        print(variant, json.dumps(rows[variant]), flush=True)
    bf16 = [r["exact_match"] for v, r in rows.items() if v != "fp32"]
    result = {"load_average_at_start": load, "variants": rows,
              "bf16_exact_match_range": [min(bf16), max(bf16)] if bf16 else None}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
