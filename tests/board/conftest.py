"""The board under test: its app on a free loopback port in this process (its jobs and chat server
run as child processes, as in real use), over a fresh work directory."""

import contextlib
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@contextlib.contextmanager
def running(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


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
