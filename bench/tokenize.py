"""Benchmark: ``instructglm tokenize`` (whole command, start-up included) against ChatGLM-Tuning's loop.

ChatGLM-Tuning's ``tokenize_dataset_rows.py`` calls ``tokenizer.encode`` once per row
on the prompt and once on the target, concatenates the ids with EOS, skips rows over the limit and
writes the rows through ``datasets.Dataset.from_generator`` + ``save_to_disk``. Both run as child
processes on the same generated Alpaca-like file (Chinese/English mixed rows) and tokenizer; peak
RSS is each child's own (``os.wait4``, i.e. the RUSAGE_CHILDREN figure of that child alone,
its worker processes included). A second, unchanged run of our command measures the reuse path.

    python bench/tokenize.py --rows 52000                # default tokenizer: embedded gemma3-270m
    python bench/tokenize.py --rows 200000 --num-proc 2
    python bench/tokenize.py --rows 2000000 --skip-baseline   # flat memory check

Writes ``bench/results/tokenize.json``. A benchmark, not a test: numbers depend on the machine
and on what else runs on it.
"""

from __future__ import annotations

import sys  # noqa: I001  (first: this file is named like the stdlib module 'tokenize')

sys.path[:] = [p for p in sys.path if p not in ("", __import__("os").path.dirname(__file__) or ".")]

import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

ZH = ["请把下面的句子翻译成英文", "写一首关于秋天的短诗", "解释一下什么是机器学习", "总结这段文字的主要内容",
      "把日期转换成标准格式", "给出三个提高效率的建议", "法国的首都是哪里", "用一句话描述这幅画"]
EN = ["Translate the sentence into Chinese", "Write a short story about a robot", "Explain gradient descent",
      "Summarize the following paragraph", "List three healthy breakfast ideas", "Convert to uppercase"]
WORDS_ZH = "今天 天气 很好 我们 一起 学习 模型 数据 训练 推理 城市 河流 山川 朋友 音乐 科学 历史 未来".split()
WORDS_EN = ("the quick brown fox jumps over lazy dog model data training language river mountain city "
            "friend music science history future learning").split()


def make_row(rng: random.Random) -> dict:
    zh = rng.random() < 0.5
    instr = rng.choice(ZH if zh else EN)
    pool = WORDS_ZH if zh else WORDS_EN
    sep = "" if zh else " "
    inp = sep.join(rng.choice(pool) for _ in range(rng.randint(0, 40))) if rng.random() < 0.6 else ""
    mix = WORDS_EN if zh else WORDS_ZH
    out = sep.join(rng.choice(pool if rng.random() < 0.8 else mix) for _ in range(rng.randint(5, 160)))
    user = {"role": "user", "content": f"{instr}\n\n{inp}" if inp else instr}
    if inp:
        user.update(instruction=instr, input=inp)
    return {"messages": [user, {"role": "assistant", "content": out}]}


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps(make_row(rng), ensure_ascii=False) + "\n")


def seeds_loop(args) -> None:
    """ChatGLM-Tuning's approach, faithfully: one encode call per row and per part, then from_generator."""
    import datasets
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_path)

    def preprocess(example, max_len):
        user = example["messages"][0]
        if user.get("input"):
            context = f"### Instruction:\n{user['instruction']}\n\n### Input:\n{user['input']}\n\n### Response:\n"
        else:
            context = f"### Instruction:\n{user['content']}\n\n### Response:\n"
        target = example["messages"][1]["content"]
        prompt_ids = tokenizer.encode(context, max_length=max_len, truncation=True)
        target_ids = tokenizer.encode(target, max_length=max_len, truncation=True, add_special_tokens=False)
        return {"input_ids": prompt_ids + target_ids + [tokenizer.eos_token_id], "seq_len": len(prompt_ids)}

    def read_jsonl():
        with open(args.input, encoding="utf-8") as f:
            for line in f:
                feature = preprocess(json.loads(line), args.max_seq_length)
                if len(feature["input_ids"]) > args.max_seq_length:  # --skip_overlength
                    continue
                yield feature

    ds = datasets.Dataset.from_generator(read_jsonl, cache_dir=str(Path(args.output) / "cache"))
    ds.save_to_disk(str(Path(args.output) / "data"))


def timed(cmd: list[str], env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "log_tail": out[-600:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=52000, help="rows to generate (52000, 200000, 2000000)")
    p.add_argument("--model", default="gemma3-270m", help="model whose tokenizer to use")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--num-proc", type=int, default=None, help="worker processes for ours (default: all cores)")
    p.add_argument("--skip-baseline", action="store_true", help="only our command (e.g. for the 2M-row run)")
    p.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    p.add_argument("--output", default=str(HERE / "results" / "tokenize.json"))
    p.add_argument("--_seeds", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", dest="out_dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._seeds:
        args.output = args.out_dir
        return seeds_loop(args)

    from instructglm.models.loading import resolve_model

    model_path = resolve_model(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-tokenize-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"rows-{args.rows}.jsonl"
    if not data.is_file():
        t = time.perf_counter()
        write_rows(data, args.rows)
        print(f"generated {args.rows} rows ({data.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    out = work / "ours"
    ours_cmd = [sys.executable, "-m", "instructglm", "tokenize", str(data), "-o", str(out), "--model", args.model,
                "--max-seq-length", str(args.max_seq_length)]
    if args.num_proc:
        ours_cmd += ["--num-proc", str(args.num_proc)]
    results = {"rows": args.rows, "model": args.model, "max_seq_length": args.max_seq_length,
               "cpus": len(os.sched_getaffinity(0)), "num_proc": args.num_proc, "loadavg_before": os.getloadavg()}
    ours = timed([*ours_cmd, "--force"], env)
    stats = json.loads((out / "stats.json").read_text())
    ours.update(rows_per_s=round(args.rows / ours["seconds"]), rows_out=stats["rows_out"],
                num_proc_used=stats.get("num_proc"))
    results["ours"] = ours
    reuse = timed(ours_cmd, env)  # same inputs and options, no --force: reuse
    reuse["up_to_date"] = "up to date" in reuse["log_tail"]
    results["ours_second_run"] = reuse
    if not args.skip_baseline:
        seeds_out = work / "seeds"
        seeds = timed([sys.executable, str(Path(__file__).resolve()), "--_seeds", "--input", str(data),
                       "--model-path", model_path, "--out-dir", str(seeds_out),
                       "--max-seq-length", str(args.max_seq_length)], env)
        seeds["rows_per_s"] = round(args.rows / seeds["seconds"])
        results["seeds_loop"] = seeds
        results["speedup"] = round(seeds["seconds"] / ours["seconds"], 2)
    results["loadavg_after"] = os.getloadavg()
    for r in ("ours", "seeds_loop"):
        if r in results:
            results[r].pop("log_tail", None)

    print(f"\n{args.rows} rows, tokenizer {args.model}, max_seq_length {args.max_seq_length}, "
          f"{results['cpus']} CPUs, load average {results['loadavg_before'][0]:.1f} before")
    print(f"{'':28}{'seconds':>10}{'rows/s':>10}{'peak RSS MB':>13}")
    print(f"{'instructglm tokenize':28}{ours['seconds']:>10.2f}{ours['rows_per_s']:>10}{ours['peak_rss_mb']:>13.1f}")
    print(f"{'  second run (reuse)':28}{reuse['seconds']:>10.2f}{'':>10}{reuse['peak_rss_mb']:>13.1f}"
          f"   {'up to date' if reuse['up_to_date'] else 'NOT reused'}")
    if "seeds_loop" in results:
        s = results["seeds_loop"]
        print(f"{'ChatGLM-Tuning per-row loop':28}{s['seconds']:>10.2f}{s['rows_per_s']:>10}{s['peak_rss_mb']:>13.1f}")
        print(f"speed-up, whole command: {results['speedup']:.2f}x")
    results["ours_second_run"].pop("log_tail", None)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
