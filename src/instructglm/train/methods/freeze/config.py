"""Freeze tuning's options (flat keys ``freeze_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from instructglm.config import opt


@dataclass
class FreezeOptions:
    KEY_PREFIX: ClassVar[str] = "freeze_"

    trainable_layers: int = opt(2, help="freeze: train the last N blocks (first N if negative)")
    modules: Literal["mlp", "attn", "all"] = opt("mlp", help="freeze: which part of those blocks trains")
