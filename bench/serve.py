"""Serving throughput: 16 concurrent clients vs the same requests one at a time, over HTTP.

The server (``instructglm.serve``) runs in a child process on 127.0.0.1 so that the clients do not
share its interpreter; the clients are threads here, each sending its requests one after the other
with the OpenAI chat API (non-streaming), greedy, ``ignore_eos`` so every answer is exactly
``--max-tokens`` tokens long and both runs do the same work. Reported: requests and generated
tokens per second, p50/p99 latency of each run, and the throughput ratio concurrent/sequential.

    python bench/serve.py                           # a tiny random LLaMA built on the spot
    python bench/serve.py --model gemma3-270m --requests-per-client 2 --max-tokens 32

Results go to bench/results/serve.json.
"""

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# bench/tokenize.py would hide the standard library's tokenize module: drop this folder from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("what why how explain the city river light house music story number language train capital france "
         "paris summer winter translate into english chinese short answer please write a list of").split()

SERVER = """
import sys
from instructglm.serve.app import ServeConfig, serve
serve(ServeConfig(model=sys.argv[1], port=int(sys.argv[2]), max_batch_size=int(sys.argv[3])))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(work: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_model_dir

    return str(make_model_dir(work / "tiny-llama", "llama"))


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def run(url: str, prompts: list[str], clients: int, max_tokens: int) -> dict:
    import httpx

    def one(http, prompt):
        t = time.perf_counter()
        r = http.post(url + "/v1/chat/completions", timeout=600, json={
            "model": "base", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True})
        r.raise_for_status()
        return time.perf_counter() - t, r.json()["usage"]["completion_tokens"]

    def client(chunk):
        with httpx.Client() as http:
            return [one(http, p) for p in chunk]

    chunks = [prompts[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for part in pool.map(client, chunks) for r in part]
    wall = time.perf_counter() - start
    latencies = [lat for lat, _ in results]
    tokens = sum(n for _, n in results)
    return {"clients": clients, "requests": len(results), "wall_s": round(wall, 3),
            "requests_per_s": round(len(results) / wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "generated_tokens": tokens, "latency_p50_s": round(percentile(latencies, 50), 4),
            "latency_p99_s": round(percentile(latencies, 99), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model to serve (default: a tiny random LLaMA)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests-per-client", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = args.model or tiny_model(work)
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24))) + "?"
               for _ in range(args.clients * args.requests_per_client)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, model, str(port), str(args.max_batch_size)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import httpx

        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("the server did not start within 300 s")
            time.sleep(0.2)
        run(url, prompts[:4], 1, args.max_tokens)  # warm-up
        sequential = run(url, prompts, 1, args.max_tokens)
        concurrent = run(url, prompts, args.clients, args.max_tokens)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    import torch

    result = {
        "model": args.model or "tiny random llama (tests/tiny.py: hidden 64, 2 layers)",
        "max_tokens": args.max_tokens, "max_batch_size": args.max_batch_size,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "sequential": sequential, "concurrent": concurrent,
        "throughput_ratio": round(concurrent["tokens_per_s"] / sequential["tokens_per_s"], 2),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\nthroughput {result['throughput_ratio']}x with {args.clients} concurrent clients "
          f"(p50 {concurrent['latency_p50_s']}s / p99 {concurrent['latency_p99_s']}s vs sequential "
          f"p50 {sequential['latency_p50_s']}s / p99 {sequential['latency_p99_s']}s); written to {out}")


if __name__ == "__main__":
    main()
