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
        return cls(step=data["step"], logs=list(data["logs"]))


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


def _rng_state() -> dict:
    import torch

    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    return rng


def save_checkpoint(output_dir: Path, step: int, model, method, weights: dict, optimizer_state: dict,
                    scheduler, state: TrainerState, keep: int) -> Path:
    """Write ``checkpoint-STEP`` (see the module docstring), then keep only the newest ``keep``.
    ``weights`` and ``optimizer_state`` were gathered by the distributed backend."""
    import torch
    from safetensors.torch import save_file

    final = output_dir / f"checkpoint-{step}"
    with atomic_dir(final, marker=COMPLETE, marker_text=f"{step}\n") as tmp:
        method.save(model, tmp, weights)
        torch.save(optimizer_state, tmp / OPTIMIZER)
        torch.save(scheduler.state_dict(), tmp / SCHEDULER)
        save_file(_rng_state(), str(tmp / RNG))
        write_json(tmp / TRAINER_STATE, state.to_json())
    for old in complete_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        (old / COMPLETE).unlink(missing_ok=True)  # first, so a half-deleted checkpoint is never complete
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trained_weights(path: Path, model, method, zero3: bool) -> None:
    """Put a checkpoint's trained weights into the model; before the backend prepares (shards) it.
    Under ZeRO-3 (parameters already partitioned) DeepSpeed restores them later, from the fp32
    master copy in its optimizer state."""
    if not (path / COMPLETE).is_file():
        raise UserError(f"{path}: not a complete checkpoint (no {COMPLETE} marker)")
    if not zero3:
        method.load(model, path)


def load_training_state(path: Path, backend, optimizer, scheduler) -> TrainerState:
    """Optimizer, scheduler and RNG state of a checkpoint, after the backend has prepared the model."""
    import torch
    from safetensors.torch import load_file

    from instructglm.train.distributed import read_optimizer_state

    backend.load_optimizer_state(read_optimizer_state(path / OPTIMIZER), optimizer, path / OPTIMIZER)
    scheduler.load_state_dict(torch.load(path / SCHEDULER, weights_only=True))
    rng = load_file(str(path / RNG))
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    return TrainerState.from_json(read_json(path / TRAINER_STATE))
