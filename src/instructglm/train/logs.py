"""What a run records: ``trainer_log.jsonl`` (one line per logging or eval step), TensorBoard scalars
under ``runs/``, and ``loss.png``. Only the main process writes files."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from instructglm.constants import LOSS_PLOT, TRAINER_LOG
from instructglm.files import atomic_file, dumps, read_jsonl, write_jsonl


@dataclass
class LogWindow:
    """Sums over the optimizer steps since the last log line."""

    loss_sum: float = 0.0  # token losses summed over all processes
    tokens: int = 0  # trained tokens (the loss is their mean)
    all_tokens: int = 0  # every non-padding token (throughput)
    seconds: float = 0.0

    def add(self, loss_sum: float, tokens: int, all_tokens: int, seconds: float) -> None:
        self.loss_sum += loss_sum
        self.tokens += tokens
        self.all_tokens += all_tokens
        self.seconds += seconds

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.tokens, 1)

    @property
    def tokens_per_s(self) -> float:
        return round(self.all_tokens / max(self.seconds, 1e-9), 1)


class TrainingLog:
    """The log records of a run, kept in memory (they go into every checkpoint) and, on the main
    process, appended to ``trainer_log.jsonl`` and TensorBoard as they come."""

    def __init__(self, output_dir: Path, records: list[dict], main: bool):
        self.output_dir = output_dir
        self.path = output_dir / TRAINER_LOG
        self.records = records
        self.writer = None
        if main:
            from torch.utils.tensorboard import SummaryWriter

            write_jsonl(self.path, records)  # up to the resume point
            self.writer = SummaryWriter(str(output_dir / "runs"))
            # matplotlib's import while the steps run, not after the last one: loss.png then draws at once
            threading.Thread(target=_import_pyplot, name="import-pyplot", daemon=True).start()

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.writer is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:  # appended, so a killed run keeps its lines
            f.write(dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "epoch"):
                self.writer.add_scalar(("eval/" if key.startswith("eval") else "train/") + key, value, record["step"])

    def losses(self) -> list[dict]:
        return [r for r in self.records if "loss" in r]

    def eval_losses(self) -> list[dict]:
        return [r for r in self.records if "eval_loss" in r]

    def close(self) -> None:
        """Close TensorBoard and draw ``loss.png`` (main process)."""
        if self.writer is not None:
            self.writer.close()
            plot_loss(self.path, self.output_dir / LOSS_PLOT)


def _import_pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(log_path: Path, png_path: Path) -> None:
    """Draw the training (and eval) loss from ``trainer_log.jsonl`` into a PNG."""
    plt = _import_pyplot()

    rows = read_jsonl(log_path)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    if not train_rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], marker="o", markersize=3,
            label="train loss")
    if eval_rows:
        ax.plot([r["step"] for r in eval_rows], [r["eval_loss"] for r in eval_rows], marker="s", markersize=4,
                label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(png_path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
