"""The one line an out-of-memory step becomes: what lowers training memory, with the current values."""

from __future__ import annotations

from instructglm.train.options import TrainConfig


def out_of_memory_message(cfg: TrainConfig, step: int, error: Exception) -> str:
    """One line naming the settings that lower training memory, with their current values."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
    schedule, performance = cfg.schedule, cfg.performance
    knobs = [f"lower per_device_train_batch_size (now {schedule.per_device_train_batch_size}) and raise "
             f"gradient_accumulation_steps (now {schedule.gradient_accumulation_steps}) to keep the effective batch",
             "tokenize with a smaller --max-seq-length"]
    if performance.packing and cfg.method != "ptuning":
        knobs.append(f"lower pack_length (now {performance.pack_length})")
    if not performance.gradient_checkpointing:
        knobs.append("set gradient_checkpointing=true")
    if cfg.load_in != "4bit" and cfg.method in ("lora", "ptuning"):
        knobs.append("load_in=4bit (GPU, bitsandbytes)")
    return f"step {step}: out of GPU memory ({first}); to fit: " + "; ".join(knobs)
