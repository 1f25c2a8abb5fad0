"""``serve``: the OpenAI-compatible API over a tiny model and two LoRA adapters, on a real uvicorn server
on loopback, driven with the official ``openai`` client (streaming included), raw HTTP and a headless
browser for the chat page."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from real_clients import chromium, missing
from serving import HELLO, KEY, reference

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from instructglm.templates import get_template  # noqa: E402
from instructglm.generation import SamplingConfig  # noqa: E402
from instructglm.config import load_config  # noqa: E402
from instructglm.serve.app import ServeConfig, build_server  # noqa: E402


def test_models_and_health(served):
    ids = [m.id for m in served["client"].models.list().data]
    assert ids == ["base", "a1", "a2"]
    assert httpx.get(served["url"] + "/health").json() == {"status": "ok"}


@pytest.mark.parametrize("model", ["base", "a1"])
def test_chat_matches_infer_and_counts_usage(served, model):
    r = served["client"].chat.completions.create(model=model, messages=HELLO, max_tokens=24, temperature=0)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == model and choice.message.role == "assistant"
    assert choice.message.content == reference(served["server"], model, HELLO, 24)
    assert choice.finish_reason in ("stop", "length")
    prompt_ids = served["server"].engine.prompt_ids(get_template("alpaca"), HELLO)
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert 1 <= r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_adapter_selection_changes_output(served):
    c = served["client"]
    answers = {m: c.chat.completions.create(model=m, messages=HELLO, max_tokens=16, temperature=0)
               .choices[0].message.content for m in ("base", "a1", "a2")}
    assert len(set(answers.values())) == 3, answers
    again = c.chat.completions.create(model="a1", messages=HELLO, max_tokens=16, temperature=0)
    assert again.choices[0].message.content == answers["a1"]  # greedy is deterministic


def test_streaming_with_openai_client(served):
    c = served["client"]
    messages = HELLO + [{"role": "assistant", "content": "I am a tiny model."},
                        {"role": "user", "content": "What is the capital of France?"}]
    full = c.chat.completions.create(model="a2", messages=messages, max_tokens=32)
    chunks = list(c.chat.completions.create(model="a2", messages=messages, max_tokens=32, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)


def test_raw_sse_format_and_completions(served):
    body = {"model": "base", "prompt": "The quick brown fox", "max_tokens": 12, "stream": True}
    with httpx.stream("POST", served["url"] + "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    streamed = "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1])
    plain = served["client"].completions.create(model="base", prompt="The quick brown fox", max_tokens=12)
    assert plain.object == "text_completion" and plain.choices[0].text == streamed


def test_stop_strings_cut_the_answer(served):
    c = served["client"]
    full = c.completions.create(model="a1", prompt="Who are you?", max_tokens=24, extra_body={"ignore_eos": True})
    text = full.choices[0].text
    assert len(text) > 4
    stop = text[2:4]
    cut = c.completions.create(model="a1", prompt="Who are you?", max_tokens=24, stop=[stop],
                               extra_body={"ignore_eos": True})
    assert cut.choices[0].text == text[:text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_max_tokens_clamped_to_context(served):
    srv = served["server"]
    r = served["client"].completions.create(model="base", prompt="Hi", max_tokens=10**6,
                                            extra_body={"ignore_eos": True})
    assert r.usage.total_tokens == srv.context and r.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as e:
        served["client"].completions.create(model="base", prompt="hello " * 600, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"


def test_auth(served):
    url = served["keyed_url"]
    assert httpx.get(url + "/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(url + "/v1/chat/completions", headers=headers,
                       json={"model": "base", "messages": HELLO, "max_tokens": 2})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models", headers=headers).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in good.models.list().data] == ["base", "a1", "a2"]
    assert good.chat.completions.create(model="base", messages=HELLO, max_tokens=3).usage.completion_tokens >= 1
    # no key configured: no header needed
    assert httpx.get(served["url"] + "/v1/models").status_code == 200


BAD = {
    "bad JSON": (b'{"model": "base", "messages": [', 400, None),
    "not an object": (b'[1, 2]', 400, None),
    "missing messages": ({"model": "base"}, 400, "messages"),
    "empty messages": ({"model": "base", "messages": []}, 400, "messages"),
    "missing model": ({"messages": HELLO}, 400, "model"),
    "n=2": ({"model": "base", "messages": HELLO, "n": 2}, 400, "n"),
    "too many messages": ({"model": "base", "messages": HELLO * 9}, 400, "messages"),
    "bad role": ({"model": "base", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    "content not text": ({"model": "base", "messages": [{"role": "user", "content": 3}]}, 400,
                         "messages[0].content"),
    "no user message": ({"model": "base", "messages": [{"role": "system", "content": "x"}]}, 400, "messages"),
    "temperature": ({"model": "base", "messages": HELLO, "temperature": 5}, 400, "temperature"),
    "top_p": ({"model": "base", "messages": HELLO, "top_p": 0}, 400, "top_p"),
    "max_tokens": ({"model": "base", "messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    "max_tokens type": ({"model": "base", "messages": HELLO, "max_tokens": "9"}, 400, "max_tokens"),
    "stop": ({"model": "base", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    "stream": ({"model": "base", "messages": HELLO, "stream": "yes"}, 400, "stream"),
    "too large body": ({"model": "base", "messages": [{"role": "user", "content": "x" * 30_000}]}, 413, None),
    "unknown model": ({"model": "nope", "messages": HELLO}, 404, "model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_validation_errors(served, case):
    payload, status, param = BAD[case]
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    r = httpx.post(served["url"] + "/v1/chat/completions", content=content,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    assert "Traceback" not in r.text


def test_errors_through_openai_client_and_unknown_route(served):
    c = served["client"]
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="base", messages=HELLO, n=2)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="missing", messages=HELLO)
    assert e.value.body["code"] == "model_not_found"
    r = httpx.get(served["url"] + "/v1/nothing")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_bug_gives_clean_500(served, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(served["server"].engine.encoder, "encode", boom)
    r = httpx.post(served["url"] + "/v1/chat/completions", json={"model": "base", "messages": HELLO})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text and "Traceback" not in r.text


def test_client_disconnect_frees_the_row(served):
    engine = served["server"].batcher
    before = engine.stats["cancelled"]
    body = {"model": "base", "prompt": "Hi", "max_tokens": 480, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", served["url"] + "/v1/completions", json=body) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    deadline = time.time() + 10
    while engine.stats["cancelled"] == before or engine.stats["active"]:
        assert time.time() < deadline, engine.stats
        time.sleep(0.02)
    assert engine.stats["cancelled"] == before + 1


def test_concurrent_load_is_batched_without_errors(served):
    engine = served["server"].batcher
    engine.stats["max_batch"] = 0
    c = openai.OpenAI(base_url=served["url"] + "/v1", api_key="unused", max_retries=0)
    models = ["base", "a1", "a2"]
    expected = {m: c.chat.completions.create(model=m, messages=HELLO, max_tokens=6).choices[0].message.content
                for m in models}

    def one(i):
        model = models[i % 3]
        if i % 2:
            stream = c.chat.completions.create(model=model, messages=HELLO, max_tokens=6, stream=True)
            text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        else:
            text = c.chat.completions.create(model=model, messages=HELLO, max_tokens=6).choices[0].message.content
        return model, text

    start = time.time()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(240)))
    elapsed = time.time() - start
    assert len(results) == 240
    assert all(text == expected[model] for model, text in results)  # batching never mixes rows up
    assert engine.stats["max_batch"] > 1, engine.stats
    assert engine.stats["active"] == 0
    print(f"240 requests, 16 concurrent: {elapsed:.1f}s, largest batch {engine.stats['max_batch']}")


def test_soak_mixed_clients_no_5xx_memory_stable(served):
    """Bounded soak on loopback: valid, invalid, streaming and disconnecting clients mixed; no 5xx,
    every slot freed, resident memory stable, and the server still answers afterwards."""
    import resource

    url, engine = served["url"], served["server"].batcher
    ok_body = {"model": "a1", "messages": HELLO, "max_tokens": 5}
    kinds = [
        ("valid", ok_body),
        ("invalid", {"model": "a1", "messages": "not a list"}),
        ("unknown", {"model": "nope", "messages": HELLO}),
        ("badjson", None),
        ("stream", {**ok_body, "stream": True}),
        ("disconnect", {"model": "base", "prompt": "Hi", "max_tokens": 200, "stream": True, "ignore_eos": True}),
    ]

    def one(i):
        kind, body = kinds[i % len(kinds)]
        with httpx.Client(timeout=30) as client:
            if kind == "badjson":
                return kind, client.post(url + "/v1/chat/completions", content=b"{oops",
                                         headers={"content-type": "application/json"}).status_code
            if kind == "disconnect":
                with client.stream("POST", url + "/v1/completions", json=body) as r:
                    next(r.iter_lines())
                    return kind, r.status_code  # leaving the block closes the connection mid-stream
            if kind == "stream":
                with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    lines = [x for x in r.iter_lines() if x]
                    assert lines[-1] == "data: [DONE]"
                    return kind, r.status_code
            return kind, client.post(url + "/v1/chat/completions", json=body).status_code

    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(one, range(60)))  # warm-up: allocator and caches settle
        before = rss_mb()
        results = list(pool.map(one, range(180)))
    after = rss_mb()
    codes = {}
    for kind, code in results:
        codes.setdefault(kind, set()).add(code)
    assert all(code < 500 for _, code in results), codes
    assert codes["valid"] == {200} and codes["stream"] == {200} and codes["disconnect"] == {200}
    assert codes["invalid"] == {400} and codes["badjson"] == {400} and codes["unknown"] == {404}
    deadline = time.time() + 10
    while engine.stats["active"]:
        assert time.time() < deadline, engine.stats
        time.sleep(0.05)
    assert after - before < 200, (before, after)  # peak RSS of the test process, server included
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.post(url + "/v1/chat/completions", json=ok_body, timeout=30).status_code == 200


def test_repeated_adapter_flag():
    from instructglm.cli import _flags, build_parser

    args = build_parser().parse_args(["serve", "--adapter", "a=/x", "--model", "m", "--adapter=b=/y,c=/z"])
    cfg = load_config(ServeConfig, flags=_flags(args, ServeConfig))
    assert cfg.adapter == ["a=/x", "b=/y", "c=/z"] and cfg.model == "m"


@pytest.mark.browser
def test_chat_page_in_headless_browser(served):
    sync_api, exe = chromium("chat-page test")
    url = served["keyed_url"]
    keyed = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
        except Exception as e:  # noqa: BLE001 - a browser that cannot start here is an environment matter
            missing(f"chromium does not start: {e}", "chat-page test")
        try:
            page = browser.new_page()
            posted = []
            page.on("request", lambda req: posted.append(req.post_data) if req.method == "POST" else None)
            page.goto(url + "/")
            page.wait_for_function("() => document.getElementById('status').textContent.includes('API key')")
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.wait_for_function("() => document.querySelectorAll('#model option').length === 3")
            page.select_option("#model", "a1")
            page.fill("#max_tokens", "20")
            # count mutation records, not observer callbacks: one callback may carry several records
            # (a loaded machine can deliver the whole stream in one read)
            page.evaluate("""() => { window.updates = 0; new MutationObserver((records) => window.updates += records.length)
                .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
            page.fill("#input", "Who are you?")
            page.press("#input", "Enter")
            # the answer bubble exists only once the send started, so 'ready' then means finished
            page.wait_for_function("() => document.querySelectorAll('.assistant').length === 1 && "
                                   "document.getElementById('status').textContent === 'ready' && "
                                   "!document.getElementById('send').disabled", timeout=20000)
            shown = page.inner_text(".assistant")
            want = keyed.chat.completions.create(model="a1", messages=HELLO, max_tokens=20).choices[0].message.content
            assert shown.strip() == want.strip() and want.strip()
            assert page.evaluate("window.updates") >= 3  # two bubbles, then the streamed text
            # second turn: the history (with the first answer) goes with it
            page.fill("#input", "What is the capital of France?")
            page.press("#input", "Enter")
            page.wait_for_function("() => document.querySelectorAll('.assistant').length === 2 && "
                                   "!document.getElementById('send').disabled", timeout=20000)
            sent = json.loads(posted[-1])
            assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
            assert sent["model"] == "a1" and sent["stream"] is True
            page.click("#clear")
            assert page.inner_text("#log").strip() == ""
        finally:
            browser.close()


@pytest.mark.parametrize("arch", ["qwen2", "gemma3", "glm4"])
def test_wave_matches_generate(tiny_models, arch):
    """Left-padded wave with KV cache, rows finishing at different times == transformers generate, row by row."""
    from instructglm.serve.batcher import Batcher, Delta, Done, GenRequest

    srv = build_server(ServeConfig(model=tiny_models(arch), scheduler="wave"), start=False)
    batcher, engine = srv.batcher, srv.engine
    template = get_template("alpaca")
    questions = ["Who are you?", "What is the capital of France? " * 3, "你是谁？", "Convert to uppercase: good morning"]
    prompts = [engine.prompt_ids(template, [{"role": "user", "content": q}]) for q in questions]
    got = {}
    reqs = [GenRequest(prompt_ids=p, sampling=SamplingConfig(max_new_tokens=20 - 3 * i), stops=template.stop,
                       strip=True, sink=lambda ev, i=i: got.setdefault(i, []).append(ev)) for i, p in enumerate(prompts)]
    assert isinstance(batcher, Batcher)
    batcher._run("base", reqs)
    for i, prompt in enumerate(prompts):
        want = engine.generate([prompt], SamplingConfig(max_new_tokens=20 - 3 * i), template.stop)[0]
        assert "".join(ev.text for ev in got[i] if isinstance(ev, Delta)) == want
        assert isinstance(got[i][-1], Done) and sum(isinstance(ev, Done) for ev in got[i]) == 1


def test_messages_go_through_the_record():
    """``developer`` is read as ``system``, text parts are joined, and what the record refuses is a 400
    naming the field."""
    from instructglm.serve.protocol import APIError, parse_messages

    conv = parse_messages({"messages": [{"role": "developer", "content": "be brief"},
                                        {"role": "user", "content": [{"type": "text", "text": "hi "},
                                                                     {"type": "text", "text": "there"}]}]}, 8)
    assert [(m.role, m.content) for m in conv.messages] == [("system", "be brief"), ("user", "hi there")]
    for messages, param in (([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages[1]"),
                            ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}],
                             "messages[1].role"),
                            ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content"),
                            ([{"role": "assistant", "content": "a"}], "messages[0]")):
        with pytest.raises(APIError) as e:
            parse_messages({"messages": messages}, 8)
        assert e.value.status == 400 and e.value.param == param, (messages, e.value.message)


@pytest.mark.parametrize("body,param", [({"temperature": float("nan")}, "temperature"), ({"temperature": 2.5}, "temperature"),
                                        ({"temperature": "hot"}, "temperature"), ({"top_p": 1.5}, "top_p"),
                                        ({"top_p": True}, "top_p")])
def test_sampling_numbers_are_checked_by_the_engine(body, param):
    from instructglm.serve.protocol import APIError, parse_sampling

    with pytest.raises(APIError) as e:
        parse_sampling(body, 8)
    assert e.value.status == 400 and e.value.param == param
    assert parse_sampling({"temperature": 0.7, "top_p": 0.9}, 8).max_new_tokens == 8
