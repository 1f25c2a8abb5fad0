"""A LoRA adapter with random weights on a tiny ChatGLM2/3/GLM-4 checkpoint, recorded as trained from the
checkpoint's own directory (original layout) with the family's template, as ``train`` records it."""

import json
from pathlib import Path

import torch


def make_chatglm_adapter(checkpoint: str, out_dir: Path, template: str, seed: int = 5) -> str:
    from peft import LoraConfig, get_peft_model

    from instructglm.models.loading import load_model

    torch.manual_seed(seed)
    model = load_model(checkpoint, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(out_dir)
    (Path(out_dir) / "instructglm.json").write_text(json.dumps(
        {"base_model": str(checkpoint), "method": "lora", "template": template}))
    return str(out_dir)
