"""``infer``: answers for a data file, with one column per adapter (and the base model on request)."""

from instructglm.infer.infer import InferConfig, infer

__all__ = ["InferConfig", "infer"]
