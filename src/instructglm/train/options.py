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

from instructglm.config import SEED, check_numbers, group, opt
from instructglm.errors import UserError
from instructglm.train.methods import FreezeOptions, LoraOptions, PTuningOptions, get_method
from instructglm.train.preference.options import PreferenceOptions


@dataclass
class OptimizerOptions:
    """AdamW and its learning-rate schedule."""

    learning_rate: float = opt(2e-4, help="peak learning rate", aliases=("--learning_rate",), above=0)
    weight_decay: float = opt(0.0, help="AdamW weight decay", min=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = opt("cosine", help="learning-rate schedule after warmup")
    warmup_steps: int = opt(0, help="linear warmup steps", min=0)
    max_grad_norm: float = opt(1.0, help="gradient clipping norm; 0 disables", min=0)

    def __post_init__(self) -> None:
        check_numbers(self)


@dataclass
class ScheduleOptions:
    """How many rows per step, how many steps."""

    per_device_train_batch_size: int = opt(4, help="rows per micro-batch",
                                           aliases=("--per_device_train_batch_size", "--batch-size"), min=1)
    gradient_accumulation_steps: int = opt(1, help="micro-batches per optimizer step",
                                           aliases=("--gradient_accumulation_steps",), min=1)
    max_steps: int = opt(-1, help="optimizer steps to run; -1 = use num_epochs", aliases=("--max_steps",), min=-1)
    num_epochs: float = opt(3.0, help="epochs over the dataset (when max_steps is -1)", aliases=("--num_train_epochs",),
                            min=0)

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_epochs <= 0):
            raise UserError("max_steps/num_epochs: nothing to train (set max_steps > 0 or num_epochs > 0)")


@dataclass
class PerformanceOptions:
    """Precision, packing and kernels: speed and memory, not the maths."""

    packing: bool = opt(True, help="padding-free packing of each micro-batch's examples into shared rows "
                        "(same loss as unpacked; not for ptuning)")
    pack_length: int = opt(512, help="longest packed row in tokens (a longer example gets its own row)", min=1)
    gradient_checkpointing: bool = opt(False, help="recompute activations in the backward pass (less memory, "
                                       "about a third more compute)")
    compile: bool = opt(False, help="torch.compile the model (GPU; first steps are slow while it compiles)")
    liger: Literal["auto", "on", "off"] = opt(
        "auto", help="Liger Triton kernels (RMSNorm, RoPE, SwiGLU/GeGLU, fused LM head + cross-entropy): auto = "
                     "used on a CUDA GPU when liger-kernel is installed and supports the architecture")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto", help="auto = bf16 on a GPU that has it (else fp16), and on CPUs with native bf16 matrix "
                     "instructions (avx512_bf16/AMX) for models at least 512 wide; else fp32. Trainable weights and "
                     "optimizer state stay fp32")
    fp16: bool = opt(False, help="ChatGLM-Tuning's switch: same as precision=fp16", aliases=("--fp16",))

    def __post_init__(self) -> None:
        if self.fp16:
            if self.precision not in ("auto", "fp16"):
                raise UserError(f"fp16: conflicts with precision={self.precision}")
            self.precision = "fp16"
        check_numbers(self)


@dataclass
class EvalOptions:
    """The eval loss: on a held-out part of the data or another dataset."""

    val_size: float = opt(0.0, help="hold out this fraction (< 1) or number of rows for eval loss", min=0)
    eval_dataset: str | None = opt(None, help="tokenized dataset directory for eval loss")
    eval_steps: int = opt(0, help="eval loss every N steps (0: only at the end when there is an eval set)", min=0)

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.val_size and self.eval_dataset:
            raise UserError("val_size: not combined with eval_dataset (choose one eval set)")
        if self.eval_steps and not (self.val_size or self.eval_dataset):
            raise UserError(f"eval_steps={self.eval_steps}: there is no eval set; set val_size or eval_dataset")


@dataclass
class CheckpointOptions:
    """Checkpoints, logs, resuming and stopping."""

    save_steps: int = opt(0, help="checkpoint every N steps; 0 = only the final save", aliases=("--save_steps",),
                          min=0)
    save_total_limit: int = opt(2, help="checkpoints to keep; 0 = all", aliases=("--save_total_limit",),
                                  min=0)
    logging_steps: int = opt(10, help="log every N steps", aliases=("--logging_steps",), min=1)
    resume: str | None = opt(None, help="'latest' or a checkpoint directory to resume from")
    resume_anyway: bool = opt(False, help="resume even when the settings or data differ from the checkpoint's "
                              "run (a warning names what differs); without it such a resume is refused")
    stop_on_nan: bool = opt(True, help="stop with an error when the loss becomes NaN or inf")

    def __post_init__(self) -> None:
        check_numbers(self)


@dataclass
class TrainConfig:
    dataset: str = opt(help="tokenized dataset directory (from 'instructglm tokenize'); several, comma-separated, "
                       "are trained as one (e.g. shards tokenized on different machines)", aliases=("--dataset_path",))
    output_dir: str = opt(help="where the trained weights, logs and checkpoints go", aliases=("--output_dir", "-o"))
    model: str = opt("gemma3-270m", help="base model: embedded name, directory, .gguf file or hub id")
    method: Literal["lora", "ptuning", "freeze", "full"] = opt("lora", help="tuning method")
    stage: Literal["sft", "pt", "dpo", "orpo", "simpo", "kto"] = opt(
        "sft", help="sft (instruction tuning); pt (continued pretraining on 'tokenize --stage pt' rows); "
                    "or preference alignment on tokenized preference data: dpo, orpo, "
                    "simpo (pairs) or kto (pairs or labelled completions)")
    trust_remote_code: bool = opt(False, help="run the model repository's own code (legacy ChatGLM-6B/2/3)")
    load_in: Literal["none", "8bit", "4bit"] = opt("none", help="quantized base weights (bitsandbytes, GPU only)")
    tokenizer: str | None = opt(None, help="tokenizer directory that extends the model's (only adds tokens, e.g. "
                                "Chinese-LLaMA's merged tokenizer); tokenize with the same option")
    add_tokens: str | None = opt(None, help="file of tokens to add to the model's tokenizer, one per line; "
                                 "tokenize with the same option")
    lora: LoraOptions = group(LoraOptions, "LoRA (method lora)")
    ptuning: PTuningOptions = group(PTuningOptions, "P-Tuning v2 (method ptuning)")
    freeze: FreezeOptions = group(FreezeOptions, "Freeze tuning (method freeze)")
    optimizer: OptimizerOptions = group(OptimizerOptions, OptimizerOptions.__doc__)
    schedule: ScheduleOptions = group(ScheduleOptions, ScheduleOptions.__doc__)
    performance: PerformanceOptions = group(PerformanceOptions, PerformanceOptions.__doc__)
    seed: int = opt(42, help="random seed for data order, dropout and initialisation", **SEED)
    shuffle: bool = opt(True, help="shuffle the rows every epoch (off: dataset order, e.g. for comparisons)")
    preference: PreferenceOptions = group(PreferenceOptions, PreferenceOptions.__doc__)
    eval: EvalOptions = group(EvalOptions, EvalOptions.__doc__)
    checkpoints: CheckpointOptions = group(CheckpointOptions, CheckpointOptions.__doc__)
    dry_run: bool = opt(False, help="print the resolved config and trainable parameters, then stop")

    def __post_init__(self) -> None:
        check_numbers(self)
        get_method(self.method).check(self)

    @property
    def method_options(self):
        """The chosen method's option group (None for full fine-tuning)."""
        return get_method(self.method).options_of(self)
