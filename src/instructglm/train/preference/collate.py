"""Tokenized preference rows -> one batch holding every answer, so chosen and rejected share one forward.

A micro-batch of ``B`` pairs becomes ``2B`` sequences, prompt + answer: the chosen ones first, then
the rejected ones in the same order (KTO: one sequence per completion; a pair gives a desirable and
an undesirable one). The sequences are packed padding-free like SFT rows
(:func:`instructglm.train.packing.collate_packed`; ``segments`` says which sequence each token is
in) or right-padded (``seq`` per row). Only the answers' tokens are labelled.
"""

from __future__ import annotations

import torch

from instructglm.constants import IGNORE_INDEX
from instructglm.train.data import make_batch

PAIR = -1  # the ``label`` of a pair row (KTO rows: 1 desirable, 0 undesirable)


def sequences(columns: dict, kto: bool) -> tuple[list[list[int]], list[list[int]], list[bool], list[tuple[int, int]]]:
    """``(ids, labels, desirable, origin)`` per sequence; ``origin`` is ``(row, 0 chosen | 1 rejected)``."""
    picks: list[tuple[int, int, bool]] = []
    rows = range(len(columns["prompt_ids"]))
    if not kto:
        picks = [(i, 0, True) for i in rows] + [(i, 1, False) for i in rows]
    else:
        for i in rows:
            label = columns["label"][i]
            picks += [(i, 0, True), (i, 1, False)] if label == PAIR else [(i, 0, bool(label))]
    ids, labels = [], []
    for i, side, _ in picks:
        prompt = columns["prompt_ids"][i]
        name = "chosen" if side == 0 else "rejected"
        ids.append(list(prompt) + list(columns[f"{name}_ids"][i]))
        labels.append([IGNORE_INDEX] * len(prompt) + list(columns[f"{name}_labels"][i]))
    return ids, labels, [d for _, _, d in picks], [(i, side) for i, side, _ in picks]


def collate_sequences(columns: dict, pad_id: int, pack_length: int | None, kto: bool = False,
                      reference: torch.Tensor | None = None) -> dict:
    """The batch for :func:`instructglm.train.preference.forward.PreferenceForward`; ``reference``: the
    rows' precomputed reference log-probs ``[rows, 2]`` (chosen, rejected)."""
    ids, labels, desirable, origin = sequences(columns, kto)
    batch = make_batch({"input_ids": ids, "labels": labels}, pad_id, pack_length)
    if "segments" not in batch:
        batch["seq"] = torch.arange(len(ids))
    batch["desirable"] = torch.tensor(desirable, dtype=torch.bool)
    batch["origin"] = torch.tensor(origin, dtype=torch.long).reshape(-1, 2)
    if reference is not None:
        batch["ref_logps"] = torch.stack([reference[i, side] for i, side in origin]).float()
    return batch


def sequence_count(batch: dict) -> int:
    return int(batch["desirable"].numel())


def loss_units(columns: dict, kto: bool) -> int:
    """What a micro-batch's loss is averaged over: pairs, or (KTO) completions."""
    if not kto:
        return len(columns["prompt_ids"])
    return sum(2 if label == PAIR else 1 for label in columns["label"])
