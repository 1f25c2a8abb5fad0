"""``OUT/checkpoint-N/``: the one owner of checkpoint directories.

A checkpoint holds what the method trained (as the final result would), ``optimizer.pt`` and
``scheduler.pt`` (read back with ``weights_only=True``), ``rng.safetensors`` and
``trainer_state.json`` (step and logs so far). It is written through a hidden temporary directory
with the ``.complete`` marker last (:func:`instructglm.files.atomic_dir`), so a crash never leaves a
checkpoint that resume would pick; rotation removes the marker first for the same reason.
This module holds the project's only ``torch.save``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from instructglm.constants import COMPLETE
from instructglm.errors import UserError
from instructglm.files import atomic_dir, read_json, write_json

OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG = "rng.safetensors"
TRAINER_STATE = "trainer_state.json"


@dataclass
class TrainerState:
    """What a resumed run continues from: the optimizer steps done and every log record so far."""

    step: int = 0
    logs: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"step": self.step, "logs": self.logs}

    @classmethod
    def from_json(cls, data: dict) -> "TrainerState":
        step, logs = (data.get("step"), data.get("logs")) if isinstance(data, dict) else (None, None)
        if not (isinstance(step, int) and step >= 0 and isinstance(logs, list)):
            raise ValueError("expected an object with 'step' (an integer >= 0) and 'logs' (a list)")
        return cls(step=step, logs=list(logs))


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The complete ``checkpoint-N`` directories, oldest first."""
    found = []
    for p in output_dir.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` names: ``latest`` in ``output_dir``, or a directory."""
    if not resume:
        return None
    if resume == "latest":
        found = complete_checkpoints(output_dir)
        if not found:
            raise UserError(f"--resume latest: no complete checkpoint in {output_dir}")
        return found[-1]
    path = Path(resume)
    if not path.is_dir():
        raise UserError(f"--resume {path}: checkpoint directory not found")
    return path


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _damaged(path: Path, error: BaseException) -> UserError:
    return UserError(f"{path}: damaged or unreadable ({_first_line(error)}); resume from an earlier checkpoint "
                     f"with --resume DIR, or start a new run in another --output-dir")


def read_trainer_state(path: Path) -> TrainerState:
    file = path / TRAINER_STATE
    try:
        return TrainerState.from_json(read_json(file))
    except ValueError as e:
        raise _damaged(file, e) from None


def check_checkpoint(path: Path, method: str) -> TrainerState:
    """Every file a resume reads is there and whole (archive directories and safetensors headers are
    read, not the tensors): checked before the model loads, so a damaged checkpoint fails in one line
    naming its file. Nothing is deleted. Returns the trainer state."""
    import zipfile

    from instructglm.models.adapters import _weight_files, weight_shapes

    if not (path / COMPLETE).is_file():
        raise UserError(f"{path}: not a complete checkpoint (no {COMPLETE} marker)")
    for name in (OPTIMIZER, SCHEDULER):  # torch.save writes zip archives: a cut one has no central directory
        file = path / name
        if not file.is_file():
            raise UserError(f"{file}: file not found; the checkpoint is damaged (resume from an earlier one "
                            f"with --resume DIR)")
        try:
            with zipfile.ZipFile(file):
                pass
        except (zipfile.BadZipFile, OSError) as e:
            raise _damaged(file, e) from None
    for file in [path / RNG, *_weight_files(path, method)]:
        weight_shapes(file)
    return read_trainer_state(path)


def _rng_state() -> dict:
    import torch

    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    return rng


def save_checkpoint(output_dir: Path, step: int, model, method, weights: dict, optimizer_state: dict,
                    scheduler, state: TrainerState, keep: int, identity: dict | None = None) -> Path:
    """Write ``checkpoint-STEP`` (see the module docstring), then keep only the newest ``keep``.
    ``weights`` and ``optimizer_state`` were gathered by the distributed backend; ``identity`` is the
    run's (:mod:`instructglm.train.identity`), so the checkpoint says which run wrote it."""
    from instructglm.train.identity import write_identity

    import torch
    from safetensors.torch import save_file

    final = output_dir / f"checkpoint-{step}"
    with atomic_dir(final, marker=COMPLETE, marker_text=f"{step}\n") as tmp:
        method.save(model, tmp, weights)
        torch.save(optimizer_state, tmp / OPTIMIZER)
        torch.save(scheduler.state_dict(), tmp / SCHEDULER)
        save_file(_rng_state(), str(tmp / RNG))
        write_json(tmp / TRAINER_STATE, state.to_json())
        if identity is not None:
            write_identity(tmp, identity)
    for old in complete_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        (old / COMPLETE).unlink(missing_ok=True)  # first, so a half-deleted checkpoint is never complete
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trained_weights(path: Path, model, method, zero3: bool) -> None:
    """Put a checkpoint's trained weights into the model; before the backend prepares (shards) it.
    Under ZeRO-3 (parameters already partitioned) DeepSpeed restores them later, from the fp32
    master copy in its optimizer state. Weights of another shape (another ``lora_rank``) are one line."""
    if not (path / COMPLETE).is_file():
        raise UserError(f"{path}: not a complete checkpoint (no {COMPLETE} marker)")
    if zero3:
        return
    try:
        method.load(model, path)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"{path}: the checkpoint's trained weights do not fit this run's model "
                        f"({_mismatch(e)}); was it written with another lora_rank, method or model?") from None


def _mismatch(error: BaseException) -> str:
    """The first 'size mismatch' of a state-dict error, said briefly."""
    import re

    m = re.search(r"size mismatch for ([^:]+): copying a param with shape (torch\.Size\(\[[^\]]*\]\)) from "
                  r"checkpoint, the shape in current model is (torch\.Size\(\[[^\]]*\]\))", str(error))
    if m:
        name, saved, here = (g.replace("torch.Size(", "").rstrip(")") for g in m.groups())
        return f"{name} is {saved} in the checkpoint, {here} in this run"
    return _first_line(error)


def load_training_state(path: Path, backend, optimizer, scheduler) -> TrainerState:
    """Optimizer, scheduler and RNG state of a checkpoint, after the backend has prepared the model. A
    file that cannot be read back (damaged after :func:`check_checkpoint`) is one line naming it."""
    import torch
    from safetensors.torch import load_file

    from instructglm.train.distributed import read_optimizer_state

    saved = read_optimizer_state(path / OPTIMIZER)
    backend.load_optimizer_state(saved, optimizer, path / OPTIMIZER)
    try:
        scheduler.load_state_dict(torch.load(path / SCHEDULER, weights_only=True))
    except Exception as e:  # noqa: BLE001 - unpickling, zip and state-dict errors: whatever the bytes hold
        raise _damaged(path / SCHEDULER, e) from None
    try:
        rng = load_file(str(path / RNG))
        torch.set_rng_state(rng["cpu"])
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
    except Exception as e:  # noqa: BLE001 - SafetensorError, a missing key, a tensor that is no RNG state
        raise _damaged(path / RNG, e) from None
    return read_trainer_state(path)
