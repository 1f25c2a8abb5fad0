"""Greedy generation in fp32 vs bf16 on the demo's held-out prompts: time, and how many answers differ.

Why ``infer``/``serve`` generate in fp32 even where training computes in bf16 (``--precision auto``):
this measures both precisions on one machine in one run, on the embedded base model or with an
adapter (e.g. the one ``make demo`` trains), through the same :class:`instructglm.generation.Engine`
``infer`` uses (prompts sorted by length, batches of 16). Results go to ``bench/results/``.

    python bench/generate_bf16.py                                  # base Gemma 3 270M
    python bench/generate_bf16.py --adapter runs/demo/adapter      # with the SFT demo's adapter
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/tokenize.py vs the stdlib's
TEST_SET = HERE.parent / "src" / "instructglm" / "demo" / "data" / "test.json"


def answers(model_name: str, adapter: str | None, dtype, max_new: int, batch: int) -> dict:
    """Load the model in ``dtype`` (the base weights; an adapter keeps its own), answer every held-out prompt."""
    from instructglm.convert import read_conversations
    from instructglm.generation import Engine, SamplingConfig
    from instructglm.models import loading
    from instructglm.models.adapters import load_with_adapters
    from instructglm.templates import get_template

    plain = loading.load_model
    loading.load_model = lambda path, *a, **k: plain(path, dtype, *a[1:], **{x: y for x, y in k.items() if x != "dtype"})
    try:
        model, tok, _ = load_with_adapters(model_name, {"demo": adapter} if adapter else {})
    finally:
        loading.load_model = plain
    template = get_template("alpaca")
    engine, sampling = Engine(model, tok), SamplingConfig(max_new_tokens=max_new)
    prompts = engine.prompts_ids(template, [c.prompt for c in read_conversations(TEST_SET)])
    engine.generate([prompts[0][:8]], sampling, template.stop)  # warm-up
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    start = time.perf_counter()
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        for i, text in zip(idx, engine.generate([prompts[i] for i in idx], sampling, template.stop)):
            out[i] = text
    return {"seconds": round(time.perf_counter() - start, 1), "load_average": os.getloadavg()[0], "answers": out}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--adapter", default=None, help="an adapter directory (default: the base model alone)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--output", default=None, help="default: bench/results/generate-bf16[-adapter].json")
    args = ap.parse_args()
    runs = {name: answers(args.model, args.adapter, dtype, args.max_new_tokens, args.batch_size)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    a, b = runs["fp32"]["answers"], runs["bf16"]["answers"]
    differ = [i for i in range(len(a)) if a[i] != b[i]]
    result = {"model": args.model, "adapter": args.adapter, "max_new_tokens": args.max_new_tokens,
              "prompts": len(a), "answers_that_differ": len(differ),
              "bf16_speed_vs_fp32": round(runs["fp32"]["seconds"] / runs["bf16"]["seconds"], 2),
              "differences": [{"prompt": i, "fp32": a[i], "bf16": b[i]} for i in differ], "runs": runs}
    out = Path(args.output or HERE / "results" / f"generate-bf16{'-adapter' if args.adapter else ''}.json")
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{len(differ)} of {len(a)} answers differ; bf16 is {result['bf16_speed_vs_fp32']}x fp32's speed; {out}")


if __name__ == "__main__":
    main()
