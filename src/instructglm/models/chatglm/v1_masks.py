"""ChatGLM-6B (v1) position ids and its prefix-LM attention mask, as pure tensor functions.

GLM lays an example out as ``context … [gMASK] … <sop> answer … <eop>``:

* the *context* is every token before the first ``<sop>`` (the config's ``bos_token_id``); it is
  attended bidirectionally by every token of the example, while ``<sop>`` and everything after it
  is causal (the original builds ``tril`` and then opens the columns before ``<sop>``);
* positions are 2-D: the first id counts tokens in the context and then stays at the position of
  the mask token (``[gMASK]`` if present, else ``[MASK]``) for the whole answer; the second (block)
  id is 0 in the context and counts 1, 2, … from ``<sop>`` on;
* without ``<sop>`` the whole example is context (what the original tokenizer's padding path
  produces), and without a mask token the first id is just 0, 1, 2, …

A row may hold several packed examples (*segments*): each gets its own layout and attends only to
itself. Pads (``valid`` false) get positions (0, 0) and are attended by nobody.
"""

from __future__ import annotations

import torch


def example_layout(ids: list[int], bos: int, mask: int, gmask: int) -> tuple[list[int], list[int], int]:
    """``(positions, block positions, context length)`` of one example's token ids."""
    n = len(ids)
    ctx = ids.index(bos) if bos in ids else n
    pos = list(range(n))
    # The model-side rule of the original: [gMASK] wins over [MASK] when both occur.
    mark = gmask if gmask in ids else (mask if mask in ids else None)
    if mark is not None:
        at = ids.index(mark)
        pos[ctx:] = [at] * (n - ctx)
    block = [0] * ctx + list(range(1, n - ctx + 1))
    return pos, block, ctx


def segments_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """Packed rows number each example's tokens from 0: a new example starts wherever a 0 is."""
    return torch.cumsum((position_ids == 0).long(), dim=-1)


def glm_layout(input_ids: torch.Tensor, valid: torch.Tensor, segments: torch.Tensor | None, bos: int,
               mask: int, gmask: int) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D position ids ``[b, 2, s]`` and the context flags ``[b, s]`` for a (padded, packed) batch."""
    b, s = input_ids.shape
    pos = torch.zeros(b, 2, s, dtype=torch.long)
    ctx = torch.zeros(b, s, dtype=torch.bool)
    ids_rows, valid_rows = input_ids.tolist(), valid.tolist()
    seg_rows = segments.tolist() if segments is not None else [[0] * s] * b
    for r in range(b):
        groups: dict[int, list[int]] = {}
        for j in range(s):
            if valid_rows[r][j]:
                groups.setdefault(seg_rows[r][j], []).append(j)
        for cols in groups.values():
            p, blk, c = example_layout([ids_rows[r][j] for j in cols], bos, mask, gmask)
            index = torch.tensor(cols)
            pos[r, 0, index] = torch.tensor(p)
            pos[r, 1, index] = torch.tensor(blk)
            ctx[r, index[:c]] = True
    return pos.to(input_ids.device), ctx.to(input_ids.device)


def allowed_from_4d(mask4d: torch.Tensor) -> torch.Tensor:
    """A transformers 4-D mask (bool: True may attend; float: 0 may attend) as booleans."""
    if mask4d.dtype == torch.bool:
        return mask4d
    return mask4d > torch.finfo(mask4d.dtype).min / 2


def allowed_mask(context: torch.Tensor, segments: torch.Tensor | None, key_valid: torch.Tensor, past_len: int,
                 given: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean ``[b, 1, q, past_len + q]``: which keys each new token may attend to.

    Keys before ``past_len`` come from the cache (earlier tokens, or a PEFT prefix) and are visible
    to every new token. A caller's own 4-D mask (``given``, e.g. the block-diagonal causal mask of
    packed training) is widened by the context columns of the same example, which is exactly the
    prefix-LM mask; it is otherwise taken as is.
    """
    b, q = context.shape
    k_len = past_len + q
    dev = context.device
    q_abs = torch.arange(q, device=dev) + past_len
    k_abs = torch.arange(k_len, device=dev)
    causal = (k_abs[None, :] <= q_abs[:, None])[None]
    ctx_cols = torch.zeros(b, k_len, dtype=torch.bool, device=dev)
    ctx_cols[:, past_len:] = context
    if segments is None:
        same = torch.ones(b, q, k_len, dtype=torch.bool, device=dev)
    else:
        seg_k = torch.full((b, k_len), -1, dtype=segments.dtype, device=dev)
        seg_k[:, past_len:] = segments
        same = (segments[:, :, None] == seg_k[:, None, :]) | (k_abs < past_len)[None, None]
    bidir = ctx_cols[:, None, :] & same
    if given is not None:
        return allowed_from_4d(given) | bidir[:, None]
    allowed = key_valid[:, None, :] & same & (causal | bidir)
    return allowed[:, None]
