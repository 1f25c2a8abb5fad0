"""``merge``: fold trained weights (LoRA, Freeze or full) into the base and save a plain transformers model.

The merged model is checked before it is written: its logits on a few probe prompts must equal
base + adapter within a printed tolerance, and must differ from the base model's (a merge that
changed nothing is an error, usually a wrong adapter path or an untrained adapter).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from instructglm.config import opt
from instructglm.errors import UserError

log = logging.getLogger(__name__)

PROBES = ["### Instruction:\nWho are you?\n\n### Response:\n",
          "### Instruction:\n把下面的句子翻译成英文。\n\n### Input:\n今天天气很好。\n\n### Response:\n"]


@dataclass
class MergeConfig:
    adapter: str = opt(help="trained output directory (from 'instructglm train')")
    output: str = opt(help="directory for the merged model", aliases=("-o",))
    model: str | None = opt(None, help="base model; default: the one the adapter was trained on")
    tolerance: float = opt(1e-3, help="largest allowed |logit difference| between merged and base+adapter")


def _probe_logits(model, tokenizer):
    import torch

    batch = tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.inference_mode():
        return model(**batch).logits.float(), batch["attention_mask"].bool()


def merge(cfg: MergeConfig) -> dict:
    from instructglm.infer.generate import run_info
    from instructglm.models import load_model, load_tokenizer, resolve_model
    from instructglm.train.methods import get_method

    info = run_info(cfg.adapter)
    method_name = info.get("method", "lora")
    method = get_method(method_name)
    if not method.MERGEABLE:
        raise UserError(f"{cfg.adapter}: a {method_name} prefix lives in the attention cache and cannot be "
                        f"merged into weights; serve or infer it with --adapter instead")
    if method_name == "lora" and not (Path(cfg.adapter) / "adapter_config.json").is_file():
        raise UserError(f"{cfg.adapter}: no adapter_config.json; is this a 'train' output directory?")
    model_spec = cfg.model or info.get("base_model")
    if not model_spec:
        raise UserError(f"{cfg.adapter}: the base model is unknown; pass --model")
    path = resolve_model(model_spec)
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "left"
    base = load_model(path).eval()

    if method_name == "lora":
        model = method.attach(base, cfg.adapter).eval()
        expected, mask = _probe_logits(model, tokenizer)
        with model.disable_adapter():
            base_logits, _ = _probe_logits(model, tokenizer)
        merged = model.merge_and_unload()
    else:  # freeze / full: the trained tensors replace the base ones
        base_logits, mask = _probe_logits(base, tokenizer)
        merged = method.attach(base, cfg.adapter).eval()
        expected, _ = _probe_logits(merged, tokenizer)
    change = float((expected - base_logits).abs()[mask].max())
    if change <= 1e-6:
        raise UserError(f"{cfg.adapter}: the trained weights do not change the model's logits (max change "
                        f"{change:.1e}); nothing to merge")

    out = Path(cfg.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: output exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        # The check reads back what was written: the files themselves must reproduce base + adapter.
        got, _ = _probe_logits(load_model(str(tmp)).eval(), tokenizer)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(tmp)
        diff = float((got - expected).abs()[mask].max())
        if diff > cfg.tolerance:
            raise UserError(f"merge check failed: the merged model's logits differ from base + adapter by "
                            f"{diff:.2e} (tolerance {cfg.tolerance:.0e}); nothing was written")
        (tmp / "instructglm.json").write_text(json.dumps(
            {**info, "merged_from": {"base_model": model_spec, "adapter": str(cfg.adapter)},
             "merge_check": {"max_abs_logit_diff": diff, "tolerance": cfg.tolerance}},
            indent=2, ensure_ascii=False) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("merged %s into %s -> %s (max |logit diff| %.2e vs base+adapter, which changed logits by %.2e)",
             cfg.adapter, model_spec, out, diff, change)
    return {"output": str(out), "max_abs_logit_diff": diff, "adapter_effect": change}
