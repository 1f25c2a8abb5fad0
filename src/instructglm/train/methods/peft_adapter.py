"""What the PEFT-based methods (LoRA, P-Tuning v2) share: PEFT writes and reads their adapters."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

from instructglm.errors import UserError
from instructglm.train.methods.registry import TuningMethod

ADAPTER_WEIGHTS = "adapter_model.safetensors"


@contextmanager
def quiet_peft():
    """PEFT reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model, and each
    wrap printed a FutureWarning that is neither the user's to fix nor ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


class PeftAdapterMethod(TuningMethod):
    def save(self, model, directory: str | Path, state: dict | None = None) -> None:
        model.save_pretrained(str(directory), safe_serialization=True, state_dict=state)

    def load(self, model, directory: str | Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(Path(directory) / ADAPTER_WEIGHTS)))

    def attach(self, base, directory: str | Path, name: str = "default"):
        from peft import PeftModel

        try:
            with quiet_peft():
                return PeftModel.from_pretrained(base, str(directory), adapter_name=name)
        except (ValueError, OSError, KeyError) as e:
            raise UserError(f"{directory}: cannot load the adapter onto this base model: {e}") from None
