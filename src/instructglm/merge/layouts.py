"""The layout a merged model is written in: the one its base was read in, or transformers' own.

A ChatGLM checkpoint is loaded natively (:mod:`instructglm.models.chatglm`), but users keep the
original layout on disk, where the official code, other tools and our own loader all read it:

* ChatGLM-6B (v1): our model class already uses the official tensor names, so the merged weights
  are saved as they are, next to the original's config, tokenizer and remote-code files. v1 has no
  transformers-native architecture, so ``--layout native`` is refused.
* ChatGLM2/3 and GLM-4: the merged ``glm`` weights are renamed back into the remote-code names
  (:func:`~instructglm.models.chatglm.write_chatglm_checkpoint`) by default; ``--layout native``
  writes transformers' ``glm`` directory instead.

Every other model has one layout, transformers', whatever ``--layout`` says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from instructglm.errors import UserError

LAYOUT_CHOICES = ("original", "native")


@dataclass(frozen=True)
class Original:
    """Where a base model's original layout comes from: ``family`` and the checkpoint directory."""

    family: str  # "chatglm-6b" or "chatglm2" (ChatGLM2/3 and GLM-4 share the remote-code layout)
    source: Path


def original_of(path: str) -> Original | None:
    """The original layout of the resolved base model directory ``path``; None when it has only one."""
    from instructglm.models.chatglm import chatglm_source, is_chatglm_v1_dir

    if not Path(path).is_dir():
        return None  # a hub id: loaded by transformers, written by transformers
    if is_chatglm_v1_dir(path):
        return Original("chatglm-6b", Path(path))
    info = chatglm_source(path)
    if info is None:
        return None
    source = Path(info["source"])
    if not (source / "config.json").is_file():
        raise UserError(f"{path}: converted from {source}, which is gone; merge --layout native, or restore it")
    return Original("chatglm2", source)


def check_layout(layout: str, original: Original | None) -> Original | None:
    """What to write the original layout from (None: transformers' layout); refuses what cannot be."""
    if layout not in LAYOUT_CHOICES:
        raise UserError(f"--layout {layout}: choose one of {', '.join(LAYOUT_CHOICES)}")
    if original and original.family == "chatglm-6b" and layout == "native":
        raise UserError("--layout native: ChatGLM-6B (v1) has no architecture in transformers; its merged "
                        "model is written in the original layout, which instructglm and the official code load")
    return original if layout == "original" else None


def write_original(model, original: Original, folder: Path, dtype, max_shard_size: str) -> None:
    """``model`` (merged, already in ``dtype``) as a checkpoint in ``original``'s layout in ``folder``."""
    from instructglm.models.chatglm import copy_side_files, write_chatglm_checkpoint

    if original.family == "chatglm-6b":
        model.save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)
        copy_side_files(original.source, folder)  # the official config.json replaces the saved one
    else:
        write_chatglm_checkpoint(model.state_dict(), original.source, folder, dtype=None)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["torch_dtype"] = str(dtype).replace("torch.", "")  # true to the weights, e.g. after --dtype
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def loadable(folder: Path, original: Original | None, scratch: Path) -> str:
    """A directory the loader reads ``folder`` from, for the read-back check. A ChatGLM2/3/GLM-4
    checkpoint is converted into ``scratch`` rather than the model cache: ``folder`` is a temporary
    name that would leave a stale cache entry behind."""
    if original is None or original.family == "chatglm-6b":
        return str(folder)
    from instructglm.models.chatglm import convert_chatglm2

    return str(convert_chatglm2(folder, scratch))
