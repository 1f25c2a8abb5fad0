"""``instructglm board``: a local bilingual web app over the CLI (Data, Train, Runs, Chat, Evaluate,
Export).

Why FastAPI and a small hand-written page rather than Gradio: the project already serves and tests a
FastAPI app and its page in headless Chromium; the board's page needs no framework (a form generated
from the config dataclasses, an SVG loss curve, a streamed chat), it stays fully offline with nothing
to switch off (no CDN, web fonts or analytics to disable), and it adds no dependency.

Safe defaults: binds 127.0.0.1; on any other address a token is required (``--auth-token``, or one
is generated and printed), compared in constant time. Every action runs a CLI command as a child
process and shows it; the board itself never loads a model.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from instructglm.config import add_arguments, load_config, opt
from instructglm.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class BoardConfig:
    host: str = opt("127.0.0.1", help="address to bind (any other than 127.0.0.1 needs a token)")
    port: int = opt(7860, help="TCP port")
    workdir: str = opt("board", help="work directory: uploads, datasets, runs, evaluations, exports, job logs")
    auth_token: str | None = opt(None, help="token for the page (required off 127.0.0.1; or set "
                                            "INSTRUCTGLM_BOARD_TOKEN; generated and printed when not given)")
    presets: str = opt("configs", help="directory of preset train configs (*.yaml)")

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise UserError(f"--port: must be 0..65535, got {self.port}")
        if self.auth_token is not None and len(self.auth_token.strip()) < 8:
            raise UserError("--auth-token: use at least 8 characters")


def make_board(cfg: BoardConfig):
    """The routes' shared state for ``cfg`` (the job queue starts and re-attaches to earlier jobs)."""
    from instructglm.board.chat import ChatServer
    from instructglm.board.jobs import JobQueue
    from instructglm.board.routes import Board

    workdir = Path(cfg.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    token = cfg.auth_token or os.environ.get("INSTRUCTGLM_BOARD_TOKEN") or None  # the environment keeps it out of `ps`
    if token is None and cfg.host not in LOOPBACK:
        token = secrets.token_urlsafe(18)
    return Board(workdir, JobQueue(workdir), ChatServer(workdir), token, Path(cfg.presets).expanduser())


def board(cfg: BoardConfig) -> None:
    import uvicorn

    from instructglm.board.routes import create_app

    state = make_board(cfg)
    app = create_app(state)
    address = f"http://{cfg.host}:{cfg.port}/" + (f"?token={state.token}" if state.token else "")
    print(f"InstructGLM Board on {address} (work directory {state.workdir})", flush=True)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=3)
    finally:
        state.chat.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m instructglm.board [--host H] [--port P] [--workdir DIR] [--auth-token T]``."""
    parser = argparse.ArgumentParser(prog="instructglm board", description="local web UI: data, train, runs, "
                                     "chat, evaluate, export")
    add_arguments(parser, BoardConfig)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(BoardConfig, flags=vars(args))
        board(cfg)
    except UserError as e:
        print(f"instructglm board: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
