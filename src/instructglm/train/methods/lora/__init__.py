from instructglm.train.methods.lora.config import LoraOptions
from instructglm.train.methods.lora.method import LoraMethod

__all__ = ["LoraMethod", "LoraOptions"]
