"""LoRA's options (flat keys ``lora_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from instructglm.config import check_numbers, opt


@dataclass
class LoraOptions:
    KEY_PREFIX: ClassVar[str] = "lora_"

    rank: int = opt(8, help="LoRA rank r", aliases=("--lora_rank",), min=1)
    alpha: float = opt(16.0, help="LoRA alpha (scaling = alpha / r)", aliases=("--lora_alpha",), above=0)
    dropout: float = opt(0.05, help="dropout on the LoRA input", aliases=("--lora_dropout",), min=0, below=1)
    target: str = opt("auto", help="modules to adapt: auto (query_key_value on ChatGLM-6B, as ChatGLM-Tuning; "
                      "all-linear on other models), all-linear, or comma-separated names (e.g. q_proj,v_proj)")
    modules_to_save: str = opt("", help="comma-separated modules trained in full besides LoRA (e.g. lm_head)")
    rslora: bool = opt(False, help="rank-stabilised LoRA scaling (alpha / sqrt(r))")
    dora: bool = opt(False, help="weight-decomposed LoRA (DoRA)")

    def __post_init__(self) -> None:
        check_numbers(self)
