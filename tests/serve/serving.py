"""What the serve tests share: LoRA adapters made on the spot, a real uvicorn server on loopback, and
the answer ``infer`` gives (transformers' generate, one prompt alone) to compare served answers with."""

import json
from pathlib import Path

from instructglm.generation import SamplingConfig
from instructglm.templates import get_template
from servers import running  # noqa: F401  (the serve tests import it from here)

KEY = "s3cret-key"
HELLO = [{"role": "user", "content": "Who are you?"}]


def make_adapter(base: str, out: Path, seed: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(str(out))
    (out / "instructglm.json").write_text(json.dumps({"base_model": base, "method": "lora", "template": "alpaca"}))
    return str(out)


def reference(srv, model: str, messages, max_new_tokens: int) -> str:
    """What ``infer`` (Engine.generate, transformers' generate) answers, greedy, on the same weights."""
    engine, m, template = srv.engine, srv.engine.model, get_template("alpaca")
    prompt = engine.prompt_ids(template, messages)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    if model == "base" and hasattr(m, "disable_adapter"):
        with m.disable_adapter():
            return engine.generate([prompt], sampling, template.stop)[0]
    if model != "base":  # the continuous scheduler may have left the adapter layers off (base-only rows)
        m.base_model.enable_adapter_layers()
        m.set_adapter(model)
    return engine.generate([prompt], sampling, template.stop)[0]
