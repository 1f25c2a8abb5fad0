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
that reproduces the training template, ``instructglm.json`` and a model card ``README.md``
(:mod:`instructglm.merge.card`). A ChatGLM base keeps its official layout unless ``--layout native``
(:mod:`instructglm.merge.layouts`); its own tokenizer files are then copied instead.

An adapter trained with an extended vocabulary carries its tokenizer (:mod:`instructglm.train.vocab`):
before it is folded in, the model is resized to that tokenizer as training resized it, the probes
are tokenized with it (so the new tokens' rows are checked too), and the merged model is written
with the largest vocabulary and tokenizer of the chain.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from instructglm.config import check_numbers, opt, shown
from instructglm.errors import UserError
from instructglm.files import atomic_dir, read_json
from instructglm.merge.layouts import check_layout, loadable, original_of, write_original
from instructglm.runinfo import RunInfo, adapter_info, choose_template

log = logging.getLogger(__name__)

PROBES = ["### Instruction:\nWho are you?\n\n### Response:\n",
          "### Instruction:\n把下面的句子翻译成英文。\n\n### Input:\n今天天气很好。\n\n### Response:\n",
          "Hello world. The quick brown fox"]
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
NO_EFFECT = 1e-6  # an adapter whose largest logit change is below this changed nothing


@dataclass
class MergeConfig:
    adapter: list[str] = opt(help="trained output directory (from 'instructglm train'); several, comma-separated, "
                             "are merged in that order, each onto the result of the previous ones")
    output: str = opt(help="directory for the merged model", aliases=("-o",))
    model: str | None = opt(None, help="base model; default: the one the first adapter was trained on")
    dtype: Literal["bf16", "fp16", "fp32"] | None = opt(
        None, help="dtype of the saved weights (the merge itself is checked in fp32); default: the base "
                   "model's stored dtype")
    max_shard_size: str = opt("2GB", help="largest safetensors shard: a whole number and a unit (KB, MB, GB, "
                              "KiB, MiB, GiB), e.g. 500MB")
    tolerance: float = opt(1e-3, help="largest allowed |logit difference| between merged and base+adapter", min=0)
    layout: Literal["original", "native"] = opt(
        "original", help="original: the layout the base model was read in (a ChatGLM checkpoint keeps its "
                         "official layout); native: transformers' own (ChatGLM2/3, GLM-4: the glm architecture)")

    def __post_init__(self) -> None:
        check_numbers(self)
        # the sizes transformers' save_pretrained reads (convert_file_size_to_int): checked here, before any loading
        size = re.fullmatch(r"\s*(\d{1,15})\s*([KMG]i?B)\s*", str(self.max_shard_size), re.IGNORECASE)
        if not size or int(size.group(1)) == 0:
            raise UserError(f"--max-shard-size {shown(self.max_shard_size)}: expected a whole number and a unit "
                            f"(KB, MB, GB, KiB, MiB, GiB), such as 2GB or 500MB")
        self.max_shard_size = size.group(1) + size.group(2).upper().replace("IB", "iB")  # "mb" would be megabits


@dataclass
class Link:
    """One trained result in the chain, in merge order."""

    path: str
    info: RunInfo
    tokenizer: object = None  # the extended tokenizer the adapter carries; None: the one before it


class Probe:
    """The probe prompts (padded on the left), run through a model to compare its logits with another's."""

    def __init__(self, tokenizer):
        tokenizer.padding_side = "left"
        self.tokenizer = tokenizer
        self.batch = tokenizer(PROBES, return_tensors="pt", padding=True)
        self.mask = self.batch["attention_mask"].bool()

    def logits(self, model):
        import torch

        with torch.inference_mode():
            return model(**self.batch).logits.float()

    def max_diff(self, a, b) -> float:
        return float((a - b).abs()[self.mask].max())


def resolve_chain(adapters: list[str]) -> list[Link]:
    """The adapters with their run info, refusing what cannot be merged."""
    from instructglm.train.methods import get_method

    if not adapters:
        raise UserError("--adapter: give at least one trained output directory")
    chain = []
    for i, path in enumerate(adapters):
        info = adapter_info(path)
        if not get_method(info.method).MERGEABLE:
            raise UserError(f"{path}: a {info.method} prefix lives in the attention cache and cannot be "
                            f"merged into weights; serve or infer it with --adapter instead")
        if info.method == "lora" and not (Path(path) / "adapter_config.json").is_file():
            raise UserError(f"{path}: no adapter_config.json; is this a 'train' output directory?")
        if info.method == "full" and i > 0:
            raise UserError(f"{path}: a full fine-tune replaces every weight, so merging it after "
                            f"{', '.join(adapters[:i])} would discard them; give it first")
        chain.append(Link(str(path), info))
    return chain


def chain_tokenizers(tokenizer, chain: list[Link]):
    """Read the tokenizer each link carries into it, checking that each extends the one in effect before
    it; returns the tokenizer of the merged model (the last one carried, else ``tokenizer``)."""
    from instructglm.models.vocab import adapter_tokenizer, check_extension

    for link in chain:
        carried = adapter_tokenizer(link.path)
        if carried is not None:
            check_extension(tokenizer, carried, link.path)
            if len(carried) > len(tokenizer):
                link.tokenizer = tokenizer = carried
    return tokenizer


def _save_dtype(cfg: MergeConfig, base_path: str):
    import torch

    if cfg.dtype:
        return getattr(torch, DTYPES[cfg.dtype])
    try:
        config = read_json(Path(base_path) / "config.json")
        stored = config.get("dtype") or config.get("torch_dtype")
    except (UserError, AttributeError):  # a hub id, or a config without a dtype: save as fp32
        stored = None
    return getattr(torch, stored) if stored in DTYPES.values() else torch.float32


def fold(current, chain: list[Link], probe: Probe, previous, tolerance: float):
    """Fold each link into ``current`` (whose probe logits are ``previous``), checking in fp32 that the
    result reproduces "previous + adapter". A link with an extended vocabulary first resizes ``current``
    (and the probes take its tokenizer). Returns (merged model, its probe logits, one record per link,
    the probe of the merged model)."""
    from instructglm.models.vocab import resize_vocab
    from instructglm.train.methods import get_method

    steps = []
    for link in chain:
        method = get_method(link.info.method)
        if link.tokenizer is not None:
            resize_vocab(current, len(probe.tokenizer), len(link.tokenizer))
            probe = Probe(link.tokenizer)
            previous = probe.logits(current)
        if link.info.method == "lora":
            model = method.attach(current, link.path).eval()
            expected = probe.logits(model)
            current = model.merge_and_unload().eval()
            got = probe.logits(current)
        else:  # freeze / full: the trained tensors replace the current ones
            current = method.attach(current, link.path).eval()
            expected = got = probe.logits(current)
        effect = probe.max_diff(expected, previous)
        if effect <= NO_EFFECT:
            raise UserError(f"{link.path}: the trained weights do not change the model's logits (max change "
                            f"{effect:.1e}); nothing to merge")
        diff = probe.max_diff(got, expected)
        if diff > tolerance:
            raise UserError(f"{link.path}: merge check failed: the merged model's logits differ from "
                            f"previous + adapter by {diff:.2e} (tolerance {tolerance:.0e}); nothing was written")
        steps.append({"adapter": link.path, "method": link.info.method, "max_abs_logit_diff": diff,
                      "adapter_effect": effect})
        log.info("merged %s (%s): max |logit diff| %.2e vs unmerged, the adapter changed logits by %.2e",
                 link.path, link.info.method, diff, effect)
        previous = got
    return current, previous, steps, probe


def cast(model, dtype, probe: Probe, merged_logits):
    """``model`` in ``dtype``; returns (model, the logits its saved weights compute, their change)."""
    import torch

    if dtype == torch.float32:
        return model, merged_logits, 0.0
    with torch.no_grad():  # round the weights only: buffers such as RoPE frequencies are not saved
        for p in model.parameters():
            p.data = p.data.to(dtype).float()
    reference = probe.logits(model)
    change = probe.max_diff(reference, merged_logits)
    log.info("cast to %s: max |logit diff| vs the fp32 merge %.2e", dtype, change)
    return model.to(dtype), reference, change


def _check_readback(folder: str, probe: Probe, reference, tolerance: float) -> float:
    """The written files themselves must reproduce the checked model."""
    import torch

    from instructglm.models.loading import load_model

    reloaded = load_model(folder, dtype=torch.float32).eval()
    diff = probe.max_diff(probe.logits(reloaded), reference)
    if diff > tolerance:
        raise UserError(f"merge check failed: the written model's logits differ from the merged model by "
                        f"{diff:.2e} (tolerance {tolerance:.0e}); nothing was written")
    return diff


def merge(cfg: MergeConfig) -> dict:
    import torch

    from instructglm.export.templates import chat_template
    from instructglm.merge.card import model_card
    from instructglm.models.adapters import check_adapter_fits
    from instructglm.models.loading import load_model, load_tokenizer, resolve_model
    from instructglm.models.vocab import save_tokenizer

    adapters = [cfg.adapter] if isinstance(cfg.adapter, str) else [str(a) for a in cfg.adapter]
    chain = resolve_chain(adapters)
    model_spec = cfg.model or chain[0].info.base_model
    if not model_spec:
        raise UserError(f"{adapters[0]}: the base model is unknown; pass --model")
    template = choose_template(None, {link.path: link.info.template for link in chain}, mixed="last")
    out = Path(cfg.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: output exists and is not an empty directory")
    path = resolve_model(model_spec)
    original = check_layout(cfg.layout, original_of(path))
    save_dtype = _save_dtype(cfg, path)
    base_tokenizer = load_tokenizer(path)
    tokenizer = chain_tokenizers(base_tokenizer, chain)
    if original and tokenizer is not base_tokenizer:
        extended = next(link.path for link in chain if link.tokenizer is not None)
        raise UserError(f"{extended}: an extended vocabulary cannot be written in {original.family}'s original "
                        f"layout, whose tokenizer files are copied as they are; use --layout native")
    jinja = chat_template(template, tokenizer)  # before the work: an unusable template fails now
    probe = Probe(base_tokenizer)
    base = load_model(path, dtype=torch.float32).eval()
    for link in chain:  # trained on this base? (a later link may sit on a merged or resized model: fold checks it)
        if link.tokenizer is None and link.info.base_model == chain[0].info.base_model:
            check_adapter_fits(base, base_tokenizer, link.path, model_spec)
    base_logits = probe.logits(base)

    merged, merged_logits, steps, probe = fold(base, chain, probe, base_logits, cfg.tolerance)
    merged, reference, cast_diff = cast(merged, save_dtype, probe, merged_logits)
    effect = (probe.max_diff(merged_logits, base_logits) if probe.tokenizer is base_tokenizer  # else other probes
              else max(s["adapter_effect"] for s in steps))
    check = {"max_abs_logit_diff": max(s["max_abs_logit_diff"] for s in steps), "tolerance": cfg.tolerance,
             "readback_diff": 0.0, "adapter_effect": effect,
             "dtype": str(save_dtype).replace("torch.", ""), "cast_logit_diff": cast_diff, "steps": steps}
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix=".readback-", dir=out.parent) as scratch:
        if original:  # the original's own tokenizer files come with it (its chat format included)
            write_original(merged, original, tmp, save_dtype, cfg.max_shard_size)
        else:
            merged.save_pretrained(tmp, safe_serialization=True, max_shard_size=cfg.max_shard_size)
            tokenizer.padding_side = "right"
            if jinja is not None:  # (the 'model' template is the tokenizer's own already)
                tokenizer.chat_template = jinja
            save_tokenizer(tokenizer, tmp)  # without the probes' padding
        readback = loadable(tmp, original, Path(scratch))
        check["readback_diff"] = _check_readback(readback, probe, reference, cfg.tolerance)
        merged_info(chain, model_spec, template, check).save(tmp)
        (tmp / "README.md").write_text(model_card(model_spec, chain, template, check, len(PROBES)), encoding="utf-8")
    log.info("merged %s into %s -> %s (max |logit diff| %.2e vs base+adapters, which changed logits by %.2e)",
             ", ".join(adapters), model_spec, out, check["max_abs_logit_diff"], check["adapter_effect"])
    return {"output": str(out), "template": template, "layout": original.family if original else "transformers",
            **{k: check[k] for k in ("max_abs_logit_diff", "adapter_effect", "tolerance", "readback_diff", "dtype",
                                     "cast_logit_diff", "steps")}}


def merged_info(chain: list[Link], base: str, template: str, check: dict) -> RunInfo:
    """The merged model's run info: the last adapter's, with the template it answers in and the merge record."""
    last = chain[-1].info
    adapters = chain[0].path if len(chain) == 1 else [link.path for link in chain]
    return dataclasses.replace(last, template=template, extra={
        **last.extra, "merged_from": {"base_model": base, "adapter": adapters}, "merge_check": check})
