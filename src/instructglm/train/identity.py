"""Which run an output directory and its checkpoints belong to: ``run_identity.json``.

A run's identity is its resolved config without the keys that only change how it is watched or
saved (:data:`HARMLESS`: logging and eval cadence, checkpoint rotation, speed switches, where it
writes), with the dataset paths replaced by a fingerprint of the tokenized rows (the source
files' sha256, the tokenizer, the template and the row settings from each ``manifest.json``): a
moved dataset is the same data, a dataset tokenized from other files is not.

``OUT/run_identity.json`` is written when a run starts and a copy goes into every checkpoint, so a
checkpoint copied elsewhere still says which run wrote it. :func:`check_output_dir` decides,
before the model loads, whether a run may use ``OUT``: a resume must match the identity its
checkpoint recorded (``resume_anyway`` continues with a warning naming the differences), and a new
run never starts in a directory that holds another run's checkpoints or finished result (mixing
them is how ``--resume latest`` used to pick up an old run's newer checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from instructglm.constants import RUN_INFO
from instructglm.errors import UserError
from instructglm.files import read_json, write_json

log = logging.getLogger(__name__)

IDENTITY = "run_identity.json"
FORMAT = 1

# Keys that never change what a run computes, only how it is observed, saved or sped up.
HARMLESS = frozenset({
    "output_dir", "logging_steps", "save_steps", "save_total_limit", "eval_steps", "eval_dataset", "resume",
    "resume_anyway", "dry_run", "stop_on_nan", "gradient_checkpointing", "compile", "liger", "trust_remote_code",
})
# Compared as one number, the effective batch (see run_identity).
BATCH = frozenset({"per_device_train_batch_size", "gradient_accumulation_steps"})
# How long to train may change when resuming (train further, or stop sooner): said in a warning, not refused.
LENGTH = frozenset({"max_steps", "num_epochs"})


def data_fingerprint(parts: list[str]) -> str:
    """A short hash of what decides the tokenized rows of every dataset part (not where they are)."""
    from instructglm.tokenize import read_manifest

    h = hashlib.sha256()
    for part in parts:
        manifest = read_manifest(part)
        sources = manifest.get("sources") or []
        key = {"sources": [s.get("sha256") for s in sources if isinstance(s, dict)],
               **{k: manifest.get(k) for k in ("tokenizer", "template", "template_sha256", "settings")}}
        h.update(json.dumps(key, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def run_identity(cfg, parts: list[str], processes: int = 1) -> dict:
    """The identity of the run ``cfg`` describes, on the dataset ``parts``, in ``processes`` processes.

    The batch counts as the effective batch (rows per optimizer step): the same rows make each step
    whether 2 processes take 2 rows or 1 process takes 4, so a checkpoint resumes in another layout."""
    from instructglm.config import flat_values
    from instructglm.runinfo import recorded_base

    config = {k: v for k, v in flat_values(cfg).items() if k not in HARMLESS | BATCH and k != "dataset"}
    config["model"] = recorded_base(cfg.model)
    schedule = cfg.schedule
    per_device, accumulation = schedule.per_device_train_batch_size, schedule.gradient_accumulation_steps
    batch = {"effective": per_device * accumulation * processes,
             "layout": f"{per_device} per device x {accumulation} accumulation x {processes} process(es)"}
    return {"format": FORMAT, "config": config, "batch": batch, "data": data_fingerprint(parts),
            "dataset": [str(Path(p).resolve()) for p in parts]}


def read_identity(directory: Path) -> dict | None:
    """The identity recorded in ``directory`` (an output or checkpoint directory); None when there is
    none (written before identities were recorded)."""
    path = directory / IDENTITY
    if not path.is_file():
        return None
    data = read_json(path)
    if not (isinstance(data, dict) and isinstance(data.get("config"), dict) and "data" in data):
        raise UserError(f"{path}: not a run identity (expected 'config' and 'data'); the file is damaged")
    return data


def write_identity(directory: Path, identity: dict) -> None:
    write_json(directory / IDENTITY, identity)


def _show(value) -> str:
    return "unset" if value is None else str(value)


def differences(old: dict, new: dict, skip: frozenset = frozenset()) -> list[str]:
    """What ``new`` changes from ``old``, one short phrase per key not in ``skip`` (keys one side lacks,
    from another version, are not compared)."""
    found = []
    if old.get("data") != new.get("data"):
        before, after = ", ".join(old.get("dataset") or ["?"]), ", ".join(new.get("dataset") or ["?"])
        where = f"{before} -> {after}" if before != after else f"{after} was tokenized again from other data"
        found.append(f"dataset ({where})")
    batch_a, batch_b = old.get("batch") or {}, new.get("batch") or {}
    if batch_a and batch_b and batch_a.get("effective") != batch_b.get("effective"):
        found.append(f"effective batch ({batch_a.get('effective')} = {batch_a.get('layout')} -> "
                     f"{batch_b.get('effective')} = {batch_b.get('layout')})")
    a, b = old.get("config", {}), new.get("config", {})
    for key in b:
        if key in a and key not in HARMLESS | skip and a[key] != b[key]:
            found.append(f"{key} ({_show(a[key])} -> {_show(b[key])})")
    return found


def _checkpoint_names(output_dir: Path) -> list[str]:
    from instructglm.train.checkpoint import complete_checkpoints

    return [p.name for p in complete_checkpoints(output_dir)]


def check_resume(checkpoint: Path, identity: dict, anyway: bool) -> None:
    """A resumed run must be the run that wrote ``checkpoint``; ``anyway`` turns a refusal into a warning."""
    recorded = read_identity(checkpoint) or read_identity(checkpoint.parent)
    if recorded is None:
        log.warning("%s: written before runs recorded their identity; cannot check that this run matches it",
                    checkpoint)
        return
    longer = [d for d in differences(recorded, identity) if d.split(" ")[0] in LENGTH]
    if longer:
        log.warning("resuming %s with another training length: %s", checkpoint, "; ".join(longer))
    changed = differences(recorded, identity, skip=LENGTH)
    if not changed:
        return
    listed = "; ".join(changed)
    if not anyway:
        raise UserError(f"--resume {checkpoint}: this run differs from the one that wrote the checkpoint in "
                        f"{listed}; rerun with its settings, or add --resume-anyway to continue with these")
    log.warning("--resume-anyway: continuing %s with different settings: %s", checkpoint, listed)


def check_new_run(output_dir: Path, identity: dict) -> None:
    """A new run never starts over another run's checkpoints or finished result in ``output_dir``."""
    names = _checkpoint_names(output_dir)
    if names:
        shown = ", ".join(names[-3:])
        raise UserError(f"{output_dir}: already holds checkpoints of a run ({shown}); add --resume latest to "
                        f"continue it, or give another --output-dir for a new run")
    recorded = read_identity(output_dir) if output_dir.is_dir() else None
    if recorded is not None and (output_dir / RUN_INFO).is_file():
        changed = differences(recorded, identity)
        if changed:
            raise UserError(f"{output_dir}: holds the finished result of another run (it differs in "
                            f"{'; '.join(changed)}); give another --output-dir, or delete that result first")


def check_output_dir(output_dir: Path, resume_from: Path | None, identity: dict, anyway: bool) -> None:
    """Whether this run may use ``output_dir`` (see the module docstring); raises a one-line UserError."""
    if resume_from is None:
        check_new_run(output_dir, identity)
        return
    check_resume(resume_from, identity, anyway)
    if resume_from.resolve().parent != output_dir.resolve():
        names = [n for n in _checkpoint_names(output_dir)]
        if names:
            raise UserError(f"--resume {resume_from}: {output_dir} already holds checkpoints of another run "
                            f"({', '.join(names[-3:])}); resume into the checkpoint's own directory or an "
                            f"empty --output-dir")


def claim_output_dir(cfg, resume_from: Path | None, lock: bool, processes: int | None = None):
    """(identity, lock or None): check that this run may use its output directory, locking it first
    when ``lock`` (the main process of a real run). The identity is written with the run's other
    files (:func:`write_identity`), once the model has loaded."""
    from instructglm.train.data import dataset_parts
    from instructglm.train.lock import RunLock

    output_dir = Path(cfg.output_dir)
    if processes is None:  # the processes of this run, as the backend (accelerate) set them up
        from accelerate.state import PartialState

        processes = PartialState().num_processes
    identity = run_identity(cfg, dataset_parts(cfg.dataset), processes)
    held = RunLock(output_dir) if lock else None
    if held is not None:
        held.acquire()  # before looking: another run could be writing checkpoints right now
    try:
        check_output_dir(output_dir, resume_from, identity, cfg.checkpoints.resume_anyway)
    except BaseException:
        if held is not None:
            held.release()
        raise
    return identity, held
