"""P-Tuning v2's options (flat keys as in ChatGLM-6B's P-Tuning v2 scripts: ``pre_seq_len``, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from instructglm.config import check_numbers, opt


@dataclass
class PTuningOptions:
    pre_seq_len: int = opt(16, help="P-Tuning v2 prefix length in tokens", aliases=("--pre_seq_len",), min=1)
    prefix_projection: bool = opt(False, help="P-Tuning v2: produce the prefix with a 2-layer MLP",
                                  aliases=("--prefix_projection",))
    prefix_hidden_size: int | None = opt(None, help="P-Tuning v2 MLP width (default: the model's hidden size)",
                                         min=1)

    def __post_init__(self) -> None:
        check_numbers(self)
