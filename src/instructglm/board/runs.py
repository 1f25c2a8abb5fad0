"""What the board knows about the work directory: prepared datasets, training runs, evaluations and
exports, read from the files the CLI writes (so runs started from a terminal show up too)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from instructglm.constants import TRAIN_CONFIG, TRAINER_LOG

CHECKPOINT = re.compile(r"checkpoint-(\d+)$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def safe_name(name: str, what: str = "run") -> str:
    """A file or run name the board creates under the work directory (no path separators, no dots first);
    ``what`` says which name it is (a ``what.*`` key of i18n: run, file, dataset, eval, export, adapter)."""
    from instructglm.board.messages import BoardError

    name = (name or "").strip()
    if not SAFE_NAME.match(name):
        raise BoardError("bad_name", what=what, name=name)
    return name


def read_log(run: Path) -> list[dict]:
    """The lines of ``trainer_log.jsonl`` (a line being written is skipped)."""
    path = run / TRAINER_LOG
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def checkpoints(run: Path) -> list[int]:
    steps = []
    for child in run.iterdir() if run.is_dir() else []:
        m = CHECKPOINT.match(child.name)
        if m and (child / ".complete").exists():
            steps.append(int(m.group(1)))
    return sorted(steps)


def finished(run: Path) -> bool:
    """The final save happened: the run info is written last, beside the trained weights."""
    return (run / "instructglm.json").exists()


def run_summary(run: Path, job: dict | None) -> dict:
    logs = read_log(run)
    losses = [r for r in logs if "loss" in r]
    config = {}
    if (run / TRAIN_CONFIG).exists():
        try:
            config = yaml.safe_load((run / TRAIN_CONFIG).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            config = {}
    job_status = job["status"] if job else None
    if job_status in ("running", "waiting"):
        status = job_status
    elif job_status == "failed":
        status = "failed"
    elif finished(run) and not (job and job.get("stop_requested")):
        status = "finished"
    elif checkpoints(run):
        status = "stopped"
    else:
        status = job_status or "unknown"
    last = losses[-1] if losses else {}
    return {"name": run.name, "path": str(run), "status": status, "job": job, "config": config,
            "checkpoints": checkpoints(run), "last": last, "logs": logs,
            "total_steps": config.get("max_steps") if isinstance(config.get("max_steps"), int) else None,
            "has_report": (run / "report.html").exists(), "has_plot": (run / "loss.png").exists()}


def list_runs(workdir: Path) -> list[Path]:
    root = workdir / "runs"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and ((p / TRAIN_CONFIG).exists()
                   or (p / TRAINER_LOG).exists() or finished(p))), key=lambda p: p.stat().st_mtime, reverse=True)


def list_datasets(workdir: Path) -> list[dict]:
    """Tokenized datasets under ``WORKDIR/data`` (directories with a ``manifest.json``)."""
    root = workdir / "data"
    found = []
    for p in sorted(root.glob("*/manifest.json")) if root.is_dir() else []:
        try:
            manifest = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            manifest = {}
        found.append({"name": p.parent.name, "path": str(p.parent), "model": manifest.get("model"),
                      "template": manifest.get("template")})
    return found


def list_data_files(workdir: Path) -> list[dict]:
    """Canonical JSONL files under ``WORKDIR/data`` and uploads (for Evaluate's data file)."""
    files = []
    for folder in ("data", "uploads"):
        for p in sorted((workdir / folder).glob("*.json*")) if (workdir / folder).is_dir() else []:
            if not p.name.endswith(".rejects.jsonl"):
                files.append({"name": f"{folder}/{p.name}", "path": str(p)})
    return files


def read_metrics(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
