"""P-Tuning v2 through PEFT's prefix tuning: a trainable key/value prefix of ``pre_seq_len``
tokens in every layer, optionally produced by a small MLP (``prefix_projection``). ChatGLM-6B's
P-Tuning v2 recipe used ``pre_seq_len`` 128 with learning rate 2e-2. A prefix lives in the attention
cache, so it cannot be merged into weights."""

from __future__ import annotations

from instructglm.errors import UserError
from instructglm.train.methods.peft_adapter import PeftAdapterMethod, quiet_peft
from instructglm.train.methods.ptuning.config import PTuningOptions
from instructglm.train.methods.registry import register


@register
class PTuningMethod(PeftAdapterMethod):
    NAME = "ptuning"
    OPTIONS = PTuningOptions
    MERGEABLE = False
    USES_MODEL_FORWARD = True  # PEFT injects the prefix in the model's forward

    def apply(self, model, options: PTuningOptions):
        from peft import PrefixTuningConfig, get_peft_model

        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options.pre_seq_len,
                                    prefix_projection=options.prefix_projection,
                                    encoder_hidden_size=options.prefix_hidden_size or model.config.hidden_size)
        try:
            with quiet_peft():
                return get_peft_model(model, config)
        except (ValueError, AttributeError, NotImplementedError) as e:
            raise UserError(f"method ptuning: the {type(model).__name__} architecture cannot take a "
                            f"key/value prefix through PEFT ({e}); use --method lora") from None
