"""P-Tuning v2 through PEFT's prefix tuning: a trainable key/value prefix of ``pre_seq_len``
tokens in every layer, optionally produced by a small MLP (``prefix_projection``). The seeds'
ChatGLM-6B recipe used ``pre_seq_len`` 128 with learning rate 2e-2. A prefix lives in the attention
cache, so it cannot be merged into weights."""

from __future__ import annotations

from pathlib import Path

from instructglm.errors import UserError
from instructglm.train.methods import lora

MERGEABLE = False
USES_MODEL_FORWARD = True  # PEFT injects the prefix in the model's forward


def apply(model, cfg):
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.pre_seq_len,
                                prefix_projection=cfg.prefix_projection,
                                encoder_hidden_size=cfg.prefix_hidden_size or model.config.hidden_size)
    try:
        return get_peft_model(model, config)
    except (ValueError, AttributeError, NotImplementedError) as e:
        raise UserError(f"method ptuning: the {type(model).__name__} architecture cannot take a "
                        f"key/value prefix through PEFT ({e}); use --method lora") from None


save = lora.save


def load(model, directory: str | Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(directory) / "adapter_model.safetensors")))


attach = lora.attach
