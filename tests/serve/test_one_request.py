"""One request never fails another: what cannot be sampled or is not text is a 400 naming the field
(before it reaches a batch), and a row whose sampling fails inside a batch ends alone with an error
while the requests batched with it finish as if it had not been there (both schedulers). HEAD on
the read-only routes answers like GET."""

import json
import threading
import time

import pytest
from serving import HELLO, reference, running

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from instructglm.serve.app import ServeConfig, Server  # noqa: E402
from instructglm.serve.batcher import Batcher  # noqa: E402
from instructglm.serve.continuous import ContinuousBatcher  # noqa: E402
from instructglm.serve.routes import create_app  # noqa: E402

LONE = "\ud800"  # json.dumps writes it as the escape a hostile client sends
BAD = {
    "top_p underflows float32": ({"temperature": 1, "top_p": 1e-300}, "top_p"),
    "top_p subnormal": ({"temperature": 1, "top_p": 1e-40}, "top_p"),
    "temperature subnormal": ({"temperature": 1e-45}, "temperature"),
    "temperature underflows": ({"temperature": 1e-300, "top_p": 0.5}, "temperature"),
    "logit_bias": ({"logit_bias": {"5": 1e300}}, "logit_bias"),
    "surrogate content": ({"messages": [{"role": "user", "content": "hi " + LONE}]}, "messages[0].content"),
    "surrogate name": ({"messages": [{"role": "user", "content": "hi", "name": LONE}]}, "messages[0].name"),
    "surrogate part": ({"messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
                       "messages[0].content[0].text"),
    "surrogate key": ({"messages": [{"role": "user", "content": "hi", LONE: 1}]}, "messages[0]"),
    "surrogate model": ({"model": LONE}, "model"),
    "surrogate stop": ({"stop": ["ok", "a" + LONE]}, "stop[1]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_what_cannot_work_is_a_400_naming_the_field(served, case):
    change, param = BAD[case]
    body = {"model": "base", "messages": HELLO, "max_tokens": 4, **change}
    r = httpx.post(served["url"] + "/v1/chat/completions", content=json.dumps(body).encode(),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
    assert "Traceback" not in r.text


def test_surrogate_in_a_completion_prompt_and_fine_values_still_work(served):
    r = httpx.post(served["url"] + "/v1/completions", content=json.dumps({"model": "base", "prompt": LONE}).encode(),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    fine = [{"role": "user", "content": "你好 \U0001F600", "name": "ann"}]  # real astral characters are fine
    ok = httpx.post(served["url"] + "/v1/chat/completions",  # tiny but representable: accepted and answered
                    json={"model": "base", "messages": fine, "temperature": 1e-30, "top_p": 1e-30, "max_tokens": 4})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/v1/models/a1", "/metrics", "/"])
def test_head_answers_like_get(served, path):
    get, head = httpx.get(served["url"] + path), httpx.head(served["url"] + path)
    assert get.status_code == head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    keyed = served["keyed_url"]
    if path.startswith("/v1"):
        assert httpx.head(keyed + path).status_code == 401
    assert httpx.post(served["url"] + path).status_code == 405


MAGIC = 0.625  # the temperature of the request whose rows cannot be sampled in this test


@pytest.mark.parametrize("scheduler", [ContinuousBatcher, Batcher])
def test_a_row_that_fails_ends_alone(served, monkeypatch, scheduler):
    """Healthy requests and two failing ones (whole, streamed) start in one batch: the failing ones get
    a 500 / an error event, the others answer exactly what they answer alone."""
    import instructglm.generation.engine as engine_module

    pick = engine_module.pick_next
    shared = []  # sizes of the batches the failing rows were picked in

    def failing(logits, temps, top_ps, generator):
        if bool((temps == MAGIC).any()):
            shared.append(len(temps))
            raise RuntimeError("invalid multinomial distribution")
        return pick(logits, temps, top_ps, generator)

    monkeypatch.setattr(engine_module, "pick_next", failing)
    srv = served["server"]
    idle = scheduler(srv.engine, srv.batcher.adapters)  # started once everything is queued: one batch
    server = Server(idle, srv.templates, ServeConfig(model=srv.cfg.model))
    questions = ["Who are you?", "What is the capital of France?", "你是谁？", "Name three rivers."]
    results = {}
    with running(create_app(server)) as url:
        def ask(key, question, temperature, stream):
            body = {"model": "base", "messages": [{"role": "user", "content": question}], "max_tokens": 12,
                    "temperature": temperature, "stream": stream}
            r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
            results[key] = (r.status_code, r.text if stream else r.json())

        jobs = [(f"ok{i}", q, 0, i % 2 == 1) for i, q in enumerate(questions)]
        jobs += [("bad", questions[0], MAGIC, False), ("bad stream", questions[1], MAGIC, True)]
        threads = [threading.Thread(target=ask, args=job) for job in jobs]
        for t in threads:
            t.start()
        deadline = time.time() + 20
        while idle.pending() < len(jobs):
            assert time.time() < deadline
            time.sleep(0.01)
        idle.start()
        try:
            for t in threads:
                t.join(timeout=60)
        finally:
            idle.stop()
    assert max(shared) == len(jobs), shared  # the failing rows were in one batch with all the others
    status, body = results["bad"]
    assert status == 500 and body["error"]["type"] == "server_error", body
    status, text = results["bad stream"]
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert status == 200 and json.loads(events[-2])["error"]["type"] == "server_error" and events[-1] == "[DONE]"
    for i, question in enumerate(questions):
        status, got = results[f"ok{i}"]
        assert status == 200
        if i % 2:
            chunks = [json.loads(line[6:]) for line in got.splitlines() if line.startswith("data: {")]
            got = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        else:
            got = got["choices"][0]["message"]["content"]
        assert got == reference(srv, "base", [{"role": "user", "content": question}], 12), question
    assert idle.stats["errors"] == 2 and idle.stats["active"] == 0 and idle.stats["requests"] == len(questions)
