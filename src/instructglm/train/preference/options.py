"""The preference stage's options (flat keys without prefix: ``--beta``, ``--label-smoothing``, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from instructglm.config import check_numbers, opt

STAGES = ("sft", "dpo", "orpo", "simpo", "kto")
REFERENCE_FREE = ("orpo", "simpo")  # stages that never need the reference model


@dataclass
class PreferenceOptions:
    """Preference alignment (stage dpo, orpo, simpo or kto)."""

    beta: float = opt(0.1, help="dpo/kto: strength of the pull towards the reference (the rewards are beta x "
                      "log-ratio); simpo: reward scale; orpo: weight of the odds-ratio term", above=0)
    dpo_loss: Literal["sigmoid", "ipo", "hinge"] = opt("sigmoid", help="dpo: sigmoid (DPO), ipo or hinge")
    label_smoothing: float = opt(0.0, help="dpo (sigmoid), simpo: assumed share of pairs whose labels are "
                                 "flipped (conservative DPO)", min=0, below=0.5)
    gamma: float = opt(0.5, help="simpo: target reward margin between the length-normalised chosen and "
                       "rejected rewards", min=0)
    sft_weight: float = opt(0.0, help="dpo/simpo/kto: add this weight x the chosen answers' token-mean "
                            "cross-entropy to the loss (orpo always has its own, weight 1)", min=0)
    desirable_weight: float = opt(1.0, help="kto: weight of the desirable completions' loss", above=0)
    undesirable_weight: float = opt(1.0, help="kto: weight of the undesirable completions' loss", above=0)
    precompute_ref: bool = opt(False, help="dpo/kto: compute the reference log-probs once before training, "
                               "store them beside the tokenized data and train without a reference model")

    def __post_init__(self) -> None:
        check_numbers(self)
