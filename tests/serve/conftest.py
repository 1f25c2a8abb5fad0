"""The ``served`` fixture: one server (continuous scheduler) over a tiny LLaMA with LoRA adapters a1 and a2,
plain and behind an API key, on loopback; built once per test module."""

import pytest
from serving import KEY, make_adapter, running


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from instructglm.serve.app import ServeConfig, Server, build_server
    from instructglm.serve.routes import create_app

    base = tiny_models("llama")
    root = tmp_path_factory.mktemp("adapters")
    a1, a2 = make_adapter(base, root / "a1", 1), make_adapter(base, root / "a2", 2)
    srv = build_server(ServeConfig(model=base, adapter=[f"a1={a1}", f"a2={a2}"], max_messages=8,
                                   max_body_bytes=20_000))
    keyed = Server(srv.batcher, srv.templates, ServeConfig(model=base, api_key=KEY))
    with running(create_app(srv)) as url, running(create_app(keyed)) as keyed_url:
        yield {"server": srv, "url": url, "keyed_url": keyed_url,
               "client": openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)}
    srv.batcher.stop()
