"""How the rows of a tokenized dataset become optimizer steps, micro-batches and each process's rows."""

from __future__ import annotations

import math
from dataclasses import dataclass

from instructglm.train import data


@dataclass
class StepPlan:
    """How the rows become optimizer steps: one step is ``accumulation`` micro-batches on each process,
    and a global micro-batch holds ``per_device`` rows per process. ``max_steps`` > 0 says how many
    steps, else ``num_epochs`` does."""

    per_device: int
    accumulation: int
    world: int
    rows: int
    max_steps: int
    num_epochs: float

    def __post_init__(self) -> None:
        self.global_batch = self.per_device * self.world
        self.steps_per_epoch = max(1, math.ceil(self.rows / self.global_batch) // self.accumulation)
        self.total_steps = (self.max_steps if self.max_steps > 0
                            else math.ceil(self.num_epochs * self.steps_per_epoch))

    def micro_batch_rows(self, step: int, k: int, rank: int, seed: int, shuffle: bool) -> list[int]:
        """This process's rows of micro-batch ``k`` of optimizer step ``step`` (0-based), located by
        global position: a resumed run sees exactly the rows it would have seen without interruption."""
        epoch, index = divmod(step * self.accumulation + k, self.steps_per_epoch * self.accumulation)
        batches = data.epoch_batches(self.rows, self.global_batch, seed, epoch, shuffle)
        return batches[index][rank * self.per_device:(rank + 1) * self.per_device]
