"""Training throughput: transformers Trainer + PEFT LoRA (dynamic padding) vs ``instructglm train``.

One run of this script measures both, side by side, on the same model, the same tokenized rows in
the same order and the same hyper-parameters. Each engine runs in a fresh child process so that
its peak RSS is its own. Reported: non-padding tokens per second (steps after the first, which
pays one-off start-up costs), peak RSS, the speed ratio, and the first losses of both (they must
agree: the same maths on the same rows).

    python bench/train.py                       # embedded Gemma 3 270M, 10 steps of 8 rows
    python bench/train.py --model DIR --steps 20 --batch-size 8

Rows are an Alpaca-like length distribution generated here (mean about 180 tokens with the
template, like alpaca-en's 187: instruction, an input on half the rows, a long-tailed response),
written by us.
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

# bench/tokenize.py would hide the standard library's tokenize module: drop this folder from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

WORDS = ("the model data answer question write list explain short long simple example result people "
         "city river water light house music table story reason number small large first second time "
         "world language learn train value change method paper system network memory language speed "
         "quality chinese english translate summary context history report market energy health").split()


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(max(1, k))).capitalize() + "."

    rows = []
    for _ in range(n):
        rows.append({"instruction": text(int(rng.uniform(8, 40))),
                     "input": text(int(rng.uniform(10, 120))) if rng.random() < 0.5 else "",
                     "output": text(int(rng.lognormvariate(4.3, 0.7)))})
    return rows


def prepare(model: str, work: Path, n_rows: int, max_len: int) -> Path:
    from instructglm.data.convert import ConvertConfig, convert_files
    from instructglm.data.tokenize import TokenizeConfig, tokenize_file

    (work / "rows.json").write_text(json.dumps(make_rows(n_rows, 0)))
    convert_files(ConvertConfig(inputs=[str(work / "rows.json")], output=str(work / "rows.jsonl")))
    tokenize_file(TokenizeConfig(input=str(work / "rows.jsonl"), output=str(work / "tok"), model=model,
                                 max_seq_length=max_len, overlength="truncate"))
    return work / "tok"


def step_tokens(data_dir: Path, batch: int, steps: int) -> list[int]:
    import datasets

    lengths = [len(x) for x in datasets.load_from_disk(str(data_dir))["input_ids"]]
    return [sum(lengths[i * batch:(i + 1) * batch]) for i in range(steps)]


def run_hf(args) -> dict:
    """The baseline: what the seeds and LLaMA-Factory (without Unsloth) do."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import (AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback,
                              TrainingArguments)

    from instructglm.models import load_tokenizer, resolve_model

    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    data = datasets.load_from_disk(args.data)
    times, losses = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

        def on_log(self, _args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    class InOrder(Trainer):  # the same row order as ours, so losses can be compared
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    targs = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size,
                              max_steps=args.steps, learning_rate=2e-4, lr_scheduler_type="cosine",
                              logging_steps=1, save_strategy="no", report_to=[], seed=0, use_cpu=True,
                              max_grad_norm=1.0, disable_tqdm=True, dataloader_num_workers=0,
                              remove_unused_columns=False)
    trainer = InOrder(model=model, args=targs, train_dataset=data, callbacks=[Timer()],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    trainer.train()
    return {"step_times": times, "losses": losses}


def run_ours(args) -> dict:
    from instructglm.train.trainer import TrainConfig, train

    out = tempfile.mkdtemp()
    result = train(TrainConfig(dataset=args.data, output_dir=out, model=args.model, method="lora", lora_rank=8,
                               lora_alpha=16, lora_dropout=0.0, per_device_train_batch_size=args.batch_size,
                               max_steps=args.steps, learning_rate=2e-4, logging_steps=1, shuffle=False, seed=0))
    tokens = step_tokens(Path(args.data), args.batch_size, args.steps)
    times = [t / r["tokens_per_s"] for t, r in zip(tokens, result["logs"])]
    return {"step_times": times, "losses": [r["loss"] for r in result["logs"]]}


def child(args) -> None:
    result = (run_hf if args.engine == "hf" else run_ours)(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--engine", choices=["hf", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train-cpu.json"))
    args = p.parse_args()
    if args.engine:
        return child(args)

    import torch
    import transformers

    from instructglm.models import resolve_model

    resolve_model(args.model)  # prepare the cache outside the timed children
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = prepare(args.model, work, args.batch_size * args.steps, args.max_len)
    tokens = step_tokens(data, args.batch_size, args.steps)
    results = {}
    for engine in ("hf", "ours"):
        cmd = [sys.executable, __file__, "--engine", engine, "--data", str(data), "--model", args.model,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{engine} failed:\n{proc.stderr[-4000:]}")
        r = json.loads(line[0][7:])
        timed = slice(1, None)  # the first step pays one-off costs
        r["tokens_per_s"] = sum(tokens[timed]) / sum(r["step_times"][timed])
        results[engine] = r
    hf, ours = results["hf"], results["ours"]
    summary = {
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "model": args.model, "steps": args.steps, "batch_size": args.batch_size,
        "mean_tokens_per_row": round(sum(tokens) / (args.steps * args.batch_size), 1),
        "baseline": {"tokens_per_s": round(hf["tokens_per_s"], 1), "peak_rss_mb": round(hf["peak_rss_mb"])},
        "instructglm": {"tokens_per_s": round(ours["tokens_per_s"], 1), "peak_rss_mb": round(ours["peak_rss_mb"])},
        "speedup": round(ours["tokens_per_s"] / hf["tokens_per_s"], 2),
        "peak_rss_ratio": round(ours["peak_rss_mb"] / hf["peak_rss_mb"], 2),
        "first_losses": {"baseline": [round(x, 4) for x in hf["losses"][:5]],
                         "instructglm": [round(x, 4) for x in ours["losses"][:5]]},
    }
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
