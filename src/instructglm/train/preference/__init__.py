"""Preference alignment after SFT: DPO, ORPO, SimPO and KTO on the SFT recipe (``recipe.py``); the losses
are in ``losses.py``. Only the options are imported here: building a config must not import torch."""

from instructglm.train.preference.options import REFERENCE_FREE, STAGES, PreferenceOptions

__all__ = ["REFERENCE_FREE", "STAGES", "PreferenceOptions"]
