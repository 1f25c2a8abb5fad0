"""``serve``'s continuous scheduler over HTTP: concurrent requests for different adapters (and base),
streamed or whole, with stop strings, answer token for token what each gets alone and share forwards;
a disconnecting client frees its row at once; a full queue answers 429; ``/metrics`` and the
per-request log line; ``--scheduler wave`` still serves."""

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving import HELLO, reference, running

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from instructglm.serve.app import ServeConfig, Server, build_server  # noqa: E402
from instructglm.serve.continuous import ContinuousBatcher  # noqa: E402
from instructglm.serve.routes import create_app  # noqa: E402

QUESTIONS = ["Who are you?", "What is the capital of France?", "你是谁？", "Write a list of three rivers."]


def _ask(client, model, question, max_tokens, stop, stream):
    kwargs = dict(model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens,
                  temperature=0, stop=stop or None)
    if not stream:
        choice = client.chat.completions.create(**kwargs).choices[0]
        return choice.message.content, choice.finish_reason
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), finish[0]


def test_mixed_adapters_stream_and_stop_equal_sequential_greedy(served, monkeypatch):
    srv = served["server"]
    assert isinstance(srv.batcher, ContinuousBatcher) and srv.batcher.batch.mixed
    cases = []
    for i in range(24):
        model, question, max_tokens = ("base", "a1", "a2")[i % 3], QUESTIONS[i % 4], 6 + (i * 5) % 23
        alone = reference(srv, model, [{"role": "user", "content": question}], max_tokens)
        stop = [alone[3:5]] if i % 4 == 1 and len(alone.strip()) > 6 else []
        want = alone[:alone.find(stop[0])].rstrip() if stop else alone
        cases.append((model, question, max_tokens, stop, i % 2 == 0, want))
    seen = []  # the adapters of the rows of every forward, to see them mixed
    batch = srv.batcher.batch
    assert batch.row_lora is not None  # plain LoRA adapters: mixed rows share one forward through RowLoRA
    adapters = batch._adapters
    monkeypatch.setattr(batch, "_adapters", lambda part: (seen.append(tuple(part.adapters)), adapters(part))[1])
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda c: _ask(served["client"], *c[:5]), cases))
    for (model_name, question, max_tokens, stop, stream, want), (text, finish) in zip(cases, got):
        assert text == want, (model_name, question, max_tokens, stop, stream)
        if stop:
            assert finish == "stop"
    assert any(len(set(names)) == 3 for names in seen), "base, a1 and a2 never shared a forward"


def test_disconnect_frees_the_row_at_once(served):
    batcher = served["server"].batcher
    before = batcher.stats["cancelled"]
    body = {"model": "a1", "prompt": "Hi", "max_tokens": 2000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", served["url"] + "/v1/completions", json=body) as r:
        assert next(r.iter_lines()).startswith("data: ")
        assert len(batcher.batch) == 1
        closed = time.monotonic()
    while batcher.stats["cancelled"] == before or len(batcher.batch):
        assert time.monotonic() - closed < 2.0, batcher.stats  # a step is milliseconds; the answer is 2000 tokens
        time.sleep(0.005)
    assert batcher.stats["cancelled"] == before + 1 and batcher.stats["active"] == 0


def test_full_queue_answers_429(served):
    import threading

    srv = served["server"]
    idle = ContinuousBatcher(srv.engine, srv.batcher.adapters)  # not started yet: what is submitted stays queued
    small = Server(idle, srv.templates, ServeConfig(model=srv.cfg.model, max_queue=1))
    with running(create_app(small)) as url:
        first = threading.Thread(target=lambda: pytest.raises(httpx.ReadTimeout, httpx.post, url + "/v1/completions",
                                                              json={"model": "base", "prompt": "Hi"}, timeout=1.5))
        first.start()
        deadline = time.time() + 5
        while not idle.pending():
            assert time.time() < deadline
            time.sleep(0.01)
        busy = httpx.post(url + "/v1/chat/completions", json={"model": "base", "messages": HELLO})
        assert busy.status_code == 429
        assert busy.json() == {"error": {"message": "the server is busy; retry shortly", "type": "server_error",
                                         "param": None, "code": "server_busy"}}
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).chat.completions.create(
                model="base", messages=HELLO)
        first.join()  # its client gave up: the request is cancelled and leaves once the scheduler runs
        idle.start()
        try:
            while idle.pending():
                assert time.time() < deadline + 10
                time.sleep(0.01)
            ok = httpx.post(url + "/v1/chat/completions", json={"model": "base", "messages": HELLO, "max_tokens": 3})
            assert ok.status_code == 200
        finally:
            idle.stop()


def test_metrics_and_request_log(served, caplog):
    caplog.set_level(logging.INFO, logger="instructglm.serve.requests")
    r = served["client"].chat.completions.create(model="a2", messages=HELLO, max_tokens=5)
    text = httpx.get(served["url"] + "/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values['instructglm_requests_total{status="200"}'] >= 1
    assert values["instructglm_generated_tokens_total"] >= r.usage.completion_tokens
    assert values["instructglm_time_to_first_token_seconds_count"] >= 1
    assert values['instructglm_inter_token_latency_seconds_bucket{le="+Inf"}'] >= 1
    assert "instructglm_queue_length" in values and "instructglm_running_requests" in values
    line = next(rec.getMessage() for rec in caplog.records if r.id.split("-", 1)[1] in rec.getMessage())
    assert "adapter=a2" in line and f"answer_tokens={r.usage.completion_tokens}" in line
    assert f"prompt_tokens={r.usage.prompt_tokens}" in line and "ttft=" in line and "finish=" in line


def test_wave_scheduler_behind_the_flag(tiny_models):
    from instructglm.cli import _flags, build_parser
    from instructglm.config import load_config
    from instructglm.errors import UserError
    from instructglm.serve.batcher import Batcher

    args = build_parser().parse_args(["serve", "--scheduler", "wave"])
    cfg = load_config(ServeConfig, flags=_flags(args, ServeConfig))
    assert cfg.scheduler == "wave"
    with pytest.raises((UserError, SystemExit)):
        load_config(ServeConfig, flags=_flags(build_parser().parse_args(["serve", "--scheduler", "paged"]),
                                              ServeConfig))
    srv = build_server(ServeConfig(model=tiny_models("llama"), scheduler="wave"))
    try:
        assert type(srv.batcher) is Batcher
        with running(create_app(srv)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            text = client.chat.completions.create(model="base", messages=HELLO, max_tokens=8).choices[0].message.content
        assert text == reference(srv, "base", HELLO, 8)
    finally:
        srv.batcher.stop()


def test_newcomers_are_prefilled_together_but_never_held_long(served):
    """With nothing decoding a request starts at once; while rows decode, newcomers that arrive one
    by one wait a few steps so that they share one prefill forward, and never longer."""
    from instructglm.generation import SamplingConfig
    from instructglm.serve.batcher import GenRequest
    from instructglm.serve.continuous import ADMIT_AFTER_STEPS

    srv = served["server"]
    batcher = ContinuousBatcher(srv.engine, srv.batcher.adapters)  # driven step by step here, not started
    ids = srv.engine.text_ids("Hello there")

    def arrive(adapter="base"):
        batcher.submit(GenRequest(prompt_ids=ids, sampling=SamplingConfig(max_new_tokens=50), adapter=adapter,
                                  ignore_eos=True))
        batcher._take(block=False)

    arrive()
    batcher._step()
    assert len(batcher.batch.running.rows) == 1 and not batcher._waiting  # admitted and prefilled at once
    held = 0
    for adapter in ("a1", "a2"):
        arrive(adapter)
        batcher._step()
        held += 1
    while batcher._waiting:
        batcher._step()
        held += 1
    assert 2 <= held <= ADMIT_AFTER_STEPS + 1 and batcher.stats["batches"] == 2  # both newcomers in one group
    while batcher.batch.prefilling:
        batcher._step()
    assert [r.adapter for r in batcher.batch.running.rows] == [None, "a1", "a2"]
    batcher._fail("test over")


def test_waiting_events_leave_in_one_write():
    """Events that are already waiting when a stream resumes go out as one write (one pass through
    the middleware stack and one socket send), and still read as the same server-sent events."""
    import asyncio
    import json

    from instructglm.serve.batcher import Delta, Done, GenRequest
    from instructglm.serve.replies import Reply, _events

    async def writes(events_in: list) -> list[str]:
        req, queue = GenRequest(prompt_ids=[1, 2]), asyncio.Queue()
        for event in events_in:
            queue.put_nowait(event)
        return [w async for w in _events(req, queue, Reply(req, chat=True), include_usage=True)]

    out = asyncio.run(writes([Delta("Par"), Delta("is"), Done("length", 2)]))
    assert len(out) == 2  # the opening role chunk, then everything that was waiting
    events = [e[len("data: "):] for e in "".join(out).split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Paris"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 2
