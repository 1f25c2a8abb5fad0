"""``train``: the fine-tuning recipe (LoRA, P-Tuning v2, Freeze, full)."""

from instructglm.train.options import TrainConfig
from instructglm.train.recipe import SFTRecipe, train

__all__ = ["SFTRecipe", "TrainConfig", "train"]
