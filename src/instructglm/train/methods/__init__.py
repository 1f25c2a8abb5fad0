"""Tuning methods, one folder each (``lora``, ``ptuning``, ``freeze``, ``full``): its option group and
its :class:`TuningMethod`, registered by name (see ``registry.py``)."""

# Imported in the order the methods are offered to users (registration order).
from instructglm.train.methods.lora import LoraMethod, LoraOptions
from instructglm.train.methods.ptuning import PTuningMethod, PTuningOptions
from instructglm.train.methods.freeze import FreezeMethod, FreezeOptions
from instructglm.train.methods.full import FullMethod
from instructglm.train.methods.registry import METHODS, TuningMethod, get_method, register

__all__ = ["METHODS", "FreezeMethod", "FreezeOptions", "FullMethod", "LoraMethod", "LoraOptions", "PTuningMethod",
           "PTuningOptions", "TuningMethod", "get_method", "register"]
