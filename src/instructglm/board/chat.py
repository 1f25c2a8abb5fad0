"""The Chat page's model server: ``instructglm serve`` as a child process on a free local port (the
board never loads a model itself), restarted when the page asks for another base model or other
adapters. Its API key is random and travels in the environment, so only the board reaches it."""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from instructglm.board.messages import BoardError, cli_error_line
from instructglm.errors import UserError

START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChatServer:
    def __init__(self, workdir: Path, python: str = sys.executable):
        self.log_path = workdir / "chat-server.log"
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.args: list[str] = []
        self.port = 0
        self.key = ""
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, model: str, adapters: dict[str, str]) -> list[str]:
        args = ["serve"]
        if model:
            args += ["--model", model]
        for name, path in adapters.items():
            args += ["--adapter", f"{name}={path}"]
        return args

    def status(self) -> dict:
        running = self.proc is not None and self.proc.poll() is None
        return {"running": running, "command": shlex.join(["instructglm", *self.args, "--port", str(self.port)])
                if self.args else "", "models": self.models() if running else []}

    def models(self) -> list[str]:
        import httpx

        try:
            r = httpx.get(self.url + "/v1/models", headers=self.headers(), timeout=5)
            return [m["id"] for m in r.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError):
            return []

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}

    def start(self, model: str, adapters: dict[str, str]) -> dict:
        """(Re)start the server for ``model`` + ``adapters`` and wait until it answers; a failure is a
        UserError with the server's own error line."""
        import httpx

        args = self.command(model, adapters)
        with self.lock:
            if self.proc is not None and self.proc.poll() is None and args == self.args:
                return self.status()
            self.stop()
            self.args, self.port, self.key = args, free_port(), secrets.token_urlsafe(24)
            env = {**os.environ, "INSTRUCTGLM_API_KEY": self.key, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
            log = open(self.log_path, "wb")
            self.proc = subprocess.Popen([self.python, "-m", "instructglm", *args, "--host", "127.0.0.1", "--port",
                                          str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            log.close()
            deadline = time.time() + START_TIMEOUT_S
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    raise self._failure()
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return self.status()
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            self.stop()
            raise BoardError("server_timeout", command=shlex.join(["instructglm", *args]), seconds=START_TIMEOUT_S)

    def _failure(self) -> UserError:
        """The server's own error line, or (a crash) the board's message with the end of its log."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        line = cli_error_line(text)
        if line is not None:
            return UserError(line)
        return BoardError("server_stopped", command=shlex.join(["instructglm", *self.args]),
                          code=self.proc.returncode, tail=text[-1500:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
