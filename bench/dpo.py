"""DPO throughput and memory: TRL's ``DPOTrainer`` (LoRA through PEFT) vs ``instructglm train --stage dpo``.

One run of this script trains both, side by side, on the same model and pairs in the same order with the
same hyper-parameters (LoRA r=8, alpha 16, no dropout, all linear layers; beta 0.1, sigmoid loss; lr 5e-5
cosine). Engines: TRL as users run it on a CPU (fp32), ``ours`` as users run it (``--precision auto``:
bf16 compute on a CPU with native bf16 matrix instructions, fp32 trainable weights) and ``ours-fp32``
(``--precision fp32``, TRL's arithmetic: its losses must agree with TRL's to a few decimals). Each engine
runs as a fresh child process, so its peak RSS and its whole-command time (start-up, imports, loading,
every step) are its own. Reported per engine: pairs/s and non-padding tokens/s over the steps after the
first (which pays one-off costs) and over the whole command, peak RSS (GPU: peak GPU memory), and the
first losses (step 1 is ln 2 for all: policy = reference).

TRL gets the prompt already rendered with our ``alpaca`` template, so both see the same text; it
tokenizes it itself, so token counts may differ by a BOS or EOS (the non-padding tokens/s of both is
counted on our rows). Needs ``pip install trl`` (a benchmark dependency only).

    python bench/dpo.py                                  # Gemma 3 270M, 6 steps of 4 pairs
    python bench/dpo.py --steps 4 --engines trl,ours     # shorter; without the fp32 run of ours
    python bench/dpo.py --model smollm2-135m --steps 10 --batch-size 8

The pairs are generated here from our own word list: a prompt, a short chosen answer and a longer
rejected one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

WORDS = ("the model data answer question write list explain short long simple example result people city river "
         "water light house music table story reason number small large first second time world language learn "
         "train value change method paper system network memory speed quality report market energy health").split()
HYPER = dict(rank=8, alpha=16, beta=0.1, lr=5e-5)
ENGINES = ("trl", "ours", "ours-fp32")


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(max(1, k))).capitalize() + "."

    return [{"messages": [{"role": "user", "content": text(int(rng.uniform(10, 60)))}],
             "chosen": {"role": "assistant", "content": text(int(rng.lognormvariate(3.2, 0.5)))},
             "rejected": {"role": "assistant", "content": text(int(rng.lognormvariate(4.0, 0.5)))}}
            for _ in range(n)]


def prepare(model: str, work: Path, n: int) -> tuple[Path, Path]:
    from instructglm.tokenize import TokenizeConfig
    from instructglm.tokenize.pairs import tokenize_preferences

    src = work / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(n)))
    tokenize_preferences(TokenizeConfig(input=str(src), output=str(work / "tok"), model=model, max_seq_length=1024))
    return src, work / "tok"


def step_stats(tok_dir: Path, batch: int, steps: int) -> list[int]:
    """Non-padding tokens of each step: every pair's prompt + chosen and prompt + rejected."""
    import datasets

    rows = datasets.load_from_disk(str(tok_dir))
    columns = zip(rows["prompt_ids"], rows["chosen_ids"], rows["rejected_ids"])
    sizes = [2 * len(p) + len(c) + len(r) for p, c, r in columns]
    return [sum(sizes[i * batch:(i + 1) * batch]) for i in range(steps)]


def run_trl(args) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from instructglm.models.loading import resolve_model
    from instructglm.record import read_preferences
    from instructglm.templates import get_template

    gpu = torch.cuda.is_available()
    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    template = get_template("alpaca")
    rows = [{"prompt": "".join(s.text for s in template.prompt(p.prompt)), "chosen": p.chosen.content,
             "rejected": p.rejected.content} for _, p in read_preferences(args.pairs)]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if gpu else torch.float32)
    times, losses = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

        def on_log(self, _args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    class InOrder(DPOTrainer):  # the same pair order as ours
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    config = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size,
                       max_steps=args.steps, learning_rate=HYPER["lr"], lr_scheduler_type="cosine", logging_steps=1,
                       save_strategy="no", report_to=[], seed=0, use_cpu=not gpu, bf16=gpu, beta=HYPER["beta"],
                       loss_type=["sigmoid"], max_length=1024, disable_tqdm=True, max_grad_norm=1.0)
    peft = LoraConfig(r=HYPER["rank"], lora_alpha=HYPER["alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = InOrder(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                      processing_class=tok, peft_config=peft, callbacks=[Timer()])
    trainer.train()
    return {"step_times": times, "losses": losses}


def run_ours(args) -> dict:
    from instructglm.cli import main as cli

    out = tempfile.mkdtemp()
    code = cli(["train", "--dataset", args.data, "--output-dir", out, "--model", args.model, "--stage", "dpo",
                "--beta", str(HYPER["beta"]), "--lora-rank", str(HYPER["rank"]), "--lora-alpha", str(HYPER["alpha"]),
                "--lora-dropout", "0", "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
                "--learning-rate", str(HYPER["lr"]), "--logging-steps", "1", "--shuffle", "false", "--seed", "0",
                "--precision", "fp32" if args.engine == "ours-fp32" else "auto"])
    if code:
        raise SystemExit(f"instructglm train exited with {code}")
    logs = [json.loads(x) for x in (Path(out) / "trainer_log.jsonl").read_text().splitlines()]
    logs = [r for r in logs if "loss" in r]
    tokens = step_stats(Path(args.data), args.batch_size, args.steps)
    return {"step_times": [t / r["tokens_per_s"] for t, r in zip(tokens, logs)], "losses": [r["loss"] for r in logs]}


def child(args) -> None:
    import torch

    result = (run_trl if args.engine == "trl" else run_ours)(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def run_engine(engine: str, args, pairs: Path, data: Path, tokens: list[int]) -> dict:
    cmd = [sys.executable, __file__, "--engine", engine, "--pairs", str(pairs), "--data", str(data), "--model",
           args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    wall = time.perf_counter() - started
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{engine} failed:\n{proc.stderr[-4000:]}")
    r = json.loads(line[0][7:])
    timed = slice(1, None)
    seconds = sum(r["step_times"][timed])
    out = {"load_average_before": round(load, 2), "command_s": round(wall, 1),
           "command_pairs_per_s": round(args.batch_size * args.steps / wall, 3),
           "step_pairs_per_s": round(args.batch_size * (args.steps - 1) / seconds, 3),
           "step_tokens_per_s": round(sum(tokens[timed]) / seconds, 1),
           "first_losses": [round(x, 4) for x in r["losses"][:5]]}
    out["peak_gpu_mb" if "peak_gpu_mb" in r else "peak_rss_mb"] = round(r.get("peak_gpu_mb", r["peak_rss_mb"]))
    return out


def ratios(engines: dict, memory: str) -> dict:
    """Each of our engines against TRL: throughput (higher is better), peak memory (lower is better), and
    the largest gap between the first losses."""
    trl = engines["trl"]
    out = {}
    for name, e in engines.items():
        if name != "trl":
            out[f"{name} vs trl"] = {
                "step_throughput": round(e["step_pairs_per_s"] / trl["step_pairs_per_s"], 2),
                "command_throughput": round(e["command_pairs_per_s"] / trl["command_pairs_per_s"], 2),
                "peak_memory": round(e[memory] / trl[memory], 2),
                "max_first_loss_gap": round(max(abs(a - b) for a, b in zip(e["first_losses"], trl["first_losses"])), 4)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, of: %(default)s")
    p.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--pairs", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help="result file (default: bench/results/dpo-cpu.json or dpo-gpu.json)")
    args = p.parse_args()
    if args.engine:
        return child(args)
    import torch
    import trl  # noqa: F401 (missing: fail now, before anything is prepared)

    from instructglm.models.loading import resolve_model

    gpu = torch.cuda.is_available()
    args.out = args.out or str(Path(__file__).parent / "results" / f"dpo-{'gpu' if gpu else 'cpu'}.json")
    resolve_model(args.model)  # prepare the cache outside the timed children
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    pairs, data = prepare(args.model, work, args.batch_size * args.steps)
    tokens = step_stats(data, args.batch_size, args.steps)
    engines, load = {}, os.getloadavg()[0]
    chosen = args.engines.split(",")
    if "trl" not in chosen or not set(chosen) <= set(ENGINES):
        p.error(f"--engines: trl and any of {', '.join(ENGINES[1:])}")
    for engine in chosen:  # the file is rewritten after each engine: a run cut short keeps what it measured
        engines[engine] = run_engine(engine, args, pairs, data, tokens)
        print(f"{engine}: {json.dumps(engines[engine])}", file=sys.stderr, flush=True)
        write_summary(args, engines, load)


def write_summary(args, engines: dict, load: float) -> None:
    import torch
    import trl

    gpu = torch.cuda.is_available()
    memory = "peak_gpu_mb" if gpu else "peak_rss_mb"
    summary = {"device": torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores, {platform.machine()})",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "load_average_at_start": load, "load_average_at_end": os.getloadavg()[0], "model": args.model,
               "steps": args.steps, "batch_size": args.batch_size, "hyper_parameters": HYPER,
               "versions": {"torch": torch.__version__, "trl": trl.__version__},
               "engines": engines, "ratios": ratios(engines, memory)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
