from instructglm.train.methods.ptuning.config import PTuningOptions
from instructglm.train.methods.ptuning.method import PTuningMethod

__all__ = ["PTuningMethod", "PTuningOptions"]
