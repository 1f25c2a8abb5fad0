"""The LM head + cross-entropy on the trained positions: three ways to compute it, side by side.

With Gemma 3's 262k-token vocabulary the head is the largest single piece of a LoRA step. This
script times one forward + backward of ``sum(cross_entropy(hidden @ W.T, targets))`` with a frozen
``W`` (LoRA's case: only the hidden states need a gradient) and measures its peak memory, each way
in a fresh child process so that the peak RSS is its own:

* ``full``: the logits of all rows at once, then ``F.cross_entropy`` (what transformers' loss does
  on the trained positions; its own loss even projects the prompt positions too);
* ``checkpointed``: chunks of rows, each recomputed in the backward pass by
  ``torch.utils.checkpoint`` (InstructGLM's loss before ``LinearCrossEntropy``);
* ``fused``: ``instructglm.train.loss.LinearCrossEntropy``, chunks whose gradient is computed in
  the forward pass, in two reused buffers, with one fused ``log_softmax`` per chunk (with ``--dtype
  bf16``: one bf16 softmax per chunk, straight from the bf16 logits);
* ``fused-fp32-softmax`` (``--dtype bf16`` only): the same with the bf16 logits copied to fp32 for the
  log-softmax and the gradient, as before the bf16 softmax path (``bf16_head`` switched off).

All three must give the same loss and gradient (checked here). The shapes default to Gemma 3 270M
(hidden 640, vocabulary 262,144) and a micro-batch of 8 Alpaca-like rows (about 665 trained tokens);
weights are random (time and memory do not depend on them).

    python bench/head_loss.py
    python bench/head_loss.py --tokens 4096 --vocab 151936 --hidden 896    # Qwen2-0.5B-like
    python bench/head_loss.py --dtype bf16 --tokens 449   # bf16 weights (precision auto on an AMX CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/tokenize.py shadows the stdlib
WAYS = ("full", "checkpointed", "fused")
BF16_WAYS = WAYS + ("fused-fp32-softmax",)


def inputs(args):
    import torch

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=g)
    weight = torch.randn(args.vocab, args.hidden, generator=g) * args.hidden ** -0.5
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[args.dtype])
    return hidden.to(dtype), weight.to(dtype), targets


def loss_fn(way: str, chunk: int):
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from instructglm.train.loss import LinearCrossEntropy

    def ce(h, w, t):
        return F.cross_entropy(F.linear(h, w).float(), t, reduction="sum")

    if way == "full":
        return ce
    if way == "checkpointed":
        def chunked(h, w, t):
            total = h.new_zeros((), dtype=torch.float32)
            for s in range(0, len(t), chunk):
                total = total + checkpoint(ce, h[s:s + chunk], w, t[s:s + chunk], use_reentrant=False)
            return total
        return chunked
    if way == "fused-fp32-softmax":
        import instructglm.train.loss as loss

        loss.bf16_head = lambda *a: False  # this child process only: the fp32 log-softmax path
    return lambda h, w, t: LinearCrossEntropy.apply(h, w, None, t, None, None, chunk)


def child(args) -> None:
    hidden, weight, targets = inputs(args)
    fn = loss_fn(args.way, args.chunk)
    times = []
    for _ in range(args.repeats + 1):  # the first run pays one-off costs and is not timed
        h = hidden.clone().requires_grad_()
        t0 = time.perf_counter()
        loss = fn(h, weight, targets)
        loss.backward()
        times.append(time.perf_counter() - t0)
    print("RESULT " + json.dumps({"seconds": min(times[1:]), "loss": float(loss),
                                  "grad_checksum": float(h.grad.double().abs().sum()),
                                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=665, help="trained positions in the micro-batch")
    p.add_argument("--hidden", type=int, default=640)
    p.add_argument("--vocab", type=int, default=262144)
    p.add_argument("--chunk", type=int, default=0, help="rows per chunk (0: what train uses for this vocabulary)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per way (the fastest counts)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="hidden states and (frozen) head weights in this dtype")
    p.add_argument("--way", choices=BF16_WAYS, help=argparse.SUPPRESS)
    p.add_argument("--out", help="default: bench/results/head-loss-cpu[-bf16].json")
    args = p.parse_args()
    from instructglm.train.loss import head_chunk_rows

    args.chunk = args.chunk or head_chunk_rows(args.vocab)
    if args.way:
        return child(args)
    args.out = args.out or str(HERE / "results" / f"head-loss-cpu{'-bf16' if args.dtype == 'bf16' else ''}.json")
    load = round(os.getloadavg()[0], 2)  # other work on a shared machine
    results = {}
    for way in (BF16_WAYS if args.dtype == "bf16" else WAYS):
        cmd = [sys.executable, __file__, "--way", way, "--tokens", str(args.tokens), "--hidden", str(args.hidden),
               "--vocab", str(args.vocab), "--chunk", str(args.chunk), "--repeats", str(args.repeats),
               "--dtype", args.dtype]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{way} failed:\n{proc.stderr[-3000:]}")
        results[way] = json.loads(line[0][7:])
    ref = results["full"]
    tol = 1e-4 if args.dtype == "fp32" else 1e-3  # bf16: the gradients are rounded to bf16 differently
    for way, r in results.items():  # the same maths: same loss and gradient
        if abs(r["loss"] - ref["loss"]) > tol * abs(ref["loss"]) or \
                abs(r["grad_checksum"] - ref["grad_checksum"]) > 10 * tol * ref["grad_checksum"]:
            sys.exit(f"{way} disagrees with full: {r} vs {ref}")
    import torch

    summary = {
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "dtype": args.dtype, "load_average_at_start": load,
        "shape": {"tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab, "chunk_rows": args.chunk},
        **{way: {"seconds": round(r["seconds"], 3), "peak_rss_mb": round(r["peak_rss_mb"])}
           for way, r in results.items()},
        "speedup_vs_full": round(ref["seconds"] / results["fused"]["seconds"], 2),
        "speedup_vs_checkpointed": round(results["checkpointed"]["seconds"] / results["fused"]["seconds"], 2),
        "loss": round(ref["loss"], 3),
    }
    if "fused-fp32-softmax" in results:
        summary["speedup_vs_fp32_softmax"] = round(results["fused-fp32-softmax"]["seconds"] / results["fused"]["seconds"], 2)
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
