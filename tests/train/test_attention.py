"""train/attention.py: per-example attention in packed rows equals SDPA with the block-diagonal mask."""

import pytest
import torch
import torch.nn.functional as F

from instructglm.train.attention import NAME, SPANS, PackedCausalAttention, spans_of, use_packed_attention
from instructglm.train.loss import causal_lm_loss_sum
from instructglm.train.packing import _allowed, attention_mask_for, collate_packed

ROWS = [[40, 9], [25, 20], [18]]  # example lengths per packed row; the rows are padded to one width


def packed_segments(rows=ROWS, pad=3):
    width = max(sum(r) for r in rows) + pad
    segments, example = torch.full((len(rows), width), -1), 0
    for r, lengths in enumerate(rows):
        at = 0
        for n in lengths:
            segments[r, at:at + n] = example
            example, at = example + 1, at + n
    return segments


def test_spans_of_lists_each_example_and_skips_padding():
    assert spans_of(packed_segments()) == ((0, 0, 40), (0, 40, 9), (1, 0, 25), (1, 25, 20), (2, 0, 18))


def _reference(q, k, v, segments, window):
    """SDPA over whole rows with packing.py's mask (GQA by repeating the key/value heads), as [rows, L, heads, d]."""
    group = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                         attn_mask=_allowed(segments, window))
    return out.transpose(1, 2)


def _run(fn, q32, k32, v32, grad, dtype):
    q, k, v = (t.to(dtype).requires_grad_() for t in (q32, k32, v32))
    out = fn(q, k, v)
    (out.double() * grad).sum().backward()
    return [out.detach().double() * (grad != 0), q.grad.double(), k.grad.double(), v.grad.double()]


@pytest.mark.parametrize("heads, kv_heads, dim, window", [(4, 1, 32, None), (6, 3, 16, None), (4, 2, 8, 5)])
def test_matches_masked_sdpa_forward_and_backward(heads, kv_heads, dim, window):
    torch.manual_seed(0)
    segments = packed_segments()
    rows, width = segments.shape
    q, k, v = (torch.randn(rows, h, width, dim) * s for h, s in ((heads, 2), (kv_heads, 2), (kv_heads, 1)))
    grad = torch.randn(rows, width, heads, dim, dtype=torch.float64) * (segments >= 0)[:, :, None, None]
    ours = lambda q, k, v: PackedCausalAttention.apply(q, k, v, spans_of(segments), dim ** -0.5, window)  # noqa: E731
    ref = lambda q, k, v: _reference(q, k, v, segments, window)  # noqa: E731
    exact = _run(ref, q, k, v, grad, torch.float64)
    for a, b in zip(_run(ours, q, k, v, grad, torch.float64), exact):  # the same maths
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # bf16: as close to the exact values as SDPA's own bf16 kernel is (it keeps fp32 scores; these are bf16)
    for a, b, e in zip(_run(ours, q, k, v, grad, torch.bfloat16), _run(ref, q, k, v, grad, torch.bfloat16), exact):
        assert (a - e).norm() / e.norm() < 2 * (b - e).norm() / e.norm() + 1e-3


def test_an_example_attends_only_within_itself():
    """Changing one example's keys and values changes no other example's output or gradients."""
    torch.manual_seed(1)
    segments = packed_segments()
    q, k, v = torch.randn(3, 2, segments.shape[1], 8), torch.randn(3, 2, segments.shape[1], 8), torch.randn(3, 2, segments.shape[1], 8)
    spans = spans_of(segments)
    before = PackedCausalAttention.apply(q, k, v, spans, 0.3, None)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 40:49] += 5  # the second example of row 0
    v2[0, :, 40:49] -= 5
    after = PackedCausalAttention.apply(q, k2, v2, spans, 0.3, None)
    assert torch.equal(before[0, :40], after[0, :40]) and torch.equal(before[1:], after[1:])
    assert not torch.allclose(before[0, 40:49], after[0, 40:49])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_model_loss_and_gradients_equal_sdpa_with_the_block_mask(tiny_models, arch):
    """Through a real transformers model: the spans reach every layer's attention (fp32: same numbers)."""
    from instructglm.models.loading import load_model

    torch.manual_seed(0)
    model = load_model(tiny_models(arch), dtype=torch.float32)
    lengths = [12, 7, 20, 5]
    batch = collate_packed({"input_ids": [torch.randint(3, 60, (n,)).tolist() for n in lengths],
                            "labels": [torch.randint(3, 60, (n,)).tolist() for n in lengths]}, pad_id=0, pack_length=24)
    assert batch["input_ids"].shape[0] > 1  # several rows, several examples in a row

    def loss_and_grads(**attention):
        model.zero_grad()
        mask = attention_mask_for(model.config, batch["segments"], torch.float32)
        loss, n = causal_lm_loss_sum(model, batch["input_ids"], batch["labels"], mask, batch["position_ids"], **attention)
        loss.backward()
        return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    sdpa_loss, sdpa_grads = loss_and_grads()
    assert use_packed_attention(model) and model.config._attn_implementation == NAME
    calls = []
    real = PackedCausalAttention.apply
    PackedCausalAttention.apply = lambda *a: calls.append(1) or real(*a)
    try:
        loss, grads = loss_and_grads(**{SPANS: spans_of(batch["segments"])})
        unpacked_loss, _ = loss_and_grads()  # no spans: SDPA's forward, unchanged
    finally:
        PackedCausalAttention.apply = real
    assert len(calls) == model.config.num_hidden_layers
    assert loss == pytest.approx(sdpa_loss, rel=1e-6) and unpacked_loss == pytest.approx(sdpa_loss, rel=1e-6)
    assert grads.keys() == sdpa_grads.keys()
    for name, g in grads.items():
        ref = sdpa_grads[name]
        assert (g - ref).norm() <= 1e-5 * ref.norm(), name  # fp32: only the order of the sums differs


def test_calls_it_cannot_serve_go_to_sdpa_unchanged():
    """Dropout, a logit cap or bidirectional attention: SDPA's forward, with whatever mask it was given."""
    from types import SimpleNamespace

    from instructglm.train.attention import packed_attention

    torch.manual_seed(2)
    segments = packed_segments()
    q, k, v = (torch.randn(3, 2, segments.shape[1], 8) for _ in range(3))
    mask = _allowed(segments, None)
    module = SimpleNamespace(num_key_value_groups=1, is_causal=True)
    spans = spans_of(segments)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    served, _ = packed_attention(module, q, k, v, mask, **{SPANS: spans})
    examples = (segments >= 0)[:, :, None, None]  # padding: zeros here, itself under SDPA's mask
    torch.testing.assert_close(served * examples, sdpa * examples)  # same maths, ours
    bidirectional, _ = packed_attention(SimpleNamespace(num_key_value_groups=1, is_causal=False), q, k, v,
                                        torch.ones_like(mask), **{SPANS: spans})
    full = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    assert torch.allclose(bidirectional, full, atol=1e-6)  # the mask it was given, not a causal one
    torch.manual_seed(0)
    dropped, _ = packed_attention(module, q, k, v, mask, dropout=0.5, **{SPANS: spans})
    assert not torch.allclose(dropped, sdpa)  # dropout applied: SDPA's path
