"""The board's job queue: every action that takes a while is a list of CLI commands run as child
processes, one job at a time (the board never trains, generates or merges in its own process).

Each job keeps its state in ``WORKDIR/jobs/ID/``: ``job.json`` (kind, commands, status, pid, exit
codes) and ``log.txt`` (the commands' stdout and stderr, each headed by its command line). A board
started again reads them back: a job whose process is still alive is shown as running (and can be
stopped) and ``ended`` once it has gone (its exit code went to the old board; the run directory
says how far it got); a job still waiting when its board went away is marked ``lost``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from instructglm.board.messages import BoardError
from instructglm.files import atomic_file

WAITING, RUNNING, DONE, FAILED, STOPPED, LOST = "waiting", "running", "done", "failed", "stopped", "lost"
ENDED_ELSEWHERE = "ended"  # a re-attached job whose process ended: its exit code went to the old board


@dataclass
class Job:
    id: str
    kind: str  # train, eval, export, ...
    commands: list[list[str]]  # argv after "instructglm"
    title: str = ""
    target: str = ""  # the run, eval or export directory the job writes
    status: str = WAITING
    pid: int | None = None
    returncodes: list[int] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    total: int | None = None  # rows an infer command of the job will answer, for its progress bar
    stop_requested: bool = False

    def command_lines(self) -> list[str]:
        return [shlex.join(["instructglm", *c]) for c in self.commands]

    def public(self) -> dict:
        return {**asdict(self), "command_lines": self.command_lines()}


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie of ours (reaped by nobody yet) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


class JobQueue:
    """Jobs in order of submission; a worker thread runs the first waiting one when none runs."""

    def __init__(self, workdir: Path, python: str = sys.executable):
        self.root = workdir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Condition()
        self.proc: subprocess.Popen | None = None
        self._reattach()
        self.worker = threading.Thread(target=self._work, name="board-jobs", daemon=True)
        self.worker.start()

    # -------------------------------------------------------------------- state on disk
    def _reattach(self) -> None:
        for path in sorted(self.root.glob("*/job.json")):
            try:
                job = Job(**json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, TypeError):
                continue
            if job.status == RUNNING and not _alive(job.pid):
                job.status, job.ended = ENDED_ELSEWHERE, time.time()
            elif job.status == WAITING:
                job.status = LOST  # its board went away before it started; submit it again
            self.jobs[job.id] = job
            self._save(job)

    def _save(self, job: Job) -> None:
        folder = self.root / job.id
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / "job.json") as f:
            f.write(json.dumps(asdict(job), ensure_ascii=False, indent=1))

    def log_path(self, job_id: str) -> Path:
        return self.root / job_id / "log.txt"

    def log_tail(self, job_id: str, lines: int = 60) -> str:
        path = self.log_path(job_id)
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 64_000))
            text = f.read().decode("utf-8", errors="replace")
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])

    # -------------------------------------------------------------------- actions
    def submit(self, kind: str, commands: list[list[str]], title: str = "", target: str = "",
               total: int | None = None) -> Job:
        with self.lock:
            if kind == "train" and any(j.kind == "train" and j.target == target and j.status in (WAITING, RUNNING)
                                       for j in self.jobs.values()):
                raise BoardError("train_queued", target=target)
            job_id = time.strftime("%Y%m%d-%H%M%S-") + f"{len(self.jobs) + 1:03d}"
            job = Job(job_id, kind, commands, title, target, total=total)
            self.jobs[job_id] = job
            self._save(job)
            self.lock.notify_all()
        return job

    def stop(self, job_id: str) -> Job:
        """SIGTERM to a running job (training saves a checkpoint and exits cleanly); a waiting job is
        taken off the queue."""
        with self.lock:
            job = self.get(job_id)
            if job.status == WAITING:
                job.status, job.ended = STOPPED, time.time()
            elif job.status == RUNNING:
                job.stop_requested = True  # between two commands: the next one does not start
                if job.pid:
                    try:
                        os.kill(job.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            else:
                raise BoardError("job_not_running", job=job_id, status=job.status)
            self._save(job)
            return job

    def get(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise BoardError("no_job", job=job_id)
        return self._refresh(self.jobs[job_id])

    def _refresh(self, job: Job) -> Job:
        """A re-attached job (its process is not our child) has ended when its process is gone."""
        ours = self.proc is not None and self.proc.pid == job.pid
        if job.status == RUNNING and job.pid and not ours and not _alive(job.pid):
            job.status, job.ended = ENDED_ELSEWHERE, time.time()
            self._save(job)
        return job

    def listing(self) -> list[dict]:
        with self.lock:
            jobs = sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)
            return [self._refresh(j).public() for j in jobs]

    def latest(self, kind: str, target: str) -> Job | None:
        with self.lock:
            found = [j for j in self.jobs.values() if j.kind == kind and j.target == target]
            return self._refresh(max(found, key=lambda j: j.created)) if found else None

    # -------------------------------------------------------------------- the worker
    def _next(self) -> Job:
        with self.lock:
            while True:
                busy = any(j.status == RUNNING and _alive(j.pid) for j in self.jobs.values())
                waiting = [j for j in self.jobs.values() if j.status == WAITING]
                if waiting and not busy:
                    job = min(waiting, key=lambda j: j.created)
                    job.status, job.started = RUNNING, time.time()
                    self._save(job)
                    return job
                self.lock.wait(timeout=1.0)

    def _work(self) -> None:
        while True:
            job = self._next()
            self._run(job)

    def _run(self, job: Job) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
        with open(self.log_path(job.id), "ab") as log:
            for argv in job.commands:
                log.write(f"$ {shlex.join(['instructglm', *argv])}\n".encode())
                log.flush()
                try:
                    proc = subprocess.Popen([self.python, "-m", "instructglm", *argv], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)  # a Ctrl-C on the board is not the job's
                except OSError as e:
                    log.write(f"board: could not start the command: {e}\n".encode())
                    job.returncodes.append(-1)
                    break
                with self.lock:
                    self.proc, job.pid = proc, proc.pid
                    self._save(job)
                code = proc.wait()
                with self.lock:
                    self.proc, job.pid = None, None
                    job.returncodes.append(code)
                    self._save(job)
                if code != 0 or job.stop_requested:
                    break
        with self.lock:
            codes = job.returncodes
            ok = len(codes) == len(job.commands) and all(c == 0 for c in codes)
            job.status = STOPPED if job.stop_requested else DONE if ok else FAILED
            job.ended = time.time()
            self._save(job)
            self.lock.notify_all()
