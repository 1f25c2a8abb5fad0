"""LoRA through PEFT: low-rank adapters on the chosen linear layers, base weights frozen."""

from __future__ import annotations

from pathlib import Path

from instructglm.errors import UserError


def apply(model, cfg):
    from peft import LoraConfig, get_peft_model

    target = cfg.lora_target
    targets = target if target == "all-linear" else [t.strip() for t in target.split(",") if t.strip()]
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"lora_target '{target}': {e}") from None


def save(model, directory: str | Path) -> None:
    model.save_pretrained(str(directory), safe_serialization=True)


def load(model, directory: str | Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(directory) / "adapter_model.safetensors"
    result = set_peft_model_state_dict(model, load_file(str(path)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise UserError(f"{path}: adapter weights do not fit this model (unexpected {unexpected[:3]})")
