"""Serving: the wave scheduler vs the continuous one, side by side, with transformers' own continuous
batching on the same prompts as an outside reference.

For each scheduler a server (``instructglm.serve``, ``--scheduler wave|continuous``) runs in a child
process on 127.0.0.1 over the base model and two LoRA adapters made on the spot; at each level of
concurrency (1, 16, 64 clients by default) every client sends its requests one after the other, as
streaming chat completions for ``base``, ``a1``, ``a2`` in turn (mixed adapters), greedy and
``ignore_eos`` so every answer is exactly ``--max-tokens`` tokens and every run does the same work.
Both servers are up at once and take turns at each level (``--rounds`` turns each, in alternating
order; the median turn is reported), so that a shared machine's changing load falls on both alike:
compare the ratios, not the absolute numbers. The clients are asyncio tasks in this process (the
servers are child processes: no GIL is shared with them), speaking HTTP/1.1 through a lean
hand-written client (:class:`Connection`), so that the load generator takes little of the CPU the
servers need. Measured at the client: generated tokens per second (all answers over the level's wall
time), time to first token (request sent -> first text) and inter-token latency (gaps between text
chunks of one answer), p50/p99; and the CPU seconds per 1,000 generated tokens of the server process
and of this load generator (steadier than wall time when other jobs share the machine).

transformers' ``generate_batch`` (paged cache, its own scheduler) gets the same prompts, base model
only (it has no per-request adapters), all submitted at once; its TTFT and latencies come from its
own per-token timestamps.

    python bench/serve.py                               # tiny random LLaMA (engine overhead)
    python bench/serve.py --model gemma3-270m --levels 16 --rounds 2 --no-transformers \
        --output bench/results/serve-gemma3-270m.json     # the embedded Gemma 3 270M (real load)

Results go to bench/results/serve.json (``--output`` to change).
"""

import sys
from pathlib import Path

# bench/tokenize.py would hide the standard library's tokenize module (asyncio imports it through
# inspect): drop this folder from the path before anything else is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent
WORDS = ("what why how explain the city river light house music story number language train capital france "
         "paris summer winter translate into english chinese short answer please write a list of").split()
MODELS = ("base", "a1", "a2")

SERVER = """
import json, sys
from instructglm.serve.app import ServeConfig, serve
serve(ServeConfig(**json.loads(sys.argv[1])))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_models(work: Path, model: str | None) -> tuple[str, list[str]]:
    """The base model (a tiny random LLaMA unless given) and two LoRA adapters on it."""
    sys.path.append(str(ROOT / "tests" / "helpers"))  # appended: its module names must not hide the stdlib
    from adapters import make_adapter
    from tiny import make_model_dir

    from instructglm.models.loading import resolve_model

    base = resolve_model(model) if model else str(make_model_dir(work / "tiny-llama", "llama"))
    return base, [f"{name}={make_adapter(base, work / name, seed)}" for seed, name in enumerate(MODELS[1:], 1)]


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))], 4)


def summary(clients: int, wall: float, tokens: int, ttfts: list[float], gaps: list[float], requests: int) -> dict:
    return {"clients": clients, "requests": requests, "wall_s": round(wall, 3), "generated_tokens": tokens,
            "tokens_per_s": round(tokens / wall, 1), "ttft_p50_s": percentile(ttfts, 50),
            "ttft_p99_s": percentile(ttfts, 99), "itl_p50_s": percentile(gaps, 50), "itl_p99_s": percentile(gaps, 99)}


class Connection:
    """One keep-alive HTTP/1.1 connection to the server, as lean as a load generator should be.

    Through httpx (its transport, h11, its line iterator) the 64 clients used 0.19 CPU seconds per
    1,000 tokens, more than three times the server's whole HTTP side (its event-loop thread) and
    about 70% of the server process in all: on a 2-core machine the load generator took a core from the server it
    measured. This client writes the request by hand and reads the chunked server-sent events with
    a few buffer operations per chunk (0.02 CPU seconds per 1,000 tokens).
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: dict):
        """Send ``body`` as JSON; yield each server-sent event's data (str) of the streamed answer."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        if not head.startswith("HTTP/1.1 200"):
            raise RuntimeError(f"the server answered {head.splitlines()[0]!r}")
        if "transfer-encoding: chunked" not in head.lower():
            raise RuntimeError("expected a chunked event stream")
        pending = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return
            pending += chunk[:-2]
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if event.startswith(b"data: "):
                    yield event[6:].decode()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def one_request(conn: Connection, model: str, prompt: str, max_tokens: int, ttfts: list, gaps: list) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    sent, last, tokens = time.perf_counter(), None, 0
    async for data in conn.post("/v1/chat/completions", body):
        if not data.startswith("{"):
            continue
        chunk = json.loads(data)
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if not (chunk["choices"] and chunk["choices"][0]["delta"].get("content")):
            continue
        now = time.perf_counter()
        if last is None:
            ttfts.append(now - sent)
        else:
            gaps.append(now - last)
        last = now
    return tokens


def process_cpu(pid: int) -> float:
    """CPU seconds ``pid``'s live threads have run so far (their schedstat counts nanoseconds, where
    /proc/PID/stat counts 10 ms ticks: too coarse for a level that lasts a second)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            continue
    return total / 1e9


async def level(url: str, prompts: list[str], clients: int, max_tokens: int, server_pid: int | None = None) -> dict:
    """One level of load; besides the client-side timings, the CPU seconds the server process and
    this load generator used per 1,000 generated tokens (less sensitive to a shared machine's load
    than wall time)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    ttfts, gaps = [], []

    async def client(k: int) -> int:
        conn = Connection(host, int(port))
        try:
            return sum([await one_request(conn, MODELS[i % 3], prompts[i], max_tokens, ttfts, gaps)
                        for i in range(k, len(prompts), clients)])
        finally:
            conn.close()

    cpu0, own0 = server_pid and process_cpu(server_pid), os.times()
    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(client(k) for k in range(clients))))
    wall = time.perf_counter() - start
    result = summary(clients, wall, tokens, ttfts, gaps, len(prompts))
    own = os.times()
    result["client_cpu_s_per_1k_tokens"] = round((own.user + own.system - own0.user - own0.system) / tokens * 1e3, 3)
    if server_pid:
        result["server_cpu_s_per_1k_tokens"] = round((process_cpu(server_pid) - cpu0) / tokens * 1e3, 3)
    return result


def start_server(config: dict) -> tuple[subprocess.Popen, str]:
    import httpx

    config = dict(config)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(config.pop("threads")))
    proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps({**config, "port": port})], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            raise SystemExit("the server did not start within 300 s")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_schedulers(schedulers: list[str], config: dict, prompt_sets: dict[int, list[str]], max_tokens: int,
                   threads: int, rounds: int) -> dict[str, list[dict]]:
    """Every scheduler's server up at once (an idle one waits on its queue and costs nothing); at each
    level the schedulers take turns, ``rounds`` times, in alternating order, so that the load other
    jobs put on a shared machine falls on all of them alike. Each level reports its median round
    (by tokens/s) and every round's tokens/s."""
    servers = {}
    try:
        for s in schedulers:
            servers[s] = start_server({**config, "scheduler": s, "threads": threads})
        for s, (_, url) in servers.items():
            asyncio.run(level(url, prompt_sets[min(prompt_sets)][:3], 1, max_tokens))  # warm-up
        results = {s: [] for s in schedulers}
        for clients, prompts in prompt_sets.items():
            runs = {s: [] for s in schedulers}
            for r in range(rounds):
                for s in (schedulers if r % 2 == 0 else schedulers[::-1]):
                    proc, url = servers[s]
                    runs[s].append(asyncio.run(level(url, prompts, clients, max_tokens, proc.pid)))
            for s in schedulers:
                ordered = sorted(runs[s], key=lambda x: x["tokens_per_s"])
                median = dict(ordered[len(ordered) // 2])
                median["tokens_per_s_rounds"] = [x["tokens_per_s"] for x in runs[s]]
                results[s].append(median)
                print(s, json.dumps(median), flush=True)
        return results
    finally:
        for proc, _ in servers.values():
            stop_server(proc)


def run_transformers(base: str, prompt_sets: dict[int, list[str]], max_tokens: int) -> dict:
    """transformers' generate_batch on the chat prompts (base model, alpaca template), all at once."""
    from transformers import GenerationConfig

    from instructglm.generation.engine import Engine
    from instructglm.models.loading import load_model, load_tokenizer
    from instructglm.templates import get_template

    tokenizer = load_tokenizer(base)
    engine = Engine(load_model(base), tokenizer)
    template = get_template("alpaca", tokenizer)
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=None)
    results = []
    try:
        for clients, prompts in prompt_sets.items():
            ids = engine.prompts_ids(template, [[{"role": "user", "content": p}] for p in prompts])
            start = time.perf_counter()
            outputs = list(engine.model.generate_batch(ids, config, record_timestamps=True, warmup=False).values())
            wall = time.perf_counter() - start
            # its manager (paged cache, threads) starts inside the call: time from when the first request
            # was scheduled, so that start-up is not counted as time to first token
            began = min(o.lifespan[0] for o in outputs)
            ttfts = [o.timestamps[0] - began for o in outputs if o.timestamps]
            gaps = [b - a for o in outputs for a, b in zip(o.timestamps or [], (o.timestamps or [])[1:])]
            generating = max(o.lifespan[1] for o in outputs) - began
            results.append({**summary(clients, generating, sum(len(o.generated_tokens) for o in outputs), ttfts,
                                      gaps, len(prompts)), "wall_with_startup_s": round(wall, 3),
                            "note": "all requests submitted at once, base model only; wall_s from the first "
                                    "request scheduled to the last finished"})
            print("transformers", json.dumps(results[-1]), flush=True)
    except Exception as e:  # noqa: BLE001 - an outside reference that does not run here is reported, not fatal
        return {"error": f"{type(e).__name__}: {e}"[:500], "levels": results}
    return {"levels": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="base model (default: a tiny random LLaMA)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64], help="concurrent clients")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--min-requests", type=int, default=8, help="at least this many requests per level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--schedulers", nargs="+", default=["wave", "continuous"])
    ap.add_argument("--rounds", type=int, default=3, help="turns per scheduler and level (the median is reported)")
    ap.add_argument("--no-transformers", action="store_true", help="skip transformers' generate_batch")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="CPU threads of the model's math, in every contender (on a busy 2-core machine one thread "
                         "is several times faster for a tiny model than two threads fighting for cores)")
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    base, adapters = make_models(work, args.model)
    rng = random.Random(0)
    prompt_sets = {c: [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24))) + "?"
                       for _ in range(max(args.min_requests, c * args.requests_per_client))] for c in args.levels}
    config = {"model": base, "adapter": adapters, "max_batch_size": max(args.levels), "max_queue": 1024}
    schedulers = run_schedulers(args.schedulers, config, prompt_sets, args.max_tokens, args.torch_threads,
                                args.rounds)
    import torch

    torch.set_num_threads(args.torch_threads)
    result = {
        "model": args.model or "tiny random llama (tests/helpers/tiny.py: hidden 64, 2 layers)",
        "adapters": "two random LoRA adapters (r=4, all linear); requests cycle base, a1, a2",
        "max_tokens": args.max_tokens, "requests_per_client": args.requests_per_client, "rounds": args.rounds,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": args.torch_threads,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "caveat": "shared machine: other engineers' jobs ran at the same time"},
        "schedulers": schedulers,
    }
    if not args.no_transformers:
        result["transformers_generate_batch"] = run_transformers(base, prompt_sets, args.max_tokens)
    if {"wave", "continuous"} <= set(schedulers):
        result["continuous_vs_wave_throughput"] = {
            str(w["clients"]): round(c["tokens_per_s"] / w["tokens_per_s"], 2)
            for w, c in zip(schedulers["wave"], schedulers["continuous"])}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
