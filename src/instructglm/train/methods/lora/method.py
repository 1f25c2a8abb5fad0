"""LoRA through PEFT: low-rank adapters on the chosen linear layers, base weights frozen.

``lora_target`` is ``auto`` by default: ``query_key_value`` on ChatGLM-6B (the fused attention
projection ChatGLM-Tuning and InstructGLM's original recipes adapted), ``all-linear`` on every other
family (every linear layer of the transformer blocks, not the LM head: LLaMA, Qwen2/3, Gemma 3, GLM,
ChatGLM2/3 and GLM-4 as converted). Named modules work too, e.g. ``q_proj,v_proj``.
rsLoRA (``lora_rslora``) and DoRA (``lora_dora``) are PEFT switches.

A model whose vocabulary was extended (:mod:`instructglm.train.vocab`) also trains its input
embedding and LM head in full (PEFT ``modules_to_save``, as Chinese-LLaMA did), so the adapter
carries the resized matrices; tied ones stay tied (PEFT's ``ensure_weight_tying``).
"""

from __future__ import annotations

from pathlib import Path

from instructglm.errors import UserError
from instructglm.train.methods.lora.config import LoraOptions
from instructglm.train.methods.peft_adapter import ADAPTER_WEIGHTS, PeftAdapterMethod, quiet_peft
from instructglm.train.methods.registry import register


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _targets(model, target: str) -> str | list[str]:
    """PEFT's ``target_modules`` for ``lora_target`` (``auto`` chosen by the model's family)."""
    if target == "auto":
        from instructglm.models.chatglm import ChatGLMv1Config

        target = "query_key_value" if isinstance(model.config, ChatGLMv1Config) else "all-linear"
    return target if target == "all-linear" else _names(target)


@register
class LoraMethod(PeftAdapterMethod):
    NAME = "lora"
    OPTIONS = LoraOptions

    def apply(self, model, options: LoraOptions):
        from peft import LoraConfig, get_peft_model

        from instructglm.train.vocab import VOCAB_ATTR

        target = options.target
        vocab = getattr(model, VOCAB_ATTR, [])  # set when the vocabulary was extended
        to_save = list(dict.fromkeys(_names(options.modules_to_save) + vocab))
        tied = bool(vocab) and model.get_output_embeddings() is not None and (
            model.get_output_embeddings().weight is model.get_input_embeddings().weight)
        config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                            target_modules=_targets(model, target), modules_to_save=to_save or None,
                            use_rslora=options.rslora, use_dora=options.dora, task_type="CAUSAL_LM",
                            ensure_weight_tying=tied)
        try:
            with quiet_peft():
                return get_peft_model(model, config)
        except ValueError as e:
            raise UserError(f"lora_target '{target}': {e}") from None

    def save(self, model, directory: str | Path, state: dict | None = None) -> None:
        """As PEFT's; with an extended vocabulary the trained embedding and head are saved once (as
        ``modules_to_save``, PEFT would add the frozen base copies too), tied ones under both names."""
        from instructglm.train.vocab import VOCAB_ATTR

        extended = bool(getattr(model, VOCAB_ATTR, None))
        if extended and state is not None:  # a state keyed by parameter (DeepSpeed's) lists a tied matrix once
            state = dict(state)
            params = dict(model.named_parameters(remove_duplicate=False))
            for name, p in params.items():
                if ".modules_to_save." in name and name not in state:
                    twin = next((k for k, q in params.items() if q is p and k in state), None)
                    if twin:
                        state[name] = state[twin]
        model.save_pretrained(str(directory), safe_serialization=True, state_dict=state,
                              save_embedding_layers=False if extended else "auto")

    def load(self, model, directory: str | Path) -> None:
        """As PEFT's, and weights that do not fit the model are refused rather than skipped."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(directory) / ADAPTER_WEIGHTS
        result = set_peft_model_state_dict(model, load_file(str(path)))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise UserError(f"{path}: adapter weights do not fit this model (unexpected {unexpected[:3]})")
