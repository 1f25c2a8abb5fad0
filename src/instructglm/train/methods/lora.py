"""LoRA through PEFT: low-rank adapters on the chosen linear layers, base weights frozen.

``lora_target`` is ``all-linear`` by default (every linear layer of the transformer blocks, not the
LM head), which suits every supported family (LLaMA, Qwen2/3, Gemma 3, GLM/GLM-4). Named modules
work too, e.g. ``query_key_value`` for legacy ChatGLM-6B checkpoints or ``q_proj,v_proj``.
rsLoRA (``lora_rslora``) and DoRA (``lora_dora``) are PEFT switches.
"""

from __future__ import annotations

from pathlib import Path

from instructglm.errors import UserError

MERGEABLE = True
USES_MODEL_FORWARD = False  # the backbone + LM head are called directly (train/loss.py)


def apply(model, cfg):
    from peft import LoraConfig, get_peft_model

    target = cfg.lora_target
    targets = target if target == "all-linear" else [t.strip() for t in target.split(",") if t.strip()]
    to_save = [m.strip() for m in cfg.lora_modules_to_save.split(",") if m.strip()] or None
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, modules_to_save=to_save, use_rslora=cfg.lora_rslora,
                        use_dora=cfg.lora_dora, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"lora_target '{target}': {e}") from None


def save(model, directory: str | Path, state: dict | None = None) -> None:
    """``state``: the trained tensors already gathered (FSDP shards them); None reads them from ``model``."""
    model.save_pretrained(str(directory), safe_serialization=True, state_dict=state)


def load(model, directory: str | Path) -> None:
    """Restore trained adapter weights into ``model`` (for resuming)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(directory) / "adapter_model.safetensors"
    result = set_peft_model_state_dict(model, load_file(str(path)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise UserError(f"{path}: adapter weights do not fit this model (unexpected {unexpected[:3]})")


def attach(base, directory: str | Path, name: str = "default"):
    """The base model with the saved adapter, for inference."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, str(directory), adapter_name=name)
    except (ValueError, OSError, KeyError) as e:
        raise UserError(f"{directory}: cannot load the adapter onto this base model: {e}") from None
