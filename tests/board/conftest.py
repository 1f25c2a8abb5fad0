"""The board under test: its app on a free loopback port in this process (its jobs and chat server
run as child processes, as in real use), over a fresh work directory."""

import contextlib

import pytest
from servers import running

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture
def make_board(tmp_path):
    """``make_board(**config)`` -> (Board, url); the chat server is stopped at the end."""
    from instructglm.board.app import BoardConfig, make_board as build
    from instructglm.board.routes import create_app

    stack = contextlib.ExitStack()
    boards = []

    def start(**kw):
        kw.setdefault("workdir", str(tmp_path / "work"))
        state = build(BoardConfig(**kw))
        boards.append(state)
        return state, stack.enter_context(running(create_app(state)))

    yield start
    stack.close()
    for state in boards:
        state.chat.stop()
