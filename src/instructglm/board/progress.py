"""How far a queued job has got, what it wrote, and why it failed, read from the files its commands
write (the board never runs them in its own process, so it watches their traces).

* Progress: which of the job's commands runs (``step i of n``), and for ``infer`` the answered rows
  out of the rows to answer: ``infer`` appends every finished batch to ``OUTPUT.partial`` (its tqdm
  bar is off when the output is not a terminal, so the partial file is the honest count). ``eval``,
  ``merge`` and ``export`` report no steps of their own; they show as their step of the job.
* Outputs: the files in the job's target directory once it is done, with their sizes.
* Failure: the CLI's own error line of the command that failed, or the board's message when it ended
  without one (a crash or a signal; the log shows why).
"""

from __future__ import annotations

import time
from pathlib import Path

from instructglm.board.jobs import DONE, FAILED, RUNNING, Job, JobQueue
from instructglm.board.messages import BoardError, cli_error_line, payload
from instructglm.errors import UserError

PARTIAL_SUFFIX = ".partial"  # infer's OUTPUT.partial (instructglm.infer.infer.PARTIAL_SUFFIX, not imported: torch)


def _option(argv: list[str], *names: str) -> str | None:
    """The value after the first of ``names`` in a command's words."""
    for i, word in enumerate(argv[:-1]):
        if word in names:
            return argv[i + 1]
    return None


def answered_rows(partial: Path) -> int:
    """Rows in an infer partial file (its first line holds the run's settings, not a row)."""
    if not partial.is_file():
        return 0
    with open(partial, "rb") as f:
        lines = sum(1 for line in f if line.strip())
    return max(0, lines - 1)


def progress(job: Job) -> dict:
    """``{"stage", "stages", "name", "done", "total", "fraction", "elapsed_s"}`` of ``job``."""
    stages = len(job.commands)
    if job.status == DONE:
        return {"stage": stages, "stages": stages, "name": job.commands[-1][0], "done": None, "total": None,
                "fraction": 1.0, "elapsed_s": round((job.ended or time.time()) - (job.started or job.created))}
    running = job.status == RUNNING
    # the command running now, or (failed, stopped) the last one that ran: its rows so far still count
    stage = min(len(job.returncodes), stages - 1) if running else max(0, len(job.returncodes) - 1)
    completed = sum(1 for c in job.returncodes[:stage] if c == 0)
    argv = job.commands[stage]
    done = total = None
    if argv[0] == "infer" and job.total and (output := _option(argv, "-o", "--output")):
        done, total = min(answered_rows(Path(output + PARTIAL_SUFFIX)), job.total), job.total
        if Path(output).is_file():  # written at the very end, the partial file removed
            done = total
    within = done / total if done is not None and total else 0.0
    return {"stage": stage + 1, "stages": stages, "name": argv[0], "done": done,
            "total": total, "fraction": round((completed + within) / stages, 4),
            "elapsed_s": round(time.time() - (job.started or job.created)) if running else None}


def outputs(target: str) -> list[dict]:
    """The files and directories a finished job left in its target directory, with their sizes."""
    root = Path(target)
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith(".") or path.name.endswith((PARTIAL_SUFFIX, ".tmp")):
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        found.append({"path": str(path), "dir": path.is_dir(), "bytes": size})
    return found


def failure(queue: JobQueue, job: Job) -> dict | None:
    """Why a failed job failed, as the page shows errors: the failing command's own error line, else
    the board's message naming the command and its exit status."""
    if job.status != FAILED or not job.returncodes:
        return None
    text = queue.log_tail(job.id, lines=400)
    last = text.rfind("$ instructglm ")  # the failed command's own output starts at its header line
    line = cli_error_line(text[last:] if last >= 0 else text)
    if line is not None:
        return payload(UserError(line))
    command = job.command_lines()[len(job.returncodes) - 1]
    return payload(BoardError("job_crashed", command=command, code=job.returncodes[-1]))


def job_view(queue: JobQueue, job: Job) -> dict:
    """A job as the Evaluate and Export pages poll it."""
    return {**job.public(), "log_tail": queue.log_tail(job.id), "progress": progress(job),
            "outputs": outputs(job.target) if job.status == DONE and job.target else [],
            "failure": failure(queue, job)}
