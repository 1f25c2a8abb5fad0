"""``train``: the fine-tuning recipe, top to bottom.

Engine: a plain PyTorch loop on top of ``accelerate`` (device placement, mixed precision, and the
distributed back-ends later) rather than ``transformers.Trainer``. The loop is short, and owning
it buys what the Trainer makes awkward: the loss on trained positions only (``loss.py``), token-
weighted gradient accumulation, checkpoints that are written atomically and hold only the trained
weights, and a resume that restores data position and RNG exactly.

Output directory::

    OUT/adapter_model.safetensors, adapter_config.json   (what the method trained)
    OUT/instructglm.json      base model, template, method: what infer/merge need
    OUT/train_config.yaml     the fully resolved config
    OUT/trainer_log.jsonl     one line per logging step; OUT/loss.png; OUT/runs/ (TensorBoard)
    OUT/checkpoint-N/         every save_steps, with optimizer/scheduler/RNG state and a .complete marker
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from instructglm.config import opt, to_yaml
from instructglm.errors import UserError

log = logging.getLogger(__name__)

RUN_INFO = "instructglm.json"
COMPLETE = ".complete"


@dataclass
class TrainConfig:
    dataset: str = opt(help="tokenized dataset directory (from 'instructglm tokenize')", aliases=("--dataset_path",))
    output_dir: str = opt(help="where the adapter, logs and checkpoints go", aliases=("--output_dir", "-o"))
    model: str = opt("gemma3-270m", help="base model: embedded name, directory, .gguf file or hub id")
    method: Literal["lora"] = opt("lora", help="tuning method")
    # LoRA
    lora_rank: int = opt(8, help="LoRA rank r", aliases=("--lora_rank",))
    lora_alpha: float = opt(16.0, help="LoRA alpha (scaling = alpha / r)", aliases=("--lora_alpha",))
    lora_dropout: float = opt(0.05, help="dropout on the LoRA input", aliases=("--lora_dropout",))
    lora_target: str = opt("all-linear", help="modules to adapt: all-linear or comma-separated names")
    # optimisation
    learning_rate: float = opt(2e-4, help="peak learning rate", aliases=("--learning_rate",))
    weight_decay: float = opt(0.0, help="AdamW weight decay")
    lr_scheduler: Literal["cosine", "linear", "constant"] = opt("cosine", help="learning-rate schedule after warmup")
    warmup_steps: int = opt(0, help="linear warmup steps")
    per_device_train_batch_size: int = opt(4, help="rows per micro-batch",
                                           aliases=("--per_device_train_batch_size", "--batch-size"))
    gradient_accumulation_steps: int = opt(1, help="micro-batches per optimizer step",
                                           aliases=("--gradient_accumulation_steps",))
    max_steps: int = opt(-1, help="optimizer steps to run; -1 = use num_epochs", aliases=("--max_steps",))
    num_epochs: float = opt(3.0, help="epochs over the dataset (when max_steps is -1)", aliases=("--num_train_epochs",))
    max_grad_norm: float = opt(1.0, help="gradient clipping norm; 0 disables")
    seed: int = opt(42, help="random seed for data order, dropout and initialisation")
    # checkpoints and logs
    save_steps: int = opt(0, help="checkpoint every N steps; 0 = only the final save", aliases=("--save_steps",))
    save_total_limit: int = opt(2, help="checkpoints to keep", aliases=("--save_total_limit",))
    logging_steps: int = opt(10, help="log every N steps", aliases=("--logging_steps",))
    resume: str | None = opt(None, help="'latest' or a checkpoint directory to resume from")
    stop_on_nan: bool = opt(True, help="stop with an error when the loss becomes NaN or inf")

    def validate(self) -> None:
        for key in ("lora_rank", "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, key) < 1:
                raise UserError(f"{key}: must be at least 1, got {getattr(self, key)}")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_epochs <= 0):
            raise UserError("max_steps/num_epochs: nothing to train (set max_steps > 0 or num_epochs > 0)")
        if self.learning_rate <= 0:
            raise UserError(f"learning_rate: must be positive, got {self.learning_rate}")


# --------------------------------------------------------------------------------------------
# data: a deterministic order that a resumed run can reproduce exactly


@functools.lru_cache(maxsize=2)
def epoch_batches(n_rows: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled row indices for one epoch, cut into micro-batches (the last one may be short)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_rows, generator=g).tolist()
    return [order[i:i + batch_size] for i in range(0, n_rows, batch_size)]


def collate(columns: dict, pad_id: int):
    """Right-pad a micro-batch (a dict of ``input_ids`` and ``labels`` lists) to its longest row."""
    import torch

    rows = len(columns["input_ids"])
    width = max(len(x) for x in columns["input_ids"])
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    labels = torch.full((rows, width), -100, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for i, (x, y) in enumerate(zip(columns["input_ids"], columns["labels"])):
        ids[i, :len(x)] = torch.as_tensor(x)
        labels[i, :len(y)] = torch.as_tensor(y)
        mask[i, :len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# --------------------------------------------------------------------------------------------
# checkpoints


def _checkpoints(output_dir: Path) -> list[Path]:
    found = []
    for p in output_dir.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def save_checkpoint(output_dir: Path, step: int, model, method, optimizer, scheduler, state: dict,
                    keep: int) -> Path:
    """Write ``checkpoint-STEP`` through a temporary directory; the ``.complete`` marker is written last
    and the directory renamed into place, so a crash never leaves a checkpoint that resume would pick."""
    import torch
    from safetensors.torch import save_file

    final = output_dir / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.tmp-", dir=output_dir))
    try:
        method.save(model, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda{i}"] = s
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
        (tmp / COMPLETE).write_text(f"{step}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in _checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, method, optimizer, scheduler) -> dict:
    import torch
    from safetensors.torch import load_file

    if not (path / COMPLETE).is_file():
        raise UserError(f"{path}: not a complete checkpoint (no {COMPLETE} marker)")
    method.load(model, path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    return json.loads((path / "trainer_state.json").read_text())


def resolve_resume(cfg: TrainConfig, output_dir: Path) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "latest":
        found = _checkpoints(output_dir)
        if not found:
            raise UserError(f"--resume latest: no complete checkpoint in {output_dir}")
        return found[-1]
    path = Path(cfg.resume)
    if not path.is_dir():
        raise UserError(f"--resume {path}: checkpoint directory not found")
    return path


# --------------------------------------------------------------------------------------------
# logs


def plot_loss(log_path: Path, png_path: Path) -> None:
    """Draw the training loss from ``trainer_log.jsonl`` into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker="o", markersize=3, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)


def check_dataset(cfg: TrainConfig, tokenizer) -> dict:
    """Refuse a dataset tokenized with another tokenizer than the model's."""
    from instructglm.data.tokenize import read_manifest
    from instructglm.models import tokenizer_fingerprint

    manifest = read_manifest(cfg.dataset)
    mine = tokenizer_fingerprint(tokenizer)
    if manifest.get("tokenizer") != mine:
        raise UserError(f"{cfg.dataset}: tokenized with a different tokenizer ({manifest.get('model')}) than "
                        f"model '{cfg.model}'; run 'instructglm tokenize --model {cfg.model}' again")
    return manifest


# --------------------------------------------------------------------------------------------
# the recipe


def train(cfg: TrainConfig) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.dataset``; return a summary with the logged losses."""
    import datasets
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from instructglm.models import load_model, load_tokenizer, resolve_model
    from instructglm.train.loss import causal_lm_loss_sum
    from instructglm.train.methods import get_method

    output_dir = Path(cfg.output_dir)
    resume_from = resolve_resume(cfg, output_dir)
    method = get_method(cfg.method)
    model_path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_path)
    manifest = check_dataset(cfg, tokenizer)
    data = datasets.load_from_disk(cfg.dataset)
    if len(data) == 0:
        raise UserError(f"{cfg.dataset}: the dataset is empty")

    accelerator = Accelerator()
    set_seed(cfg.seed)
    model = method.apply(load_model(model_path), cfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())

    # Steps: one optimizer step = gradient_accumulation_steps micro-batches.
    micro_per_epoch = math.ceil(len(data) / cfg.per_device_train_batch_size)
    steps_per_epoch = max(1, micro_per_epoch // cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_epochs * steps_per_epoch)

    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler if cfg.lr_scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "trainer_log.jsonl"
    state = {"step": 0, "logs": []}
    if resume_from is not None:
        state = load_checkpoint(resume_from, accelerator.unwrap_model(model), method, optimizer, scheduler)
        log.info("resumed from %s at step %d", resume_from, state["step"])
    (output_dir / "train_config.yaml").write_text(to_yaml(cfg))
    # The log file holds exactly the steps up to the resume point, then continues.
    log_path.write_text("".join(json.dumps(r) + "\n" for r in state["logs"]))

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(output_dir / "runs"))
    log.info("model %s, method %s: %s trainable of %s parameters (%.2f%%)", cfg.model, cfg.method,
             f"{n_trainable:,}", f"{n_total:,}", 100 * n_trainable / n_total)
    log.info("%d rows, %d steps (%d per epoch), batch %d x %d", len(data), total_steps, steps_per_epoch,
             cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps)

    pad_id = tokenizer.pad_token_id
    window = {"loss_sum": 0.0, "tokens": 0, "steps": 0, "time": 0.0, "all_tokens": 0}
    bar = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", disable=None)
    step = state["step"]
    while step < total_steps:
        # Micro-batches of this optimizer step, located by global position: a resumed run sees
        # exactly the rows it would have seen without the interruption.
        micro = []
        for k in range(cfg.gradient_accumulation_steps):
            position = step * cfg.gradient_accumulation_steps + k
            epoch, index = divmod(position, steps_per_epoch * cfg.gradient_accumulation_steps)
            batches = epoch_batches(len(data), cfg.per_device_train_batch_size, cfg.seed, epoch)
            micro.append(collate(data[batches[index]], pad_id))
        n_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        t0 = time.perf_counter()
        step_loss = 0.0
        for batch in micro:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            loss_sum, _ = causal_lm_loss_sum(model, batch["input_ids"], batch["labels"], batch["attention_mask"])
            accelerator.backward(loss_sum / max(n_tokens, 1))
            step_loss += float(loss_sum.detach())
        if not math.isfinite(step_loss) and cfg.stop_on_nan:
            raise UserError(f"step {step + 1}: the loss is {step_loss} (not finite); lower the learning rate, "
                            f"check the data, or resume from the last checkpoint in {output_dir}")
        grad_norm = (accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm) if cfg.max_grad_norm > 0
                     else torch.sqrt(sum((p.grad.float() ** 2).sum() for p in trainable if p.grad is not None)))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - t0
        window["loss_sum"] += step_loss
        window["tokens"] += n_tokens
        window["steps"] += 1
        window["time"] += elapsed
        window["all_tokens"] += sum(int(b["attention_mask"].sum()) for b in micro)
        bar.update(1)
        if step % cfg.logging_steps == 0 or step == total_steps:
            record = {"step": step, "epoch": round(step / steps_per_epoch, 3),
                      "loss": window["loss_sum"] / max(window["tokens"], 1),
                      "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                      "tokens_per_s": round(window["all_tokens"] / max(window["time"], 1e-9), 1)}
            state["logs"].append(record)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                writer.add_scalar(f"train/{key}", record[key], step)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if bar.disable:  # no terminal: a plain log line instead of the progress bar
                log.info("step %d/%d  loss %.4f  lr %.2e  grad_norm %.2f  %.0f tokens/s", step, total_steps,
                         record["loss"], record["lr"], record["grad_norm"], record["tokens_per_s"])
            window = {k: 0 for k in window}
        state["step"] = step
        if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < total_steps:
            save_checkpoint(output_dir, step, accelerator.unwrap_model(model), method, optimizer, scheduler,
                            state, cfg.save_total_limit)
    bar.close()
    writer.close()

    # Final artefacts: the trained weights and what later stages need to use them.
    final_model = accelerator.unwrap_model(model)
    method.save(final_model, output_dir)
    info = {"base_model": cfg.model, "method": cfg.method, "template": manifest["template"],
            "tokenizer": manifest["tokenizer"], "dataset": str(cfg.dataset), "steps": step}
    (output_dir / RUN_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    plot_loss(log_path, output_dir / "loss.png")
    return {"output_dir": str(output_dir), "steps": step, "logs": state["logs"],
            "trainable_parameters": n_trainable}
