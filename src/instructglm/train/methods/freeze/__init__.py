from instructglm.train.methods.freeze.config import FreezeOptions
from instructglm.train.methods.freeze.method import FreezeMethod

__all__ = ["FreezeMethod", "FreezeOptions"]
