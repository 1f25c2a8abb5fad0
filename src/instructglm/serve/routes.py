"""``serve``'s HTTP side: one small handler per route, the error handlers, and the app that joins them.

Every error leaves as an OpenAI-style JSON body: :class:`~instructglm.serve.protocol.APIError`
for what a request got wrong, a clean 500 (logged, never a traceback) for our bugs.
"""

import hmac
import json
import logging
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from instructglm.serve.app import Server
from instructglm.serve.protocol import APIError, chat_request, check_text, completion_request
from instructglm.serve.replies import respond

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff"}


def _server(request: Request) -> Server:
    return request.app.state.server


async def require_key(request: Request) -> None:
    key = _server(request).cfg.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "invalid or missing API key (Authorization: Bearer KEY)", code="invalid_api_key")


async def read_body(request: Request) -> dict:
    """The JSON object of the request, read no further than ``--max-body-bytes``."""
    limit = _server(request).cfg.max_body_bytes
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
    except RecursionError:
        raise APIError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    check_text(body)
    return body


async def health():
    return {"status": "ok"}


async def index():
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)


async def metrics(request: Request):
    batcher = _server(request).batcher
    queued = batcher.queued()
    text = batcher.metrics.render(queued, batcher.pending() - queued)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def list_models(request: Request):
    server = _server(request)
    return {"object": "list", "data": [server.model_card(name) for name in server.templates]}


async def get_model(name: str, request: Request):
    server = _server(request)
    server.template(name)
    return server.model_card(name)


async def chat_completions(request: Request):
    server, body = _server(request), await read_body(request)
    return await respond(request, server, chat_request(server, body), body, chat=True)


async def completions(request: Request):
    server, body = _server(request), await read_body(request)
    return await respond(request, server, completion_request(server, body), body, chat=False)


# ---------------------------------------------------------------------------------------- errors
class _CatchAll:
    """Outermost handler for bugs: log the traceback, answer a clean JSON 500 (no traceback leaves);
    it also counts the API's answers by status for ``/metrics``."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def _send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if scope.get("path", "").startswith("/v1/"):
                    self.metrics.status(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                body = APIError(500, "internal server error", type_="server_error").body()
                await JSONResponse(body, status_code=500)(scope, receive, _send)


async def _api_error(request: Request, exc: APIError):
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _invalid_request(request: Request, exc):
    return JSONResponse(APIError(400, "invalid request").body(), status_code=400)


async def _http_error(request: Request, exc: HTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(APIError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="InstructGLM", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(_CatchAll, metrics=server.batcher.metrics)
    keyed = [Depends(require_key)]
    read = ["GET", "HEAD"]  # HEAD: what load balancers and uptime checks send (uvicorn leaves the body out)
    app.add_api_route("/health", health, methods=read)
    app.add_api_route("/", index, methods=read, response_class=HTMLResponse)
    app.add_api_route("/metrics", metrics, methods=read, dependencies=keyed)
    app.add_api_route("/v1/models", list_models, methods=read, dependencies=keyed)
    app.add_api_route("/v1/models/{name}", get_model, methods=read, dependencies=keyed)
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], dependencies=keyed)
    app.add_api_route("/v1/completions", completions, methods=["POST"], dependencies=keyed)
    return app
