"""Padding-free packing: the examples of a micro-batch share rows, and none sees another.

A micro-batch keeps its examples (so the loss per step is the same as without packing); they are
laid end to end into as few rows as fit in ``pack_length`` tokens (first fit, longest first), each
example with its own position ids starting at 0. Attention gets a block-diagonal causal mask, so
no example attends to another — built per model as transformers expects it: a boolean 4-D mask
for SDPA, an additive float mask for eager attention, and one mask per attention type (full and
sliding window) for models that mix them, such as Gemma 3. Labels at the first token of every
example are IGNORE_INDEX, so no example is trained to predict the start of the next one.

Why rows of bounded length rather than one long row: attention over a row costs its length
squared, so one row of 8 x 187 tokens would spend more on masked-out attention than padding wastes.
"""

from __future__ import annotations

from instructglm.constants import IGNORE_INDEX


def plan_rows(lengths: list[int], pack_length: int) -> list[list[int]]:
    """Group example indices into rows of at most ``pack_length`` tokens (first fit, longest first).
    An example longer than ``pack_length`` gets a row of its own."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(pack_length - lengths[i])
    return rows


def collate_packed(columns: dict, pad_id: int, pack_length: int = 512) -> dict:
    """A packed micro-batch: ``input_ids``, ``labels``, ``position_ids`` and ``segments`` (example id
    per token, -1 on padding; the attention mask is made from it by :func:`attention_mask_for`)."""
    import torch

    ids_list, labels_list = columns["input_ids"], columns["labels"]
    lengths = [len(x) for x in ids_list]
    rows = plan_rows(lengths, max(pack_length, max(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = lengths[i]
            ids[r, at:at + n] = torch.as_tensor(ids_list[i])
            labels[r, at:at + n] = torch.as_tensor(labels_list[i])
            labels[r, at] = IGNORE_INDEX
            positions[r, at:at + n] = torch.arange(n)
            segments[r, at:at + n] = i
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "segments": segments,
            "attention_mask": (segments >= 0).long()}


def causal_allowed(length: int, window: int | None, device=None):
    """[L, L] boolean: query i may see key j, j not in the future (and within the sliding window)."""
    import torch

    pos = torch.arange(length, device=device)
    allowed = pos[None, :] <= pos[:, None]
    if window:
        allowed &= pos[:, None] - pos[None, :] < window
    return allowed


def _allowed(segments, window: int | None):
    """[rows, 1, L, L] boolean: same example and not in the future (and within the window)."""
    import torch

    length = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]
    allowed = same & causal_allowed(length, window, segments.device)[None] & (segments[:, :, None] >= 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)[None]  # padding sees itself: no NaN
    return allowed[:, None]


def attention_mask_for(model_config, segments, dtype):
    """The attention mask a transformers model takes for a packed batch (see module docstring)."""
    import torch

    impl = getattr(model_config, "_attn_implementation", None) or "sdpa"
    if impl.startswith("flash"):
        return None  # flash-attention kernels find the examples from position_ids (varlen)

    def fmt(allowed):
        if impl == "eager":
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min)
        return allowed

    full = fmt(_allowed(segments, None))
    window = getattr(model_config, "sliding_window", None)
    if window and "sliding_attention" in (getattr(model_config, "layer_types", None) or []):
        return {"full_attention": full, "sliding_attention": fmt(_allowed(segments, window))}
    return full
