"""``train``: the fine-tuning recipe (LoRA, P-Tuning v2, Freeze, full)."""

from instructglm.train.recipe import TrainConfig, train

__all__ = ["TrainConfig", "train"]
