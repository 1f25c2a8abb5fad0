"""The one generation engine shared by ``infer``, ``chat`` and ``serve``."""

from instructglm.generation.batch import DecodeBatch
from instructglm.generation.engine import Engine, Row, left_pad
from instructglm.generation.sampling import SamplingConfig, SamplingError, pick_next
from instructglm.generation.text import Detokenizer, StopText, TextStream

__all__ = ["DecodeBatch", "Detokenizer", "Engine", "Row", "SamplingConfig", "SamplingError", "StopText", "TextStream",
           "left_pad", "pick_next"]
