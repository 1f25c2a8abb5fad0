"""``--precompute-ref``: the reference log-probs of every row, computed once and kept beside the data.

For Freeze and full fine-tuning this drops the reference model from training (no second copy of the
weights in memory, no second forward per step); for adapter methods it saves the second forward.
The file is ``DATASET/reference-KEY.safetensors`` (``[rows, 2]``: chosen, rejected; NaN where a KTO
row has no second answer), KEY a hash of what decides the numbers: the model, template, tokenizer,
precision and the rows themselves in training order. A later run (or a resumed one) with the same
key reads it instead of computing it again; anything else computes a new file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def reference_key(recipe, data) -> str:
    h = hashlib.sha256(json.dumps({"model": str(recipe.model_path), "template": recipe.manifest.get("template"),
                                   "tokenizer": recipe.manifest.get("tokenizer"), "dtype": str(recipe.dtype),
                                   "packing": recipe.pack_length is not None}, sort_keys=True).encode())
    for batch in data.iter(batch_size=1000):
        h.update(json.dumps([batch[c] for c in ("prompt_ids", "chosen_ids", "rejected_ids", "label")]).encode())
    return h.hexdigest()[:16]


def compute_reference(recipe, reference, data):
    """``[rows, 2]`` summed log-probs of each row's answers under the reference, without gradients."""
    import torch

    from instructglm.train.preference.collate import collate_sequences
    from instructglm.train.loss import compute_context
    from instructglm.train.preference.forward import ADAPTER, reference_logps

    model = recipe.model
    device = recipe.accelerator.device
    model.to(device)
    was_training = model.training
    model.eval()
    out = torch.full((len(data), 2), float("nan"))
    size = recipe.cfg.schedule.per_device_train_batch_size
    with torch.no_grad(), compute_context(model):
        for start in range(0, len(data), size):
            batch = collate_sequences(data[start:start + size], recipe.pad_id, recipe.pack_length, kto=True)
            batch = {k: v.to(device) for k, v in batch.items()}
            if reference == ADAPTER:
                logps = reference_logps(model, recipe.method, ADAPTER, batch)
            else:
                logps = reference_logps(None, None, reference, batch)
            origin = batch["origin"].cpu()
            out[origin[:, 0] + start, origin[:, 1]] = logps.float().cpu()
    model.train(was_training)
    return out


def load_or_compute(recipe, reference, data):
    from safetensors.torch import load_file, save

    from instructglm.files import atomic_file
    from instructglm.train.data import dataset_parts

    path = Path(dataset_parts(recipe.cfg.dataset)[0]) / f"reference-{reference_key(recipe, data)}.safetensors"
    if path.is_file():
        log.info("reference log-probs: %s", path)
        return load_file(str(path))["reference"]
    log.info("computing the reference log-probs of %d rows (once; kept in %s)", len(data), path)
    table = compute_reference(recipe, reference, data)
    if recipe.main:
        with atomic_file(path, "wb") as f:
            f.write(save({"reference": table.contiguous()}))
    return table
