"""What ``train/cpu_process.py``'s two process settings are worth on a CPU, side by side in one run.

Each variant is a fresh process running the real ``instructglm train`` command (LoRA on the embedded
Gemma 3 270M, ``--precision auto``, bench/train.py's Alpaca-like rows) with the settings switched on
or off: neither, malloc keeping freed blocks only, denormal flushing only, both (what ships).
Reported: whole-command seconds, minor page faults and system CPU seconds of the process. Then,
alone, a bf16 softmax over 256 x 262,144 logits spread like a trained model's (standard deviation
30: many fall 87-126 below the row's largest, where exp gives denormal numbers), with and without
denormal flushing set before PyTorch's worker threads start.

    python bench/cpu_process.py                      # 10 steps of 4 rows per variant
    python bench/cpu_process.py --steps 20 --model smollm2-135m

Writes ``bench/results/cpu-process.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/tokenize.py shadows the stdlib
VARIANTS = {"neither": (False, False), "malloc": (True, False), "denormals": (False, True), "both": (True, True)}

SOFTMAX = """
import sys, time
import torch
if sys.argv[1] == "flush":
    torch.set_flush_denormal(True)  # before the worker threads start: they copy the mode
torch.manual_seed(0)
x = (torch.randn(256, 262144) * 30).to(torch.bfloat16)
out = torch.empty_like(x)
torch.softmax(x, -1, out=out)
start = time.perf_counter()
for _ in range(5):
    torch.softmax(x, -1, out=out)
print((time.perf_counter() - start) / 5)
"""


def child(variant: str, data: str, model: str, steps: int) -> None:
    """Train with ``variant``'s settings (this process only); the CLI's own exit follows."""
    import torch

    import instructglm.train.cpu_process as cpu_process
    from instructglm.cli import exit_now, main

    keep, flush = VARIANTS[variant]

    def prepare() -> None:
        if keep:
            cpu_process.keep_freed_blocks()
        if flush:
            torch.set_flush_denormal(True)

    cpu_process.prepare_cpu_process = prepare  # distributed.py looks it up when the backend starts
    code = main(["train", "--dataset", data, "--output-dir", tempfile.mkdtemp(), "--model", model, "--method", "lora",
                 "--per-device-train-batch-size", "4", "--max-steps", str(steps), "--shuffle", "false",
                 "--logging-steps", str(steps), "--precision", "auto"])
    exit_now(code)


def run_variant(variant: str, data: Path, args) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--data", str(data), "--model", args.model,
                           "--steps", str(args.steps)], capture_output=True, text=True,
                          env=dict(os.environ, TQDM_DISABLE="1"))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return {"command_s": round(wall, 1), "minor_page_faults": after.ru_minflt - before.ru_minflt,
            "system_cpu_s": round(after.ru_stime - before.ru_stime, 1),
            "user_cpu_s": round(after.ru_utime - before.ru_utime, 1)}


def softmax_ms(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SOFTMAX, mode], capture_output=True, text=True, check=True)
    return round(float(out.stdout.split()[-1]) * 1e3, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "results" / "cpu-process.json"))
    args = p.parse_args()
    if args.variant:
        return child(args.variant, args.data, args.model, args.steps)
    spec = importlib.util.spec_from_file_location("bench_train", HERE / "train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    from instructglm.models.loading import resolve_model

    resolve_model(args.model)
    data = bench_train.prepare(args.model, Path(tempfile.mkdtemp(prefix="bench-cpu-")), 4 * args.steps, 1024)
    load = round(os.getloadavg()[0], 2)
    rows = {}
    for variant in VARIANTS:
        rows[variant] = run_variant(variant, data, args)
        print(variant, json.dumps(rows[variant]), flush=True)
    softmax = {"plain_ms": softmax_ms("plain"), "denormals_flushed_ms": softmax_ms("flush")}
    result = {"model": args.model, "steps": args.steps, "batch_size": 4, "load_average_at_start": load,
              "variants": rows, "command_neither_vs_both": round(rows["neither"]["command_s"] / rows["both"]["command_s"], 2),
              "softmax_256x262144_bf16_std30": softmax,
              "softmax_plain_vs_flushed": round(softmax["plain_ms"] / softmax["denormals_flushed_ms"], 2)}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
