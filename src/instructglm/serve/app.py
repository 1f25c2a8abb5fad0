"""``serve``: an OpenAI-compatible HTTP API (and a small chat page) over a base model and its adapters.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with
``stream`` as server-sent events ending in ``data: [DONE]``), ``GET /health`` and the chat page at
``/``. ``model`` in a request is ``base`` or the name of an adapter given with ``--adapter
NAME=PATH``; all adapters are loaded once on one base model. Chat prompts are rendered with the
template the adapter was trained with (its ``instructglm.json``), encoded exactly as in training,
and answers are cut at the template's turn markers and at EOS.

Safe defaults: binds 127.0.0.1; with ``--api-key`` every route except ``/health`` and the static
page needs ``Authorization: Bearer KEY``; bodies, messages and ``max_tokens`` are capped; every
error is an OpenAI-style JSON body, never a traceback.
"""


import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructglm.config import opt
from instructglm.errors import UserError
from instructglm.serve.batcher import BASE, Engine, GenRequest

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ROLES = {"system", "user", "assistant", "developer"}


@dataclass
class ServeConfig:
    model: str | None = opt(None, help="base model (default: the adapters' base model, else gemma3-270m)")
    adapter: list[str] = opt([], help="trained adapter as NAME=PATH (or PATH); repeat for several")
    template: str | None = opt(None, help="prompt template of the base model (adapters use their own)")
    host: str = opt("127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)")
    port: int = opt(8000, help="TCP port")
    api_key: str | None = opt(None, help="require 'Authorization: Bearer KEY' on every API route "
                                         "(or set INSTRUCTGLM_API_KEY)")
    max_batch_size: int = opt(16, help="requests generated together in one batch")
    default_max_tokens: int = opt(256, help="max_tokens when a request does not say")
    max_messages: int = opt(256, help="most messages in one chat request")
    max_body_bytes: int = opt(1_000_000, help="largest request body")
    max_queue: int = opt(256, help="requests waiting or running before new ones get 429")
    seed: int = opt(0, help="sampling seed")

    def validate(self) -> None:
        for name in ("port", "max_batch_size", "default_max_tokens", "max_messages", "max_body_bytes", "max_queue"):
            if getattr(self, name) < (0 if name == "port" else 1):
                raise UserError(f"--{name.replace('_', '-')}: must be positive, got {getattr(self, name)}")
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("--api-key: must not be empty")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------------------- parsing
def _number(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v > hi or v < lo or (lo_open and v == lo):
        raise APIError(400, f"'{key}' must be a number {'>' if lo_open else '>='} {lo} and <= {hi}", key)
    return float(v)


def _int(body: dict, key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise APIError(400, f"'{key}' must be a positive integer", key)
    return v


def _bool(body: dict, key: str) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise APIError(400, f"'{key}' must be true or false", key)
    return v


def _stops(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or len(v) > 4 or not all(isinstance(s, str) and s for s in v):
        raise APIError(400, "'stop' must be a non-empty string or a list of at most 4 of them", "stop")
    return tuple(v)


def _content(m: Any, i: int) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: only text is supported
        parts = []
        for p in c:
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise APIError(400, f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            parts.append(p["text"])
        return "".join(parts)
    raise APIError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")


def _messages(body: dict, limit: int) -> list[dict]:
    msgs = body.get("messages")
    if msgs is None:
        raise APIError(400, "missing required parameter 'messages'", "messages", "missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    if len(msgs) > limit:
        raise APIError(400, f"too many messages: {len(msgs)} (at most {limit})", "messages", "too_many_messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}", f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _content(m, i)})
    if not any(m["role"] == "user" for m in out):
        raise APIError(400, "'messages' must contain a user message", "messages")
    return out


# ------------------------------------------------------------------------------------------ app
class Server:
    """The model-side state of one ``serve`` process: engine, templates, limits."""

    def __init__(self, engine: Engine, templates: dict, cfg: ServeConfig, model_name: str = ""):
        from instructglm.tokenize.tokenize import SegmentEncoder

        self.engine, self.templates, self.cfg, self.model_name = engine, templates, cfg, model_name
        self.encoder = SegmentEncoder(engine.tokenizer)
        self.context = engine.context_length()
        self.created = int(time.time())

    def template(self, model: Any):
        if not isinstance(model, str) or not model:
            raise APIError(400, "missing required parameter 'model' (see GET /v1/models)", "model",
                           "missing_required_parameter")
        if model not in self.templates:
            raise APIError(404, f"The model '{model}' does not exist; available: {', '.join(self.templates)}",
                           "model", "model_not_found")
        return self.templates[model]

    def request(self, body: dict, prompt_ids: list[int], model: str, stops: tuple, strip: bool) -> GenRequest:
        if body.get("n") not in (None, 1):
            raise APIError(400, "only n=1 is supported", "n")
        for key in ("tools", "functions", "logprobs"):
            if body.get(key):
                raise APIError(400, f"'{key}' is not supported by this server", key)
        max_tokens = _int(body, "max_tokens") or _int(body, "max_completion_tokens") or self.cfg.default_max_tokens
        room = self.context - len(prompt_ids)
        if room < 1:
            raise APIError(400, f"the prompt is {len(prompt_ids)} tokens; this model's context is {self.context}",
                           "messages", "context_length_exceeded")
        return GenRequest(prompt_ids=prompt_ids, adapter=model, max_tokens=min(max_tokens, room),
                          temperature=_number(body, "temperature", 0.0, 0, 2),
                          top_p=_number(body, "top_p", 1.0, 0, 1, lo_open=True),
                          stops=stops + _stops(body), strip=strip, ignore_eos=_bool(body, "ignore_eos"))


class _CatchAll:
    """Outermost handler for bugs: log the traceback, answer a clean JSON 500 (no traceback leaves)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def _send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                from fastapi.responses import JSONResponse

                body = APIError(500, "internal server error", type_="server_error").body()
                await JSONResponse(body, status_code=500)(scope, receive, send)


def create_app(server: Server):
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    cfg, engine = server.cfg, server.engine
    app = FastAPI(title="InstructGLM", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc):
        return JSONResponse(APIError(400, "invalid request").body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)

    app.add_middleware(_CatchAll)

    async def auth(request: Request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), cfg.api_key.encode()):
            raise APIError(401, "invalid or missing API key (Authorization: Bearer KEY)", code="invalid_api_key")

    async def read_json(request: Request) -> dict:
        limit = cfg.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise APIError(413, f"request body larger than {limit} bytes", code="request_too_large")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise APIError(413, f"request body larger than {limit} bytes", code="request_too_large")
        try:
            body = json.loads(bytes(data))
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        return body

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"),
                            headers={"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                     "style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
                                     "X-Content-Type-Options": "nosniff"})

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": server.created,
                                            "owned_by": "instructglm"} for name in server.templates]}

    @app.get("/v1/models/{name}", dependencies=[Depends(auth)])
    async def model_info(name: str):
        server.template(name)
        return {"id": name, "object": "model", "created": server.created, "owned_by": "instructglm"}

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat(request: Request):
        body = await read_json(request)
        model = body.get("model")
        template = server.template(model)
        messages = _messages(body, cfg.max_messages)
        (ids, _), = server.encoder.encode([template.prompt(messages)])
        req = server.request(body, ids, model, template.stop, strip=True)
        return await respond(request, body, req, chat=True)

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(request: Request):
        from instructglm.templates import Segment

        body = await read_json(request)
        model = body.get("model")
        server.template(model)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise APIError(400, "'prompt' must be a non-empty string (one prompt per request)", "prompt")
        (ids, _), = server.encoder.encode([[Segment(prompt, False)]])
        req = server.request(body, ids, model, (), strip=False)
        return await respond(request, body, req, chat=False)

    async def respond(request: Request, body: dict, req: GenRequest, chat: bool):
        if engine.pending() >= cfg.max_queue:
            raise APIError(429, "the server is busy; retry shortly", code="server_busy", type_="server_error")
        stream = _bool(body, "stream")
        opts = body.get("stream_options") or {}
        if not isinstance(opts, dict):
            raise APIError(400, "'stream_options' must be an object", "stream_options")
        include_usage = _bool(opts, "include_usage")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req.sink = lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created, model = int(time.time()), req.adapter
        obj = "chat.completion" if chat else "text_completion"

        def usage(n: int) -> dict:
            return {"prompt_tokens": len(req.prompt_ids), "completion_tokens": n,
                    "total_tokens": len(req.prompt_ids) + n}

        engine.submit(req)
        if not stream:
            parts, done = [], None
            try:
                while done is None:
                    try:
                        ev = await asyncio.wait_for(events.get(), timeout=1.0)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            req.cancel()
                            return JSONResponse(APIError(499, "client closed request").body(), status_code=499)
                        continue
                    if ev[0] == "delta":
                        parts.append(ev[1])
                    elif ev[0] == "error":
                        raise APIError(500, ev[1], type_="server_error")
                    else:
                        done = ev
            finally:
                if done is None:
                    req.cancel()
            text = "".join(parts)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                       "finish_reason": done[1]} if chat else
                      {"index": 0, "text": text, "logprobs": None, "finish_reason": done[1]})
            return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
                    "usage": usage(done[2])}

        def chunk(delta: dict | None, text: str | None, finish: str | None, use: dict | None = None) -> str:
            if chat:
                choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                    "finish_reason": finish}]
                data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": choices}
            else:
                choices = [] if text is None else [{"index": 0, "text": text, "logprobs": None,
                                                   "finish_reason": finish}]
                data = {"id": rid, "object": "text_completion", "created": created, "model": model,
                        "choices": choices}
            if use is not None:
                data["usage"] = use
            return "data: " + json.dumps(data, ensure_ascii=False) + "\n\n"

        async def sse():
            finished = False
            try:
                if chat:
                    yield chunk({"role": "assistant", "content": ""}, None, None)
                while True:
                    ev = await events.get()
                    if ev[0] == "delta":
                        yield chunk({"content": ev[1]}, ev[1], None)
                    elif ev[0] == "error":
                        finished = True
                        yield "data: " + json.dumps(APIError(500, ev[1], type_="server_error").body()) + "\n\n"
                        break
                    else:
                        finished = True
                        yield chunk({}, "", ev[1])
                        if include_usage:
                            yield chunk(None, None, None, usage(ev[2]))
                        break
                yield "data: [DONE]\n\n"
            finally:
                if not finished:  # the client went away (or the server is shutting down): free the row
                    req.cancel()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


# ---------------------------------------------------------------------------------------- build
def build_server(cfg: ServeConfig, start: bool = True) -> Server:
    """Load the base model and every adapter once; return the (started) server state."""
    from instructglm.templates import get_template
    from instructglm.models.adapters import adapter_info, load_with_adapters, parse_adapters

    adapters = parse_adapters(cfg.adapter)
    model, tokenizer, names = load_with_adapters(cfg.model, adapters)
    templates = {}
    shares_base = not names or hasattr(model, "disable_adapter")
    if shares_base:  # freeze/full results changed the base weights: no separate base then
        templates[BASE] = get_template(cfg.template or "alpaca", tokenizer)
    for name in names:
        templates[name] = get_template(adapter_info(adapters[name]).get("template") or "alpaca", tokenizer)
    engine = Engine(model, tokenizer, names if hasattr(model, "set_adapter") else [],
                    max_batch=cfg.max_batch_size, seed=cfg.seed)
    if start:
        engine.start()
    return Server(engine, templates, cfg, cfg.model or "")


def serve(cfg: ServeConfig) -> None:
    import os

    import uvicorn

    if cfg.api_key is None and os.environ.get("INSTRUCTGLM_API_KEY"):  # keeps the key out of `ps`
        cfg.api_key = os.environ["INSTRUCTGLM_API_KEY"]
    server = build_server(cfg)
    app = create_app(server)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and cfg.api_key is None:
        log.warning("serving on %s without --api-key: anyone who can reach this address can use the model",
                    cfg.host)
    print(f"serving {', '.join(server.templates)} on http://{cfg.host}:{cfg.port}/ "
          f"(OpenAI API at /v1, chat page at /)", flush=True)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        server.engine.stop()
