"""The board's HTTP side: the page, and one small JSON route per action. Every action that runs
something answers with the CLI command line(s) it ran or queued; a ``UserError`` from the board or
from the CLI comes back as ``{"error": "one line"}`` (status 400) for the page to show."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from instructglm.board import data as data_page
from instructglm.board import forms, runs
from instructglm.board.chat import ChatServer
from instructglm.board.i18n import TEXTS
from instructglm.board.jobs import JobQueue
from instructglm.board.messages import BoardError, payload
from instructglm.board.progress import failure, job_view
from instructglm.errors import UserError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
COOKIE = "instructglm_board"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


@dataclass
class Board:
    """What the routes share: the work directory, the job queue, the chat server, the token."""

    workdir: Path
    jobs: JobQueue
    chat: ChatServer
    token: str | None
    presets_dir: Path

    def run_dir(self, name: str) -> Path:
        path = self.workdir / "runs" / runs.safe_name(name, "run")
        return path

    def train_config(self):
        from instructglm.train import TrainConfig

        return TrainConfig


def _authorized(board: Board, request: Request) -> bool:
    if board.token is None:
        return True
    given = (request.headers.get("x-board-token") or request.cookies.get(COOKIE)
             or request.query_params.get("token") or "")
    return hmac.compare_digest(given.encode(), board.token.encode())


async def _body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise BoardError("body_not_json") from None
    if not isinstance(body, dict):
        raise BoardError("body_not_object")
    return body


def create_app(board: Board) -> FastAPI:  # long because it declares every route in one place
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        board.chat.stop()  # here, not after uvicorn.run: uvicorn re-raises SIGTERM once it has shut down

    app = FastAPI(title="InstructGLM Board", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.board = board

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if not _authorized(board, request):
            return JSONResponse(payload(BoardError("token")), status_code=401)
        response = await call_next(request)
        if board.token is not None and request.query_params.get("token"):
            response.set_cookie(COOKIE, board.token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return JSONResponse(payload(exc), status_code=400)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):
        log.exception("board: %s %s failed", request.method, request.url.path)
        return JSONResponse(payload(BoardError("internal", detail=f"{type(exc).__name__}: {exc}")), status_code=500)

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "board.html", headers=PAGE_HEADERS)

    @app.get("/static/{name}")
    async def static(name: str):
        path = STATIC / Path(name).name
        if not path.is_file():
            return JSONResponse({"error": "not found"}, status_code=404)
        return FileResponse(path, headers=PAGE_HEADERS)

    @app.get("/api/i18n")
    async def i18n():
        return TEXTS

    @app.get("/api/state")
    async def state():
        return {"workdir": str(board.workdir), "datasets": runs.list_datasets(board.workdir),
                "data_files": runs.list_data_files(board.workdir), "jobs": board.jobs.listing(),
                "runs": [{"name": p.name, "path": str(p), "finished": runs.finished(p)}
                         for p in runs.list_runs(board.workdir)], "chat": board.chat.status()}

    # ------------------------------------------------------------------ data
    @app.post("/api/data/upload")
    async def upload(request: Request, name: str):
        body = await request.body()
        path = await run_in_threadpool(data_page.save_upload, board.workdir, name, body)
        return {"path": str(path)}

    @app.post("/api/data/prepare")
    async def prepare(request: Request):
        b = await _body(request)
        return await run_in_threadpool(
            data_page.prepare, board.workdir, str(b.get("source", "")), str(b.get("name", "")),
            str(b.get("model") or "gemma3-270m"), str(b.get("template") or "alpaca"),
            _int(b.get("max_seq_length", 512), "max_seq_length"))

    # ------------------------------------------------------------------ train
    @app.get("/api/train/schema")
    async def schema():
        return {"groups": forms.form_schema(board.train_config()), "presets": forms.presets(board.presets_dir),
                "runs_dir": str(board.workdir / "runs")}

    @app.post("/api/train/preview")
    async def preview(request: Request):
        values = (await _body(request)).get("values") or {}
        return await run_in_threadpool(forms.preview, board.train_config(), values)

    @app.post("/api/train/launch")
    async def launch(request: Request):
        values = (await _body(request)).get("values") or {}
        shown = await run_in_threadpool(forms.preview, board.train_config(), values)
        target = Path(str(values.get("output_dir"))).expanduser().resolve()
        if target != board.run_dir(target.name).resolve():
            raise BoardError("output_dir", given=values.get("output_dir"), runs=board.workdir / "runs")
        job = board.jobs.submit("train", [["train", *shown["args"]]], target.name, str(board.run_dir(target.name)))
        return {**shown, "job": job.public()}

    @app.post("/api/train/resume")
    async def resume(request: Request):
        run = board.run_dir(str((await _body(request)).get("run", "")))
        if not runs.checkpoints(run):
            raise BoardError("no_checkpoint", run=run)
        job = board.jobs.submit("train", [resume_command(board, run)], run.name, str(run))
        return {"command": job.command_lines()[0], "job": job.public()}

    @app.get("/api/runs")
    async def all_runs():
        return [_summary(board, p) for p in runs.list_runs(board.workdir)]

    @app.get("/api/runs/{name}")
    async def one_run(name: str):
        run = board.run_dir(name)
        summary = _summary(board, run)
        summary["log_tail"] = board.jobs.log_tail(summary["job"]["id"]) if summary["job"] else ""
        job = board.jobs.latest("train", str(run))
        summary["failure"] = failure(board.jobs, job) if job else None
        return summary

    @app.post("/api/runs/{name}/report")
    async def report(name: str):
        run = board.run_dir(name)
        if not runs.finished(run):
            raise BoardError("not_finished", run=run)
        job = board.jobs.submit("report", [["report", str(run)]], run.name, str(run))
        return {"job": job.public(), "commands": job.command_lines()}

    @app.get("/api/runs/{name}/{file}")
    async def run_file(name: str, file: str):
        if file not in ("report.html", "loss.png"):
            raise BoardError("not_shown", file=file)
        path = board.run_dir(name) / file
        if not path.exists():
            raise BoardError("not_written", path=path)
        return FileResponse(path)

    # ------------------------------------------------------------------ jobs
    @app.get("/api/jobs")
    async def jobs():
        return board.jobs.listing()

    @app.get("/api/jobs/{job_id}")
    async def job(job_id: str):
        return job_view(board.jobs, board.jobs.get(job_id))

    @app.post("/api/jobs/{job_id}/stop")
    async def stop(job_id: str):
        return board.jobs.stop(job_id).public()

    # ------------------------------------------------------------------ chat
    @app.post("/api/chat/start")
    async def chat_start(request: Request):
        b = await _body(request)
        adapters = {runs.safe_name(n, "adapter"): str(board.run_dir(n)) for n in b.get("adapters") or []}
        return await run_in_threadpool(board.chat.start, str(b.get("model") or ""), adapters)

    @app.post("/api/chat")
    async def chat(request: Request):
        b = await _body(request)
        if not board.chat.status()["running"]:
            raise BoardError("chat_not_loaded")
        body = {"model": b.get("model"), "messages": b.get("messages"), "stream": True,
                "max_tokens": _int(b.get("max_tokens", 128), "max_tokens"), "temperature": 0}
        return StreamingResponse(_relay(board, body), media_type="text/event-stream")

    # ------------------------------------------------------------------ evaluate, export
    @app.post("/api/eval")
    async def evaluate(request: Request):
        b = await _body(request)
        return await run_in_threadpool(_eval_job, board, b)

    @app.get("/api/evals/{name}")
    async def eval_result(name: str):
        folder = board.workdir / "evals" / runs.safe_name(name, "eval")
        return {"metrics": runs.read_metrics(folder / "metrics.json"), "path": str(folder)}

    @app.post("/api/export")
    async def export(request: Request):
        return _export_job(board, await _body(request))

    return app


def _int(value: Any, key: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BoardError("whole_number", key=key, value=repr(value)) from None


def _summary(board: Board, run: Path) -> dict:
    job = board.jobs.latest("train", str(run))
    return runs.run_summary(run, job.public() if job else None)


def resume_command(board: Board, run: Path) -> list[str]:
    """The run's last training command with ``--resume latest``; for a run started elsewhere, its
    resolved ``train_config.yaml`` with ``resume=latest``."""
    job = board.jobs.latest("train", str(run))
    if job is None:
        return ["train", str(run / "train_config.yaml"), "resume=latest"]
    args, words = job.commands[0][1:], []
    skip = False
    for word in args:
        if skip:
            skip = False
        elif word == "--resume":
            skip = True
        else:
            words.append(word)
    return ["train", *words, "--resume", "latest"]


async def _relay(board: Board, body: dict):
    """The model server's event stream, passed on as it comes; an error becomes one event."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=5)) as client:
            async with client.stream("POST", board.chat.url + "/v1/chat/completions", json=body,
                                     headers=board.chat.headers()) as r:
                if r.status_code != 200:
                    text = (await r.aread()).decode("utf-8", errors="replace")
                    try:
                        message = json.loads(text)["error"]["message"]
                    except (ValueError, KeyError, TypeError):
                        message = text[:500]
                    yield f"data: {json.dumps(payload(UserError(message)))}\n\n".encode()
                    return
                async for chunk in r.aiter_raw():
                    yield chunk
    except httpx.HTTPError as e:
        yield f"data: {json.dumps(payload(BoardError('server_unreachable', detail=e)))}\n\n".encode()


def _eval_job(board: Board, b: dict) -> dict:
    run_name = str(b.get("run") or "")
    data = Path(str(b.get("data") or ""))
    if not data.is_file():
        raise BoardError("no_such_data_file", path=data)
    name = runs.safe_name(str(b.get("name") or f"{run_name or 'base'}-{data.stem}"), "eval")
    folder = board.workdir / "evals" / name
    folder.mkdir(parents=True, exist_ok=True)
    infer = ["infer", "--data", str(data), "-o", str(folder / "predictions.jsonl")]
    if b.get("model"):
        infer += ["--model", str(b["model"])]
    if run_name:
        infer += ["--adapter", str(board.run_dir(run_name))]
        if b.get("compare_base", True):
            infer += ["--compare-base"]
    if b.get("limit"):
        infer += ["--limit", str(_int(b["limit"], "limit"))]
    if b.get("max_new_tokens"):
        infer += ["--max-new-tokens", str(_int(b["max_new_tokens"], "max_new_tokens"))]
    score = ["eval", str(folder / "predictions.jsonl"), "-o", str(folder / "metrics.json")]
    total = _rows_to_answer(data, _int(b["limit"], "limit") if b.get("limit") else None)
    job = board.jobs.submit("eval", [infer, score], name, str(folder), total=total)
    return {"name": name, "job": job.public(), "commands": job.command_lines()}


def _rows_to_answer(data: Path, limit: int | None) -> int | None:
    """The records ``infer`` will answer (read as infer reads them), for its progress bar; a file it
    cannot read counts as unknown here: the infer command itself then says why, in the page."""
    from instructglm.convert import read_conversations

    try:
        return len(read_conversations(data, limit=limit))
    except (UserError, OSError, ValueError):
        return None


def _export_job(board: Board, b: dict) -> dict:
    run = board.run_dir(str(b.get("run") or ""))
    if not runs.finished(run):
        raise BoardError("not_finished", run=run)
    folder = board.workdir / "exports" / runs.safe_name(str(b.get("name") or run.name), "export")
    merged = folder / "merged"
    commands = [["merge", "--adapter", str(run), "-o", str(merged)]]
    if b.get("gguf"):
        commands.append(["export", "--model", str(merged), "--format", "gguf", "-o", str(folder / "model.gguf"),
                         "--quant", str(b.get("quant") or "f16"), "--force"])  # the merge above was redone too
    job = board.jobs.submit("export", commands, folder.name, str(folder))
    return {"job": job.public(), "commands": job.command_lines(), "output": str(folder)}
