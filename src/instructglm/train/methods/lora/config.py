"""LoRA's options (flat keys ``lora_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from instructglm.config import opt
from instructglm.errors import UserError


@dataclass
class LoraOptions:
    KEY_PREFIX: ClassVar[str] = "lora_"

    rank: int = opt(8, help="LoRA rank r", aliases=("--lora_rank",))
    alpha: float = opt(16.0, help="LoRA alpha (scaling = alpha / r)", aliases=("--lora_alpha",))
    dropout: float = opt(0.05, help="dropout on the LoRA input", aliases=("--lora_dropout",))
    target: str = opt("auto", help="modules to adapt: auto (query_key_value on ChatGLM-6B, as ChatGLM-Tuning; "
                      "all-linear on other models), all-linear, or comma-separated names (e.g. q_proj,v_proj)")
    modules_to_save: str = opt("", help="comma-separated modules trained in full besides LoRA (e.g. lm_head)")
    rslora: bool = opt(False, help="rank-stabilised LoRA scaling (alpha / sqrt(r))")
    dora: bool = opt(False, help="weight-decomposed LoRA (DoRA)")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise UserError(f"lora_rank: must be at least 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"lora_dropout: must be in [0, 1), got {self.dropout}")
