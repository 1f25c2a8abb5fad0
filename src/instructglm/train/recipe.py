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
import signal
import sys
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
    dataset: str = opt(help="tokenized dataset directory (from 'instructglm tokenize'); several, comma-separated, "
                       "are trained as one (e.g. shards tokenized on different machines)", aliases=("--dataset_path",))
    output_dir: str = opt(help="where the trained weights, logs and checkpoints go", aliases=("--output_dir", "-o"))
    model: str = opt("gemma3-270m", help="base model: embedded name, directory, .gguf file or hub id")
    method: Literal["lora", "ptuning", "freeze", "full"] = opt("lora", help="tuning method")
    trust_remote_code: bool = opt(False, help="run the model repository's own code (legacy ChatGLM-6B/2/3)")
    load_in: Literal["none", "8bit", "4bit"] = opt("none", help="quantized base weights (bitsandbytes, GPU only)")
    # LoRA
    lora_rank: int = opt(8, help="LoRA rank r", aliases=("--lora_rank",))
    lora_alpha: float = opt(16.0, help="LoRA alpha (scaling = alpha / r)", aliases=("--lora_alpha",))
    lora_dropout: float = opt(0.05, help="dropout on the LoRA input", aliases=("--lora_dropout",))
    lora_target: str = opt("all-linear", help="modules to adapt: all-linear or comma-separated names "
                           "(e.g. query_key_value for ChatGLM-6B)")
    lora_modules_to_save: str = opt("", help="comma-separated modules trained in full besides LoRA (e.g. lm_head)")
    lora_rslora: bool = opt(False, help="rank-stabilised LoRA scaling (alpha / sqrt(r))")
    lora_dora: bool = opt(False, help="weight-decomposed LoRA (DoRA)")
    # P-Tuning v2
    pre_seq_len: int = opt(16, help="P-Tuning v2 prefix length in tokens", aliases=("--pre_seq_len",))
    prefix_projection: bool = opt(False, help="P-Tuning v2: produce the prefix with a 2-layer MLP",
                                  aliases=("--prefix_projection",))
    prefix_hidden_size: int | None = opt(None, help="P-Tuning v2 MLP width (default: the model's hidden size)")
    # Freeze
    freeze_trainable_layers: int = opt(2, help="freeze: train the last N blocks (first N if negative)")
    freeze_modules: Literal["mlp", "attn", "all"] = opt("mlp", help="freeze: which part of those blocks trains")
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
    packing: bool = opt(True, help="padding-free packing of each micro-batch's examples into shared rows "
                        "(same loss as unpacked; not for ptuning)")
    pack_length: int = opt(512, help="longest packed row in tokens (a longer example gets its own row)")
    gradient_checkpointing: bool = opt(False, help="recompute activations in the backward pass (less memory, "
                                       "about a third more compute)")
    compile: bool = opt(False, help="torch.compile the model (GPU; first steps are slow while it compiles)")
    liger: Literal["auto", "on", "off"] = opt(
        "auto", help="Liger Triton kernels (RMSNorm, RoPE, SwiGLU/GeGLU, fused LM head + cross-entropy): auto = "
                     "used on a CUDA GPU when liger-kernel is installed and supports the architecture")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto", help="auto = fp32 on CPU, bf16 on a GPU that has it (else fp16); trainable weights stay fp32")
    fp16: bool = opt(False, help="the seeds' switch: same as precision=fp16", aliases=("--fp16",))
    seed: int = opt(42, help="random seed for data order, dropout and initialisation")
    shuffle: bool = opt(True, help="shuffle the rows every epoch (off: dataset order, e.g. for comparisons)")
    # evaluation
    val_size: float = opt(0.0, help="hold out this fraction (< 1) or number of rows for eval loss")
    eval_dataset: str | None = opt(None, help="tokenized dataset directory for eval loss")
    eval_steps: int = opt(0, help="eval loss every N steps (0: only at the end when there is an eval set)")
    # checkpoints and logs
    save_steps: int = opt(0, help="checkpoint every N steps; 0 = only the final save", aliases=("--save_steps",))
    save_total_limit: int = opt(2, help="checkpoints to keep", aliases=("--save_total_limit",))
    logging_steps: int = opt(10, help="log every N steps", aliases=("--logging_steps",))
    resume: str | None = opt(None, help="'latest' or a checkpoint directory to resume from")
    stop_on_nan: bool = opt(True, help="stop with an error when the loss becomes NaN or inf")
    dry_run: bool = opt(False, help="print the resolved config and trainable parameters, then stop")

    def validate(self) -> None:
        for key in ("lora_rank", "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps",
                    "pre_seq_len"):
            if getattr(self, key) < 1:
                raise UserError(f"{key}: must be at least 1, got {getattr(self, key)}")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_epochs <= 0):
            raise UserError("max_steps/num_epochs: nothing to train (set max_steps > 0 or num_epochs > 0)")
        if self.learning_rate <= 0:
            raise UserError(f"learning_rate: must be positive, got {self.learning_rate}")
        if self.fp16:
            if self.precision not in ("auto", "fp16"):
                raise UserError(f"fp16: conflicts with precision={self.precision}")
            self.precision = "fp16"
        if self.val_size < 0 or (self.val_size and self.eval_dataset):
            raise UserError("val_size: must be >= 0, and not combined with eval_dataset")
        if self.load_in != "none" and self.method in ("full", "freeze"):
            raise UserError(f"load_in={self.load_in}: quantized base weights cannot be trained with "
                            f"method {self.method}; use lora")
        if self.pack_length < 1:
            raise UserError(f"pack_length: must be at least 1, got {self.pack_length}")
        for key in ("save_steps", "eval_steps", "warmup_steps", "max_grad_norm", "weight_decay"):
            if getattr(self, key) < 0:
                raise UserError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if self.eval_steps and not (self.val_size or self.eval_dataset):
            raise UserError(f"eval_steps={self.eval_steps}: there is no eval set; set val_size or eval_dataset")
        if self.method == "freeze" and self.freeze_trainable_layers == 0:
            raise UserError("freeze_trainable_layers: 0 leaves nothing to train with method freeze")


# --------------------------------------------------------------------------------------------
# data: a deterministic order that a resumed run can reproduce exactly


@functools.lru_cache(maxsize=2)
def epoch_batches(n_rows: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """Row indices for one epoch (shuffled by seed and epoch), cut into micro-batches."""
    import torch

    if shuffle:
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    else:
        order = list(range(n_rows))
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


def save_checkpoint(output_dir: Path, step: int, model, method, weights: dict, optimizer_state: dict,
                    scheduler, state: dict, keep: int) -> Path:
    """Write ``checkpoint-STEP`` through a temporary directory; the ``.complete`` marker is written last
    and the directory renamed into place, so a crash never leaves a checkpoint that resume would pick.
    ``weights`` and ``optimizer_state`` were gathered by the engine (see ``engines.py``)."""
    import torch
    from safetensors.torch import save_file

    final = output_dir / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.tmp-", dir=output_dir))
    try:
        method.save(model, tmp, weights)
        torch.save(optimizer_state, tmp / "optimizer.pt")
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
        (old / COMPLETE).unlink(missing_ok=True)  # first, so a half-deleted checkpoint is never complete
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint_weights(path: Path, model, method, engine) -> None:
    """Put a checkpoint's trained weights into the model; before ``engine.prepare`` (sharding).
    Under ZeRO-3 (parameters already partitioned) DeepSpeed restores them later, from the fp32
    master copy in its optimizer state."""
    if not (path / COMPLETE).is_file():
        raise UserError(f"{path}: not a complete checkpoint (no {COMPLETE} marker)")
    if not engine.zero3:
        method.load(model, path)


def load_checkpoint_state(path: Path, engine, optimizer, scheduler) -> dict:
    """Optimizer, scheduler and RNG state of a checkpoint, after the engine has prepared the model;
    returns the trainer state (step and logs)."""
    import torch
    from safetensors.torch import load_file

    from instructglm.train.distributed import read_optimizer_state

    engine.load_optimizer_state(read_optimizer_state(path / "optimizer.pt"), optimizer, path / "optimizer.pt")
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
    """Draw the training (and eval) loss from ``trainer_log.jsonl`` into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
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
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)


def check_dataset(path: str, cfg: TrainConfig, tokenizer) -> dict:
    """Refuse a dataset tokenized with another tokenizer than the model's."""
    from instructglm.tokenize.tokenize import read_manifest
    from instructglm.models.loading import tokenizer_fingerprint

    manifest = read_manifest(path)
    if manifest.get("tokenizer") != tokenizer_fingerprint(tokenizer):
        raise UserError(f"{path}: tokenized with a different tokenizer ({manifest.get('model')}) than "
                        f"model '{cfg.model}'; run 'instructglm tokenize --model {cfg.model}' again")
    return manifest


def resolve_precision(cfg: TrainConfig):
    """(torch dtype for the frozen base weights, accelerate mixed_precision) for this machine."""
    import torch

    cuda = torch.cuda.is_available()
    precision = cfg.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise UserError("precision fp16: needs a GPU; on CPU use fp32 (default) or bf16")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return dtype, ("no" if precision == "fp32" else precision)


def load_base(cfg: TrainConfig, model_path: str, dtype):
    """The base model in ``dtype``, or quantized with bitsandbytes when ``load_in`` asks for it."""
    import torch

    from instructglm.models.loading import load_model

    if cfg.load_in == "none":
        return load_model(model_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    if not torch.cuda.is_available():
        raise UserError(f"load_in={cfg.load_in}: quantized loading needs a CUDA GPU; none is visible")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(f"load_in={cfg.load_in}: needs the bitsandbytes package (pip install bitsandbytes)") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = (BitsAndBytesConfig(load_in_8bit=True) if cfg.load_in == "8bit" else
             BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype))
    model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=quant, dtype=dtype,
                                                 trust_remote_code=cfg.trust_remote_code)
    return prepare_model_for_kbit_training(model)


def split_eval(data, cfg: TrainConfig):
    """(train rows, eval rows or None) from ``val_size`` / ``eval_dataset``."""
    import datasets

    if cfg.eval_dataset:
        return data, datasets.load_from_disk(cfg.eval_dataset)
    if not cfg.val_size:
        return data, None
    n_eval = int(cfg.val_size) if cfg.val_size >= 1 else max(1, round(cfg.val_size * len(data)))
    if n_eval >= len(data):
        raise UserError(f"val_size: {cfg.val_size} leaves no training rows out of {len(data)}")
    parts = data.train_test_split(test_size=n_eval, seed=cfg.seed, shuffle=True)
    return parts["train"], parts["test"]


def make_batch(columns: dict, cfg: TrainConfig, method, pad_id: int) -> dict:
    """A micro-batch on the CPU: packed when the method allows it, else right-padded."""
    from instructglm.train.packing import collate_packed

    if cfg.packing and not method.USES_MODEL_FORWARD:
        return collate_packed(columns, pad_id, cfg.pack_length)
    return collate(columns, pad_id)


def batch_loss_sum(model, method, batch):
    """(sum of token losses, trained tokens) through the method's forward path."""
    from instructglm.train.loss import _causal_lm, causal_lm_loss_sum
    from instructglm.train.packing import attention_mask_for

    if method.USES_MODEL_FORWARD:
        n = int((batch["labels"][:, 1:] != -100).sum())
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return (out.loss * n if n else out.loss * 0.0), n
    mask, positions = batch["attention_mask"], None
    if "segments" in batch:
        lm = _causal_lm(model)
        mask = attention_mask_for(lm.config, batch["segments"], next(lm.parameters()).dtype)
        positions = batch["position_ids"]
    return causal_lm_loss_sum(model, batch["input_ids"], batch["labels"], mask, positions)


def numel(p) -> int:
    """Elements of a parameter, also when DeepSpeed ZeRO-3 has partitioned it away (``ds_numel``)."""
    return getattr(p, "ds_numel", None) or p.numel()


def training_flops_per_token(model, n_trainable: int, method: str) -> float:
    """FLOPs per trained token: 6N for full fine-tuning, 4N when the base is frozen (forward 2N plus
    input gradients 2N; the adapters' own weight gradients are negligible), N including the LM head,
    plus the attention term 6 * layers * hidden * context (ignored here for short rows)."""
    n = sum(numel(p) for p in model.parameters())
    return (6 if method == "full" else 4) * n


def gpu_peak_flops() -> float:
    """Dense bf16 peak of the visible GPU in FLOP/s (H100/H200 SXM: 989e12), for MFU."""
    import torch

    name = torch.cuda.get_device_name()
    for key, peak in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40", 181e12), ("4090", 165e12)):
        if key in name:
            return peak
    return 312e12


def loss_module(model, method):
    """The model wrapped so that the loss is computed inside ``forward``: under DDP/FSDP (accelerate
    wraps this module) gradient synchronisation then sees the whole computation."""
    import torch

    class LossForward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            # FSDP's transformer-based auto-wrap looks up the block classes on the module it is given
            self._no_split_modules = getattr(model, "_no_split_modules", None)

        def forward(self, **batch):
            return batch_loss_sum(self.model, method, batch)

    return LossForward()


def evaluate_loss(loss_fn, model, method, data, cfg: TrainConfig, pad_id: int, device) -> float:
    """Token-mean loss over a whole tokenized dataset, without gradients. ``loss_fn`` is the prepared
    loss module (under FSDP only its forward gathers the weights); ``model`` the module it wraps."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), cfg.per_device_train_batch_size):
            batch = make_batch(data[start:start + cfg.per_device_train_batch_size], cfg, method, pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss_sum, n = loss_fn(**batch)
            total += float(loss_sum)
            count += n
    model.train(was_training)
    return total / max(count, 1)


# --------------------------------------------------------------------------------------------
# stopping early: signals and out-of-memory


class StopRequest:
    """SIGTERM/SIGINT handlers for the training loop: the first signal sets a flag, the loop finishes
    its step, saves a checkpoint and stops; a second signal stops at once (``KeyboardInterrupt``).

    After the save, SIGTERM returns normally (exit status 0: what SLURM and other schedulers expect
    after a graceful pre-emption) and SIGINT raises ``KeyboardInterrupt`` (the CLI exits with 130).
    Handlers are only installed from the main thread, and :meth:`restore` puts the previous ones back.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # only sets the flag: printing here could re-enter stderr
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, global_sum=None) -> bool:
        """True when a signal arrived here, or (``global_sum`` over the processes) on any process."""
        local = 1.0 if self.signum is not None else 0.0
        if (global_sum(local) if global_sum is not None else local) <= 0:
            return False
        name = signal.Signals(self.signum).name if self.signum is not None else "a signal on another process"
        print(f"\n{name} received: saving a checkpoint after this step, then stopping "
              f"(send it again to stop at once)", file=sys.stderr, flush=True)
        return True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def finish(self, cfg: TrainConfig, output_dir: Path, step: int, total_steps: int, main: bool,
               result: dict) -> dict:
        name = signal.Signals(self.signum).name if self.signum is not None else "a signal on another process"
        if main:
            print(f"stopped by {name} after step {step} of {total_steps}; checkpoint saved in "
                  f"{output_dir / f'checkpoint-{step}'}. Resume with the same command plus --resume latest",
                  file=sys.stderr, flush=True)
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        return {**result, "interrupted": name, "checkpoint": str(output_dir / f"checkpoint-{step}")}


def out_of_memory_message(cfg: TrainConfig, step: int, error: Exception) -> str:
    """One line naming the settings that lower training memory, with their current values."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
    knobs = [f"lower per_device_train_batch_size (now {cfg.per_device_train_batch_size}) and raise "
             f"gradient_accumulation_steps (now {cfg.gradient_accumulation_steps}) to keep the effective batch",
             "tokenize with a smaller --max-seq-length"]
    if cfg.packing and cfg.method != "ptuning":
        knobs.append(f"lower pack_length (now {cfg.pack_length})")
    if not cfg.gradient_checkpointing:
        knobs.append("set gradient_checkpointing=true")
    if cfg.load_in != "4bit" and cfg.method in ("lora", "ptuning"):
        knobs.append("load_in=4bit (GPU, bitsandbytes)")
    return f"step {step}: out of GPU memory ({first}); to fit: " + "; ".join(knobs)


# --------------------------------------------------------------------------------------------
# the recipe


def train(cfg: TrainConfig) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.dataset``; return a summary with the logged losses.

    SIGTERM or SIGINT during the loop finishes the current step, saves a checkpoint and stops (see
    :class:`StopRequest`); the previous signal handlers are restored however ``train`` ends.
    """
    stop = StopRequest()
    try:
        return _train(cfg, stop)
    finally:
        stop.restore()


def _train(cfg: TrainConfig, stop: "StopRequest") -> dict:
    import datasets
    import torch
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from instructglm.models.loading import load_tokenizer, resolve_model
    from instructglm.train.distributed import Engine
    from instructglm.train.kernels import apply_liger
    from instructglm.train.methods import get_method

    # 1. Everything that can be wrong with the inputs is checked before the model loads.
    output_dir = Path(cfg.output_dir)
    resume_from = resolve_resume(cfg, output_dir)
    method = get_method(cfg.method)
    model_path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
    parts = [d.strip() for d in cfg.dataset.split(",") if d.strip()]
    manifests = [check_dataset(d, cfg, tokenizer) for d in parts]
    manifest = manifests[0]
    if len({m.get("template") for m in manifests}) > 1:
        raise UserError(f"dataset: the parts {', '.join(parts)} were tokenized with different templates")
    if cfg.eval_dataset:
        check_dataset(cfg.eval_dataset, cfg, tokenizer)
    data, eval_data = split_eval(datasets.concatenate_datasets([datasets.load_from_disk(d) for d in parts]), cfg)
    if len(data) == 0:
        raise UserError(f"{cfg.dataset}: the dataset is empty")
    dtype, mixed = resolve_precision(cfg)

    # 2. Model: base weights (frozen, maybe low precision) + the method's trainable weights in fp32.
    #    Under torchrun / accelerate launch every process runs this same code on its share of the data.
    engine = Engine(mixed)  # one process, DDP, FSDP or DeepSpeed: whatever the launcher set up
    engine.check(cfg, method)
    accelerator = engine.accelerator
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    set_seed(cfg.seed)
    base = load_base(cfg, model_path, dtype)
    apply_liger(base, cfg.liger)
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()  # so checkpointed blocks see a grad-requiring input under PEFT
    model = method.apply(base, cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not engine.deepspeed:  # DeepSpeed keeps its own fp32 master copy (and ZeRO-3 has partitioned the weights)
        for p in trainable:
            p.data = p.data.float()
    n_trainable = sum(numel(p) for p in trainable)
    n_total = sum(numel(p) for p in model.parameters())
    log.info("model %s, method %s: %s trainable of %s parameters (%.2f%%)", cfg.model, cfg.method,
             f"{n_trainable:,}", f"{n_total:,}", 100 * n_trainable / n_total)
    if cfg.dry_run:
        print(to_yaml(cfg), end="")
        print(f"# trainable parameters: {n_trainable:,} of {n_total:,} ({100 * n_trainable / n_total:.3f}%)")
        return {"output_dir": str(output_dir), "steps": 0, "logs": [], "trainable_parameters": n_trainable,
                "dry_run": True}
    if resume_from is not None:  # trained weights go in before sharding; optimizer state after
        load_checkpoint_weights(resume_from, model, method, engine)
    model.train()

    # 3. Schedule: one optimizer step = gradient_accumulation_steps micro-batches on each process;
    #    a global micro-batch holds per_device_train_batch_size rows per process.
    global_batch = cfg.per_device_train_batch_size * world
    micro_per_epoch = math.ceil(len(data) / global_batch)
    steps_per_epoch = max(1, micro_per_epoch // cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=torch.cuda.is_available())
    scheduler = get_scheduler(cfg.lr_scheduler if cfg.lr_scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    flops_per_token = training_flops_per_token(model, n_trainable, cfg.method)
    wrapped, optimizer = engine.prepare(loss_module(model, method), optimizer)
    inner = engine.inner
    if cfg.compile:
        wrapped = torch.compile(wrapped)

    # 4. Output directory, resume state and logs (only the main process writes files).
    log_path = output_dir / "trainer_log.jsonl"
    state = {"step": 0, "logs": []}
    if resume_from is not None:
        state = load_checkpoint_state(resume_from, engine, optimizer, scheduler)
        log.info("resumed from %s at step %d", resume_from, state["step"])
    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.yaml").write_text(to_yaml(cfg))
        log_path.write_text("".join(json.dumps(r) + "\n" for r in state["logs"]))  # up to the resume point
        writer = SummaryWriter(str(output_dir / "runs"))
    if main:  # printed even with -q: the number people most often get wrong when scaling out
        print(f"{len(data)} rows, {total_steps} steps ({steps_per_epoch} per epoch); effective batch "
              f"{global_batch * cfg.gradient_accumulation_steps} = {cfg.per_device_train_batch_size} per device x "
              f"{cfg.gradient_accumulation_steps} accumulation x {world} process(es), {engine.describe()}"
              + (f", {len(eval_data)} eval rows" if eval_data is not None else ""), file=sys.stderr, flush=True)

    def write_log(record: dict) -> None:
        state["logs"].append(record)
        if not main:
            return
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "epoch"):
                writer.add_scalar(("eval/" if key.startswith("eval") else "train/") + key, value, record["step"])

    def run_eval(step: int) -> None:
        loss = evaluate_loss(wrapped, inner, method, eval_data, cfg, pad_id, accelerator.device)
        write_log({"step": step, "eval_loss": loss})
        log.info("step %d  eval loss %.4f", step, loss)

    def checkpoint(step: int) -> None:  # every process gathers (collective under FSDP); the main one writes
        weights, optim = engine.trained_state(), engine.optimizer_state(optimizer)
        if main:
            save_checkpoint(output_dir, step, model, method, weights, optim, scheduler, state, cfg.save_total_limit)
        accelerator.wait_for_everyone()

    def global_sum(value: float) -> float:
        if world == 1:
            return value
        return float(accelerator.reduce(torch.tensor([float(value)], device=accelerator.device), "sum")[0])

    # 5. The loop.
    pad_id = tokenizer.pad_token_id
    window = {"loss_sum": 0.0, "tokens": 0, "time": 0.0, "all_tokens": 0}
    bar = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", disable=None if main else True)
    step = state["step"]
    stopped = False
    stop.install()
    while step < total_steps:
        # Micro-batches of this optimizer step, located by global position: a resumed run sees
        # exactly the rows it would have seen without the interruption.
        micro = []
        for k in range(cfg.gradient_accumulation_steps):
            position = step * cfg.gradient_accumulation_steps + k
            epoch, index = divmod(position, steps_per_epoch * cfg.gradient_accumulation_steps)
            batches = epoch_batches(len(data), global_batch, cfg.seed, epoch, cfg.shuffle)
            mine = batches[index][rank * cfg.per_device_train_batch_size:(rank + 1) * cfg.per_device_train_batch_size]
            micro.append(make_batch(data[mine], cfg, method, pad_id) if mine else None)
        micro = [b for b in micro if b is not None]
        # Token-weighted over the whole step on all processes: each process scales its loss sum by
        # world / global tokens, and DDP's gradient averaging divides by world again.
        n_tokens = global_sum(sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro))
        t0 = time.perf_counter()
        step_loss = 0.0
        try:
            for i, batch in enumerate(micro):
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                with accelerator.autocast():
                    loss_sum, _ = wrapped(**batch)
                engine.backward(loss_sum * world / max(n_tokens, 1), last=i == len(micro) - 1)
                step_loss += float(loss_sum.detach())
        except torch.OutOfMemoryError as e:
            raise UserError(out_of_memory_message(cfg, step + 1, e)) from None
        step_loss = global_sum(step_loss)
        if not math.isfinite(step_loss) and cfg.stop_on_nan:
            raise UserError(f"step {step + 1}: the loss is {step_loss} (not finite); lower the learning rate, "
                            f"check the data, or resume from the last checkpoint in {output_dir}")
        grad_norm = engine.grad_norm(cfg.max_grad_norm)
        optimizer.step()  # a no-op under DeepSpeed, whose engine stepped in backward
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window["time"] += time.perf_counter() - t0
        window["loss_sum"] += step_loss
        window["tokens"] += n_tokens
        window["all_tokens"] += global_sum(sum(int(b["attention_mask"].sum()) for b in micro))
        bar.update(1)
        if step % cfg.logging_steps == 0 or step == total_steps:
            record = {"step": step, "epoch": round(step / steps_per_epoch, 3),
                      "loss": window["loss_sum"] / max(window["tokens"], 1),
                      "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                      "tokens_per_s": round(window["all_tokens"] / max(window["time"], 1e-9), 1)}
            if torch.cuda.is_available():  # throughput against the GPU's dense bf16 peak, and memory
                record["mfu"] = round(record["tokens_per_s"] * flops_per_token / world / gpu_peak_flops(), 4)
                record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            write_log(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if bar.disable:  # no terminal: a plain log line instead of the progress bar
                log.info("step %d/%d  loss %.4f  lr %.2e  grad_norm %.2f  %.0f tokens/s", step, total_steps,
                         record["loss"], record["lr"], record["grad_norm"], record["tokens_per_s"])
            window = {k: 0 for k in window}
        if eval_data is not None and ((cfg.eval_steps and step % cfg.eval_steps == 0) or step == total_steps):
            run_eval(step)
        state["step"] = step
        if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < total_steps:
            checkpoint(step)
        if step < total_steps and stop.requested(global_sum):  # SIGTERM/SIGINT: save (once), then stop
            if not (cfg.save_steps > 0 and step % cfg.save_steps == 0):
                checkpoint(step)
            stopped = True
            break
    bar.close()
    if stopped:  # stopped by a signal: the checkpoint is the result, not final weights
        if main:
            writer.close()
            plot_loss(log_path, output_dir / "loss.png")
        return stop.finish(cfg, output_dir, step, total_steps, main,
                           {"output_dir": str(output_dir), "steps": step,
                            "logs": [r for r in state["logs"] if "loss" in r],
                            "eval": [r for r in state["logs"] if "eval_loss" in r],
                            "trainable_parameters": n_trainable})

    # 6. Final artefacts: the trained weights and what later stages need to use them.
    weights = engine.trained_state()
    if main:
        writer.close()
        method.save(model, output_dir, weights)
        info = {"base_model": cfg.model, "method": cfg.method, "template": manifest["template"],
                "tokenizer": manifest["tokenizer"], "dataset": str(cfg.dataset), "steps": step,
                "processes": world}
        (output_dir / RUN_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        plot_loss(log_path, output_dir / "loss.png")
    accelerator.wait_for_everyone()
    return {"output_dir": str(output_dir), "steps": step, "logs": [r for r in state["logs"] if "loss" in r],
            "eval": [r for r in state["logs"] if "eval_loss" in r], "trainable_parameters": n_trainable}
