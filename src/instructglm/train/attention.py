"""Attention for packed rows in low precision on a CPU: each example attends within itself only.

A packed row (``packing.py``) holds several examples, and transformers' SDPA attention takes the row
whole with a block-diagonal mask: PyTorch's CPU flash kernel then computes every example against
every other one and masks the result away, after ``repeat_kv`` has copied the shared key/value heads
once per query head (no grouped-query attention with a mask), and its backward does not use the
CPU's bf16 matrix units. Here each example's attention is two bf16 matrix products with the grouped
query heads folded into the rows (``[kv_heads, group * n, head_dim]``, so the key/value heads are
read once), a causal (and sliding-window) mask, and the softmax in fp32; the backward is four more
products from the kept probabilities, written straight into the gradients of q, k and v. With the
flash kernel, attention forward and backward were 17% of a profiled bf16 Gemma 3 270M step and 28% of
a SmolLM2-135M one (``bench/profile_train.py``; the results files show the step with this module).

transformers looks the function up by ``config._attn_implementation`` (``AttentionInterface``); the
examples' places come as the ``packed_spans`` keyword, which every model with ``**kwargs``-passing
attention hands through to it. Without spans (an unpacked batch, generation) or with attention
dropout, a logit cap or bidirectional attention it is SDPA's own forward, unchanged.
"""

from __future__ import annotations

import torch

from instructglm.train.packing import causal_allowed

NAME = "instructglm_packed"
SPANS = "packed_spans"  # the keyword the loss passes to the backbone: ((row, start, length), ...)


def spans_of(segments: torch.Tensor) -> tuple[tuple[int, int, int], ...]:
    """``(row, start, length)`` of every example in a packed batch, from ``segments`` (example id per
    token, -1 on padding; ``packing.collate_packed``)."""
    spans = []
    for row, ids in enumerate(segments.tolist()):
        start = 0
        while start < len(ids):
            end = start
            while end < len(ids) and ids[end] == ids[start]:
                end += 1
            if ids[start] >= 0:
                spans.append((row, start, end - start))
            start = end
    return tuple(spans)


def _grouped(x: torch.Tensor, kv: int) -> torch.Tensor:
    """``[heads, n, d]`` -> ``[kv, group * n, d]``: the query heads that share a key/value head, as rows."""
    heads, n, d = x.shape
    return x.reshape(kv, heads // kv * n, d)


def _ungrouped(x: torch.Tensor, heads: int) -> torch.Tensor:
    kv, rows, d = x.shape
    return x.reshape(heads, rows * kv // heads, d)


class PackedCausalAttention(torch.autograd.Function):
    """``softmax(scale q k^T + causal mask) v`` per example; q ``[rows, heads, L, d]``, k and v
    ``[rows, kv_heads, L, d]``; returns ``[rows, L, heads, d]`` (zeros where no example is)."""

    @staticmethod
    @torch.autocast("cpu", enabled=False)  # the dtypes are the ones written here
    def forward(ctx, q, k, v, spans, scale, window):
        rows, heads, length, d = q.shape
        kv, acc = k.shape[1], torch.promote_types(q.dtype, torch.float32)  # softmax in fp32 (fp64 stays)
        out = q.new_zeros(rows, length, heads, v.shape[-1])
        probs = []
        for row, start, n in spans:
            qs, ks, vs = (t[row, :, start:start + n] for t in (q, k, v))
            scores = torch.matmul(_grouped(qs, kv), ks.transpose(1, 2)).to(acc).mul_(scale)
            hidden = ~causal_allowed(n, window, q.device)
            scores = scores.view(kv, heads // kv, n, n).masked_fill_(hidden, float("-inf"))
            p = torch.softmax(scores, dim=-1).to(q.dtype).view(kv, -1, n)
            out[row, start:start + n] = _ungrouped(torch.matmul(p, vs), heads).transpose(0, 1)
            probs.append(p)
        ctx.save_for_backward(q, k, v, *probs)
        ctx.spans, ctx.scale = spans, scale
        return out

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, grad_out):
        q, k, v, *probs = ctx.saved_tensors
        heads, kv, acc = q.shape[1], k.shape[1], torch.promote_types(q.dtype, torch.float32)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for (row, start, n), p in zip(ctx.spans, probs):
            qs, ks, vs = (t[row, :, start:start + n] for t in (q, k, v))
            go = _grouped(grad_out[row, start:start + n].transpose(0, 1), kv)  # [kv, group * n, d]
            dv[row, :, start:start + n] = torch.matmul(p.transpose(1, 2), go)
            dp = torch.matmul(go, vs.transpose(1, 2)).to(acc)
            pf = p.to(acc)
            ds = pf.mul_(dp.sub_((pf * dp).sum(-1, keepdim=True))).mul_(ctx.scale).to(q.dtype)
            dq[row, :, start:start + n] = _ungrouped(torch.matmul(ds, ks), heads)
            dk[row, :, start:start + n] = torch.matmul(ds.transpose(1, 2), _grouped(qs, kv))
        return dq, dk, dv, None, None, None


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     sliding_window=None, softcap=None, **kwargs):
    """transformers' attention-function signature; SDPA's forward when it cannot serve the call."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    spans = kwargs.pop(SPANS, None)
    causal = kwargs.get("is_causal", getattr(module, "is_causal", True)) is not False  # not an encoder's
    if spans is None or not causal or dropout or softcap is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, sliding_window=sliding_window, softcap=softcap, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return PackedCausalAttention.apply(query, key, value, spans, scale, sliding_window), None


def use_packed_attention(model) -> bool:
    """Switch ``model`` (a base ``*ForCausalLM`` computing in bf16 on a CPU) from SDPA to
    :func:`packed_attention`; returns whether it did (only models that use SDPA through transformers'
    attention interface)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa" or not getattr(model, "_supports_attention_backend",
                                                                                False):
        return False
    AttentionInterface.register(NAME, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # unpacked batches: the masks SDPA would get
    model.set_attn_implementation(NAME)
    return True
