"""``TrainConfig``: what to train on what, composed of small option groups.

Users see flat keys only (``--lora-rank``, ``lora_rank: 8`` in YAML, ``lora_rank=8`` overrides,
``train_config.yaml``); in code each group is its own dataclass (``cfg.lora.rank``). The method
groups live beside their methods (``methods/<name>/config.py``). Build one with
``load_config(TrainConfig, yaml, overrides, flags, **flat_keys)``. The fields are in the order
``train_config.yaml`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from instructglm.config import group, opt
from instructglm.errors import UserError
from instructglm.train.methods import FreezeOptions, LoraOptions, PTuningOptions, get_method


def _at_least(value, minimum, key: str) -> None:
    if value < minimum:
        relation = "at least 1" if minimum == 1 else f">= {minimum}"
        raise UserError(f"{key}: must be {relation}, got {value}")


@dataclass
class OptimizerOptions:
    """AdamW and its learning-rate schedule."""

    learning_rate: float = opt(2e-4, help="peak learning rate", aliases=("--learning_rate",))
    weight_decay: float = opt(0.0, help="AdamW weight decay")
    lr_scheduler: Literal["cosine", "linear", "constant"] = opt("cosine", help="learning-rate schedule after warmup")
    warmup_steps: int = opt(0, help="linear warmup steps")
    max_grad_norm: float = opt(1.0, help="gradient clipping norm; 0 disables")

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise UserError(f"learning_rate: must be positive, got {self.learning_rate}")
        for key in ("warmup_steps", "max_grad_norm", "weight_decay"):
            _at_least(getattr(self, key), 0, key)


@dataclass
class ScheduleOptions:
    """How many rows per step, how many steps."""

    per_device_train_batch_size: int = opt(4, help="rows per micro-batch",
                                           aliases=("--per_device_train_batch_size", "--batch-size"))
    gradient_accumulation_steps: int = opt(1, help="micro-batches per optimizer step",
                                           aliases=("--gradient_accumulation_steps",))
    max_steps: int = opt(-1, help="optimizer steps to run; -1 = use num_epochs", aliases=("--max_steps",))
    num_epochs: float = opt(3.0, help="epochs over the dataset (when max_steps is -1)", aliases=("--num_train_epochs",))

    def __post_init__(self) -> None:
        _at_least(self.per_device_train_batch_size, 1, "per_device_train_batch_size")
        _at_least(self.gradient_accumulation_steps, 1, "gradient_accumulation_steps")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_epochs <= 0):
            raise UserError("max_steps/num_epochs: nothing to train (set max_steps > 0 or num_epochs > 0)")


@dataclass
class PerformanceOptions:
    """Precision, packing and kernels: speed and memory, not the maths."""

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
    fp16: bool = opt(False, help="ChatGLM-Tuning's switch: same as precision=fp16", aliases=("--fp16",))

    def __post_init__(self) -> None:
        if self.fp16:
            if self.precision not in ("auto", "fp16"):
                raise UserError(f"fp16: conflicts with precision={self.precision}")
            self.precision = "fp16"
        _at_least(self.pack_length, 1, "pack_length")


@dataclass
class EvalOptions:
    """The eval loss: on a held-out part of the data or another dataset."""

    val_size: float = opt(0.0, help="hold out this fraction (< 1) or number of rows for eval loss")
    eval_dataset: str | None = opt(None, help="tokenized dataset directory for eval loss")
    eval_steps: int = opt(0, help="eval loss every N steps (0: only at the end when there is an eval set)")

    def __post_init__(self) -> None:
        if self.val_size < 0 or (self.val_size and self.eval_dataset):
            raise UserError("val_size: must be >= 0, and not combined with eval_dataset")
        _at_least(self.eval_steps, 0, "eval_steps")
        if self.eval_steps and not (self.val_size or self.eval_dataset):
            raise UserError(f"eval_steps={self.eval_steps}: there is no eval set; set val_size or eval_dataset")


@dataclass
class CheckpointOptions:
    """Checkpoints, logs, resuming and stopping."""

    save_steps: int = opt(0, help="checkpoint every N steps; 0 = only the final save", aliases=("--save_steps",))
    save_total_limit: int = opt(2, help="checkpoints to keep", aliases=("--save_total_limit",))
    logging_steps: int = opt(10, help="log every N steps", aliases=("--logging_steps",))
    resume: str | None = opt(None, help="'latest' or a checkpoint directory to resume from")
    stop_on_nan: bool = opt(True, help="stop with an error when the loss becomes NaN or inf")

    def __post_init__(self) -> None:
        _at_least(self.logging_steps, 1, "logging_steps")
        _at_least(self.save_steps, 0, "save_steps")


@dataclass
class TrainConfig:
    dataset: str = opt(help="tokenized dataset directory (from 'instructglm tokenize'); several, comma-separated, "
                       "are trained as one (e.g. shards tokenized on different machines)", aliases=("--dataset_path",))
    output_dir: str = opt(help="where the trained weights, logs and checkpoints go", aliases=("--output_dir", "-o"))
    model: str = opt("gemma3-270m", help="base model: embedded name, directory, .gguf file or hub id")
    method: Literal["lora", "ptuning", "freeze", "full"] = opt("lora", help="tuning method")
    trust_remote_code: bool = opt(False, help="run the model repository's own code (legacy ChatGLM-6B/2/3)")
    load_in: Literal["none", "8bit", "4bit"] = opt("none", help="quantized base weights (bitsandbytes, GPU only)")
    lora: LoraOptions = group(LoraOptions, "LoRA (method lora)")
    ptuning: PTuningOptions = group(PTuningOptions, "P-Tuning v2 (method ptuning)")
    freeze: FreezeOptions = group(FreezeOptions, "Freeze tuning (method freeze)")
    optimizer: OptimizerOptions = group(OptimizerOptions, OptimizerOptions.__doc__)
    schedule: ScheduleOptions = group(ScheduleOptions, ScheduleOptions.__doc__)
    performance: PerformanceOptions = group(PerformanceOptions, PerformanceOptions.__doc__)
    seed: int = opt(42, help="random seed for data order, dropout and initialisation")
    shuffle: bool = opt(True, help="shuffle the rows every epoch (off: dataset order, e.g. for comparisons)")
    eval: EvalOptions = group(EvalOptions, EvalOptions.__doc__)
    checkpoints: CheckpointOptions = group(CheckpointOptions, CheckpointOptions.__doc__)
    dry_run: bool = opt(False, help="print the resolved config and trainable parameters, then stop")

    def __post_init__(self) -> None:
        get_method(self.method).check(self)

    @property
    def method_options(self):
        """The chosen method's option group (None for full fine-tuning)."""
        return get_method(self.method).options_of(self)
