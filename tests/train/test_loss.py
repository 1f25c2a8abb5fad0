import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny import ARCHS
from instructglm.train.loss import causal_lm_loss_sum


def _batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # a right-padded row
    labels = ids.clone()
    labels[:, :5] = -100  # prompt
    labels[mask == 0] = -100
    return ids, mask, labels


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_on_trained_positions_equals_transformers_loss(arch, tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models(arch), dtype=torch.float32)
    ids, mask, labels = _batch(model.config.vocab_size)
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    total, n = causal_lm_loss_sum(model, ids, labels, mask, chunk_size=4)  # several recomputed chunks
    assert n == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(total / n, expected, rtol=1e-5, atol=1e-5)


def test_gradients_match_transformers_loss(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models("gemma3"), dtype=torch.float32)
    ids, mask, labels = _batch(model.config.vocab_size, seed=1)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    total, n = causal_lm_loss_sum(model, ids, labels, mask, chunk_size=5)
    (total / n).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[k], rtol=1e-4, atol=1e-6, msg=k)


def test_softcapping_is_applied(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models("gemma3"), dtype=torch.float32)
    model.config.final_logit_softcapping = 0.5  # strong cap: a missed tanh changes the loss a lot
    ids, mask, labels = _batch(model.config.vocab_size, seed=2)
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    total, n = causal_lm_loss_sum(model, ids, labels, mask)
    torch.testing.assert_close(total / n, expected, rtol=1e-5, atol=1e-5)


def _reference_head_ce(h, w, b, t, softcap, scale):
    logits = torch.nn.functional.linear(h, w, b).float()
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, t, reduction="sum")


@pytest.mark.parametrize("softcap,scale,with_bias", [(None, None, False), (2.0, None, True), (None, 0.3, True),
                                                     (1.5, 1.7, False)])
@pytest.mark.parametrize("chunk", [3, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # fp32 takes the preallocated-buffer path
def test_linear_cross_entropy_value_and_gradients(softcap, scale, with_bias, chunk, dtype):
    from instructglm.train.loss import LinearCrossEntropy

    g = torch.Generator().manual_seed(0)
    h = torch.randn(11, 8, generator=g, dtype=dtype)
    w = torch.randn(50, 8, generator=g, dtype=dtype)
    b = torch.randn(50, generator=g, dtype=dtype) if with_bias else None
    t = torch.randint(0, 50, (11,), generator=g)
    leaves = [x.clone().requires_grad_() for x in (h, w) + ((b,) if with_bias else ())]
    expected = _reference_head_ce(*leaves[:2], leaves[2] if with_bias else None, t, softcap, scale)
    (expected * 0.7).backward()  # an incoming gradient other than 1 must scale the kept gradients
    mine = [x.clone().requires_grad_() for x in (h, w) + ((b,) if with_bias else ())]
    total = LinearCrossEntropy.apply(*mine[:2], mine[2] if with_bias else None, t, softcap, scale, chunk)
    (total * 0.7).backward()
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(total.double(), expected.double(), rtol=tol, atol=tol)
    for a, e in zip(mine, leaves):
        torch.testing.assert_close(a.grad, e.grad, rtol=tol, atol=tol)


def test_linear_cross_entropy_frozen_head_low_precision_and_no_grad():
    """LoRA's case: head frozen (no weight gradient is made), bf16 weights; and eval under no_grad."""
    from instructglm.train.loss import LinearCrossEntropy

    g = torch.Generator().manual_seed(1)
    h = torch.randn(9, 16, generator=g).bfloat16().requires_grad_()
    w = torch.randn(40, 16, generator=g).bfloat16()
    t = torch.randint(0, 40, (9,), generator=g)
    h_ref = h.detach().clone().requires_grad_()
    expected = _reference_head_ce(h_ref, w, None, t, None, None)
    expected.backward()
    total = LinearCrossEntropy.apply(h, w, None, t, None, None, 4)
    total.backward()
    assert w.grad is None and h.grad.dtype == torch.bfloat16
    torch.testing.assert_close(total, expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(h.grad.float(), h_ref.grad.float(), rtol=5e-2, atol=5e-2)
    with torch.no_grad():
        again = LinearCrossEntropy.apply(h, w, None, t, None, None, 4)
    assert not again.requires_grad
    torch.testing.assert_close(again, total)
