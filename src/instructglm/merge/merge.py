"""``merge``: fold trained weights (LoRA, Freeze or full) into the base and save a plain transformers model.

Several adapters are folded in the order given, each onto the result of the previous ones (the
Chinese-LLaMA-Alpaca workflow: apply A, merge, apply B on the merged model, merge). P-Tuning
prefixes live in the attention cache and cannot be merged.

The merge is checked in fp32 before anything is written: after each adapter, the merged model's
logits on a few probe prompts must equal "previous result + adapter" within a printed tolerance,
and every adapter must change the logits (a merge that changed nothing is an error, usually a
wrong adapter path or an untrained adapter). ``--dtype`` casts the weights only after that check.
The written files are then read back and must reproduce the checked model.

The output directory holds safetensors shards, config, the tokenizer with a ``chat_template``
that reproduces the training template, ``instructglm.json`` and a model card ``README.md``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from instructglm.config import opt
from instructglm.errors import UserError

log = logging.getLogger(__name__)

PROBES = ["### Instruction:\nWho are you?\n\n### Response:\n",
          "### Instruction:\n把下面的句子翻译成英文。\n\n### Input:\n今天天气很好。\n\n### Response:\n",
          "Hello world. The quick brown fox"]
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
NO_EFFECT = 1e-6  # an adapter whose largest logit change is below this changed nothing
METRIC_FILES = ("summary.json", "metrics.json")


@dataclass
class MergeConfig:
    adapter: list[str] = opt(help="trained output directory (from 'instructglm train'); several, comma-separated, "
                             "are merged in that order, each onto the result of the previous ones")
    output: str = opt(help="directory for the merged model", aliases=("-o",))
    model: str | None = opt(None, help="base model; default: the one the first adapter was trained on")
    dtype: Literal["bf16", "fp16", "fp32"] | None = opt(
        None, help="dtype of the saved weights (the merge itself is checked in fp32); default: the base "
                   "model's stored dtype")
    max_shard_size: str = opt("2GB", help="largest safetensors shard")
    tolerance: float = opt(1e-3, help="largest allowed |logit difference| between merged and base+adapter")


def _probe_logits(model, tokenizer):
    import torch

    batch = tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.inference_mode():
        return model(**batch).logits.float(), batch["attention_mask"].bool()


def _max_diff(a, b, mask) -> float:
    return float((a - b).abs()[mask].max())


def _check_adapters(adapters: list[str]) -> list[tuple[str, dict, str]]:
    """``(path, run info, method)`` for each adapter, refusing what cannot be merged."""
    from instructglm.models.adapters import adapter_info
    from instructglm.train.methods import get_method

    if not adapters:
        raise UserError("--adapter: give at least one trained output directory")
    out = []
    for i, a in enumerate(adapters):
        info = adapter_info(a)
        name = info.get("method", "lora")
        if not get_method(name).MERGEABLE:
            raise UserError(f"{a}: a {name} prefix lives in the attention cache and cannot be "
                            f"merged into weights; serve or infer it with --adapter instead")
        if name == "lora" and not (Path(a) / "adapter_config.json").is_file():
            raise UserError(f"{a}: no adapter_config.json; is this a 'train' output directory?")
        if name == "full" and i > 0:
            raise UserError(f"{a}: a full fine-tune replaces every weight, so merging it after "
                            f"{', '.join(adapters[:i])} would discard them; give it first")
        out.append((a, info, name))
    return out


def _save_dtype(cfg: MergeConfig, base_path: str):
    import torch

    if cfg.dtype:
        return getattr(torch, DTYPES[cfg.dtype])
    try:
        config = json.loads((Path(base_path) / "config.json").read_text())
        stored = config.get("dtype") or config.get("torch_dtype")
    except (OSError, ValueError, AttributeError):
        stored = None
    return getattr(torch, stored) if stored in DTYPES.values() else torch.float32


def merge(cfg: MergeConfig) -> dict:
    import torch

    from instructglm.export.templates import chat_template
    from instructglm.models.loading import load_model, load_tokenizer, resolve_model
    from instructglm.train.methods import get_method

    adapters = [cfg.adapter] if isinstance(cfg.adapter, str) else list(cfg.adapter)
    adapters = [a.strip() for item in adapters for a in str(item).split(",") if a.strip()]
    chain = _check_adapters(adapters)
    model_spec = cfg.model or chain[0][1].get("base_model")
    if not model_spec:
        raise UserError(f"{adapters[0]}: the base model is unknown; pass --model")
    templates = [info["template"] for _, info, _ in chain if info.get("template")]
    template = templates[-1] if templates else "alpaca"
    if len(set(templates)) > 1:
        log.warning("the adapters were trained with different templates (%s); the merged model's chat "
                    "template is the last one's, '%s'", ", ".join(templates), template)

    out = Path(cfg.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: output exists and is not an empty directory")
    path = resolve_model(model_spec)
    save_dtype = _save_dtype(cfg, path)
    tokenizer = load_tokenizer(path)
    jinja = chat_template(template, tokenizer)  # before the work: an unusable template fails now
    tokenizer.padding_side = "left"
    current = load_model(path, dtype=torch.float32).eval()

    # 1. Fold each adapter in, checking in fp32 that the merged weights reproduce "previous + adapter".
    base_logits, mask = _probe_logits(current, tokenizer)
    previous, steps = base_logits, []
    for adapter, info, name in chain:
        method = get_method(name)
        if name == "lora":
            model = method.attach(current, adapter).eval()
            expected, _ = _probe_logits(model, tokenizer)
            current = model.merge_and_unload().eval()
            got, _ = _probe_logits(current, tokenizer)
        else:  # freeze / full: the trained tensors replace the current ones
            current = method.attach(current, adapter).eval()
            expected, _ = _probe_logits(current, tokenizer)
            got = expected
        effect = _max_diff(expected, previous, mask)
        if effect <= NO_EFFECT:
            raise UserError(f"{adapter}: the trained weights do not change the model's logits (max change "
                            f"{effect:.1e}); nothing to merge")
        diff = _max_diff(got, expected, mask)
        if diff > cfg.tolerance:
            raise UserError(f"{adapter}: merge check failed: the merged model's logits differ from "
                            f"previous + adapter by {diff:.2e} (tolerance {cfg.tolerance:.0e}); nothing was written")
        steps.append({"adapter": str(adapter), "method": name, "max_abs_logit_diff": diff,
                      "adapter_effect": effect})
        log.info("merged %s (%s): max |logit diff| %.2e vs unmerged, the adapter changed logits by %.2e",
                 adapter, name, diff, effect)
        previous = got
    change = _max_diff(previous, base_logits, mask)
    diff_fp32 = max(s["max_abs_logit_diff"] for s in steps)

    # 2. Cast (only now), write to a temporary sibling, read the files back, then rename into place.
    reference = previous
    cast_diff = 0.0
    if save_dtype != torch.float32:
        with torch.no_grad():  # round the weights only: buffers such as RoPE frequencies are not saved
            for p in current.parameters():
                p.data = p.data.to(save_dtype).float()
        reference, _ = _probe_logits(current, tokenizer)  # what the saved weights compute
        current = current.to(save_dtype)
        cast_diff = _max_diff(reference, previous, mask)
        log.info("cast to %s: max |logit diff| vs the fp32 merge %.2e", save_dtype, cast_diff)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        current.save_pretrained(tmp, safe_serialization=True, max_shard_size=cfg.max_shard_size)
        # The check reads back what was written: the files themselves must reproduce the checked model.
        reloaded = load_model(str(tmp), dtype=torch.float32).eval()
        got, _ = _probe_logits(reloaded, tokenizer)
        del reloaded
        readback = _max_diff(got, reference, mask)
        if readback > cfg.tolerance:
            raise UserError(f"merge check failed: the written model's logits differ from the merged model by "
                            f"{readback:.2e} (tolerance {cfg.tolerance:.0e}); nothing was written")
        tokenizer.padding_side = "right"
        if jinja is not None:  # (the 'model' template is the tokenizer's own already)
            tokenizer.chat_template = jinja
        tokenizer.save_pretrained(tmp)
        dtype_name = str(save_dtype).replace("torch.", "")
        check = {"max_abs_logit_diff": diff_fp32, "tolerance": cfg.tolerance, "readback_diff": readback,
                 "adapter_effect": change, "dtype": dtype_name, "cast_logit_diff": cast_diff, "steps": steps}
        info = dict(chain[-1][1])
        info["template"] = template
        (tmp / "instructglm.json").write_text(json.dumps(
            {**info, "merged_from": {"base_model": model_spec, "adapter": str(adapters[0]) if len(adapters) == 1
                                     else [str(a) for a in adapters]},
             "merge_check": check}, indent=2, ensure_ascii=False) + "\n")
        (tmp / "README.md").write_text(model_card(model_spec, chain, template, check), encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("merged %s into %s -> %s (max |logit diff| %.2e vs base+adapters, which changed logits by %.2e)",
             ", ".join(adapters), model_spec, out, diff_fp32, change)
    return {"output": str(out), "max_abs_logit_diff": diff_fp32, "adapter_effect": change,
            "tolerance": cfg.tolerance, "readback_diff": readback, "dtype": dtype_name, "cast_logit_diff": cast_diff,
            "steps": steps, "template": template}


def _metrics(adapter: str) -> tuple[str, dict] | None:
    """Numeric results from a ``summary.json``/``metrics.json`` in the adapter directory or next to it."""
    for folder in (Path(adapter), Path(adapter).parent):
        for name in METRIC_FILES:
            path = folder / name
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            flat: dict = {}

            def walk(prefix: str, value, depth: int) -> None:
                if isinstance(value, bool):
                    return
                if isinstance(value, (int, float)):
                    flat[prefix] = value
                elif isinstance(value, dict) and depth < 2:
                    for k, v in value.items():
                        walk(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)

            walk("", data, 0)
            if flat:
                return str(path), dict(list(flat.items())[:40])
    return None


def model_card(base: str, chain: list[tuple[str, dict, str]], template: str, check: dict) -> str:
    base_line = f"base_model: {base}\n" if base.count("/") == 1 and not Path(base).exists() else ""
    lines = ["---", f"{base_line}library_name: transformers", "tags:", "- instructglm", "- merged",
             *[f"- {m}" for m in dict.fromkeys(name for _, _, name in chain)], "---", "",
             "# Merged model", "",
             "Written by `instructglm merge`: the trained weights below folded into the base model, in order.", "",
             f"- **Base model:** `{base}`", f"- **Prompt template:** `{template}` (also the tokenizer's "
             f"`chat_template`)", f"- **Saved dtype:** {check['dtype']}", "", "## Adapters", "",
             "| # | adapter | method | dataset | steps |", "|---|---|---|---|---|"]
    for i, (adapter, info, name) in enumerate(chain, 1):
        lines.append(f"| {i} | `{adapter}` | {name} | `{info.get('dataset', '?')}` | {info.get('steps', '?')} |")
    lines += ["", "## Merge check", "",
              f"Logits on {len(PROBES)} probe prompts, merged vs base + adapters applied in order (fp32): "
              f"max |diff| {check['max_abs_logit_diff']:.2e} (tolerance {check['tolerance']:.0e}); the adapters "
              f"changed the logits by up to {check['adapter_effect']:.2e}.",
              f"Saved as {check['dtype']} (max |logit diff| from the cast: {check['cast_logit_diff']:.2e}); "
              f"the written files reproduce the saved model within {check['readback_diff']:.2e}.", ""]
    for adapter, _, _ in chain:
        found = _metrics(adapter)
        if found:
            source, values = found
            lines += [f"## Metrics of `{adapter}` (from `{source}`)", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in values.items()]
            lines.append("")
    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'tok = AutoTokenizer.from_pretrained("PATH")', 'model = AutoModelForCausalLM.from_pretrained("PATH")',
              'text = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], '
              'add_generation_prompt=True, tokenize=False)', "```", ""]
    return "\n".join(lines)
