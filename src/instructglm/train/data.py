"""The training rows: checked against the model's tokenizer, split for eval, and cut into micro-batches
in a deterministic order that a resumed run reproduces exactly."""

from __future__ import annotations

import functools

from instructglm.constants import IGNORE_INDEX
from instructglm.errors import UserError


def dataset_parts(spec: str) -> list[str]:
    """The directories of a ``--dataset`` value (several, comma-separated, train as one)."""
    return [d.strip() for d in spec.split(",") if d.strip()]


def check_dataset(path: str, model_name: str, tokenizer) -> dict:
    """The manifest of a tokenized dataset; refused when it is damaged (a missing or truncated file, a
    broken JSON file, changed bytes: one line naming it, instead of an error mid-training) or when
    another tokenizer than the model's made it."""
    from instructglm.models.loading import tokenizer_fingerprint
    from instructglm.tokenize import read_manifest
    from instructglm.tokenize.manifest import check_whole

    manifest = read_manifest(path)
    check_whole(path)
    if manifest.get("tokenizer") != tokenizer_fingerprint(tokenizer):
        raise UserError(f"{path}: tokenized with a different tokenizer ({manifest.get('model')}) than "
                        f"model '{model_name}'; run 'instructglm tokenize --model {model_name}' again")
    return manifest


def check_parts(parts: list[str], model_name: str, tokenizer) -> dict:
    """The manifest of the first part, once every part is checked and all share one template."""
    manifests = [check_dataset(d, model_name, tokenizer) for d in parts]
    if len({m.get("template") for m in manifests}) > 1:
        raise UserError(f"dataset: the parts {', '.join(parts)} were tokenized with different templates")
    return manifests[0]


def load_parts(parts: list[str]):
    """The rows of the (checked, :func:`check_parts`) dataset parts as one ``datasets.Dataset``; a
    dataset that still fails to load is one line naming it."""
    import datasets

    loaded = []
    for part in parts:
        try:
            loaded.append(datasets.load_from_disk(part))
        except Exception as e:  # noqa: BLE001  (pyarrow and datasets raise many kinds on damaged files)
            first = (str(e).splitlines() or [""])[0]
            raise UserError(f"{part}: damaged tokenized dataset ({type(e).__name__}: {first}); "
                            f"run 'instructglm tokenize' again") from None
    return datasets.concatenate_datasets(loaded)


def split_eval(data, val_size: float, eval_dataset: str | None, seed: int):
    """(train rows, eval rows or None) from ``val_size`` / ``eval_dataset``."""
    import datasets

    if eval_dataset:
        return data, load_parts([eval_dataset])
    if not val_size:
        return data, None
    n_eval = int(val_size) if val_size >= 1 else max(1, round(val_size * len(data)))
    if n_eval >= len(data):
        raise UserError(f"val_size: {val_size} leaves no training rows out of {len(data)}")
    # The split datasets' train_test_split(seed=seed) makes, with the indices kept in memory: that method
    # writes cache-*.arrow index files into the user's tokenized dataset directory.
    import numpy as np

    permutation = np.random.default_rng(seed).permutation(len(data))
    return (data.select(permutation[n_eval:], keep_in_memory=True),
            data.select(permutation[:n_eval], keep_in_memory=True))


@functools.lru_cache(maxsize=2)
def epoch_batches(n_rows: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """Row indices for one epoch (shuffled by seed and epoch), cut into micro-batches."""
    import torch

    if shuffle:
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    else:
        order = list(range(n_rows))
    return [order[i:i + batch_size] for i in range(0, n_rows, batch_size)]


def collate(columns: dict, pad_id: int):
    """Right-pad a micro-batch (a dict of ``input_ids`` and ``labels`` lists) to its longest row."""
    import torch

    rows = len(columns["input_ids"])
    width = max(len(x) for x in columns["input_ids"])
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for i, (x, y) in enumerate(zip(columns["input_ids"], columns["labels"])):
        ids[i, :len(x)] = torch.as_tensor(x)
        labels[i, :len(y)] = torch.as_tensor(y)
        mask[i, :len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def make_batch(columns: dict, pad_id: int, pack_length: int | None) -> dict:
    """A micro-batch on the CPU: packed into rows of ``pack_length`` tokens, or right-padded (None)."""
    from instructglm.train.packing import collate_packed

    if pack_length is not None:
        return collate_packed(columns, pad_id, pack_length)
    return collate(columns, pad_id)


def trained_tokens(batch: dict) -> int:
    """Positions whose next token is trained (what the loss is averaged over)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
