"""Generation throughput: ``instructglm infer``'s batched path vs the seeds' one-prompt-at-a-time loop.

Both run on the same loaded model, the same prompt ids (the embedded demo test set rendered with
the alpaca template) and the same settings (greedy, ``--max-new-tokens``):

* seeds' loop: ``model.generate`` once per prompt, stopping at EOS or max_new_tokens, then the
  answer is decoded and cut at the template's next turn marker;
* ours: :class:`instructglm.generation.Engine` as ``infer`` uses it: prompts sorted by
  length, left-padded batches, generation stopped per row at EOS or at the turn marker.

Reported: wall time of each, the speed ratio, and how many answers differ (greedy decoding of a
left-padded batch can differ from one-at-a-time decoding where two logits are within float
rounding; such rows are listed, not hidden). Results go to ``bench/results/generate.json``.

    python bench/generate.py                     # embedded Gemma 3 270M, 64 prompts, 32 new tokens
    python bench/generate.py --model DIR --prompts 32 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Scripts here may be named like standard modules (bench/tokenize.py would hide the stdlib's tokenize).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
TEST_SET = HERE.parent / "src" / "instructglm" / "demo" / "data" / "test.json"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m", help="base model (default: the embedded gemma3-270m)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts from the demo test set")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16, help="our batch size (infer's default)")
    ap.add_argument("--output", default=str(HERE / "results" / "generate.json"))
    args = ap.parse_args(argv)

    import torch

    from instructglm.convert import read_conversations
    from instructglm.generation import Engine, SamplingConfig
    from instructglm.models.loading import load_model, load_tokenizer, resolve_model
    from instructglm.templates import get_template

    path = resolve_model(args.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path).eval()
    template = get_template("alpaca")
    engine, sampling = Engine(model, tokenizer), SamplingConfig(max_new_tokens=args.max_new_tokens)
    conversations = read_conversations(TEST_SET, limit=args.prompts)
    prompts = engine.prompts_ids(template, [c.prompt for c in conversations])
    n = len(prompts)
    print(f"{n} prompts ({min(map(len, prompts))}-{max(map(len, prompts))} tokens), greedy, "
          f"max_new_tokens {args.max_new_tokens}, torch threads {torch.get_num_threads()}", flush=True)

    def seeds_one(ids: list[int]) -> str:
        x = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=args.max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        return template.cut(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))

    seeds_one(prompts[0][:8])  # warm-up (first-call costs are nobody's speed)
    engine.generate([prompts[0][:8]], sampling, template.stop)

    load = os.getloadavg()
    t0 = time.perf_counter()
    ours: list[str | None] = [None] * n
    order = sorted(range(n), key=lambda i: len(prompts[i]))
    for start in range(0, n, args.batch_size):
        idx = order[start:start + args.batch_size]
        for i, text in zip(idx, engine.generate([prompts[i] for i in idx], sampling, template.stop)):
            ours[i] = text
    t_ours = time.perf_counter() - t0
    print(f"ours (batched, {args.batch_size} per batch): {t_ours:.1f} s", flush=True)

    t0 = time.perf_counter()
    seeds = [seeds_one(p) for p in prompts]
    t_seeds = time.perf_counter() - t0
    print(f"seeds' loop (one prompt at a time): {t_seeds:.1f} s", flush=True)

    mismatches = [{"index": i, "ours": a, "seeds": b} for i, (a, b) in enumerate(zip(ours, seeds)) if a != b]
    result = {
        "model": args.model, "prompts": n, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "decoding": "greedy", "seconds": {"ours_batched": round(t_ours, 2), "seeds_loop": round(t_seeds, 2)},
        "speedup": round(t_seeds / t_ours, 2), "identical_answers": n - len(mismatches),
        "mismatches": mismatches,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": str(next(model.parameters()).device),
                    "load_average_at_start": [round(x, 2) for x in load]},
    }
    print(f"speed-up {result['speedup']}x; identical greedy answers {result['identical_answers']}/{n}")
    for m in mismatches[:5]:
        print(f"  differs at {m['index']}: ours {m['ours']!r} vs seeds {m['seeds']!r}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
