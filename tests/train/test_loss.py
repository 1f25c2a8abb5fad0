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


def _bf16_case(seed, rows=13, hidden=16, vocab=300, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(rows, hidden, generator=g) * spread).bfloat16()
    w = torch.randn(vocab, hidden, generator=g).bfloat16()
    b = torch.randn(vocab, generator=g).bfloat16()
    t = torch.randint(0, vocab, (rows,), generator=g)
    return h, w, b, t


def _float64_reference(h, w, b, t):
    """Cross-entropy of the bf16-rounded logits (what any bf16 head computes), in float64."""
    leaves = [x.detach().double().requires_grad_() for x in (h, w) + (() if b is None else (b,))]
    logits = torch.nn.functional.linear(*leaves[:2], leaves[2] if b is not None else None)
    logits = logits + (logits.detach().to(h.dtype).double() - logits.detach())  # bf16 rounding, identity gradient
    loss = torch.nn.functional.cross_entropy(logits, t, reduction="sum")
    loss.backward()
    return loss, [x.grad for x in leaves]


@pytest.mark.parametrize("with_bias,train_head", [(False, False), (True, True)])
@pytest.mark.parametrize("autocast", [False, True])
def test_bf16_head_softmax_path_matches_float64(with_bias, train_head, autocast):
    """The bf16 head (softmax straight from bf16 logits, ``bf16_chunk_``): loss within 2^-9 per token of
    the float64 cross-entropy of the same bf16 logits, gradients within bf16 rounding; under a bf16
    autocast too, with fp32 inputs (trainable head weight and bias: full fine-tuning)."""
    from instructglm.train.loss import LinearCrossEntropy, bf16_head

    h, w, b, t = _bf16_case(3)
    b = b if with_bias else None
    expected, grads = _float64_reference(h, w, b, t)
    dtype = torch.float32 if autocast else torch.bfloat16
    mine = [x.to(dtype).requires_grad_(i == 0 or train_head) for i, x in enumerate((h, w) + ((b,) if with_bias else ()))]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        assert bf16_head(mine[0], mine[1], None, None)
        total = LinearCrossEntropy.apply(*mine[:2], mine[2] if with_bias else None, t, None, None, 5)
    (total * 0.5).backward()
    assert abs(total.item() - expected.item()) < 2**-9 * len(t) * 4
    for mine_x, ref in zip(mine, grads):
        if mine_x.requires_grad:
            assert mine_x.grad.dtype == mine_x.dtype
            torch.testing.assert_close(mine_x.grad.double(), ref * 0.5, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))


def test_bf16_head_target_too_improbable_for_bf16_keeps_its_loss():
    """A target whose probability is below bf16's range (a logit gap of hundreds) still gets its exact
    loss from the logits rather than -log(0) = inf."""
    from instructglm.train.loss import LinearCrossEntropy

    h, w, _, t = _bf16_case(4, rows=6, spread=60.0)  # logits in the hundreds: most targets are hopeless
    expected, (grad_h, _) = _float64_reference(h, w, None, t)
    assert expected.item() > 500
    x = h.clone().requires_grad_()
    total = LinearCrossEntropy.apply(x, w, None, t, None, None, 4)
    total.backward()
    assert torch.isfinite(total)
    assert total.item() == pytest.approx(expected.item(), rel=1e-2)
    torch.testing.assert_close(x.grad.double(), grad_h, rtol=2e-2, atol=2e-2 * float(grad_h.abs().max()))


def test_capped_or_scaled_bf16_head_keeps_the_fp32_softmax():
    from instructglm.train.loss import bf16_head

    h, w, _, _ = _bf16_case(5)
    assert bf16_head(h, w, None, None)
    assert not bf16_head(h, w, 30.0, None) and not bf16_head(h, w, None, 0.5)
    assert not bf16_head(h.float(), w.float(), None, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bf16_head(h.float(), w.float(), None, None)


def test_bf16_head_keeps_the_gradient_of_a_confident_target():
    """Targets the model already predicts with p between 0.999 and 0.9999: bf16 rounds such a p to 1, so
    ``p - 1`` taken from it would be 0 while the other entries keep theirs. The target's entry must
    stay ``-(1 - p)``."""
    from instructglm.train.loss import LinearCrossEntropy

    vocab = 64
    w = torch.eye(vocab).bfloat16()  # logits = hidden states
    t = torch.tensor([3, 17, 40, 63])
    p_wanted = torch.tensor([0.999, 0.9995, 0.9998, 0.9999], dtype=torch.float64)
    margin = torch.log(p_wanted * (vocab - 1) / (1 - p_wanted))  # target logit over the others' 0
    h = torch.zeros(len(t), vocab)
    h[torch.arange(len(t)), t] = margin.float()
    h = h.bfloat16()
    expected, (grad_h, _) = _float64_reference(h, w, None, t)
    assert (grad_h[torch.arange(len(t)), t] < -5e-5).all()  # what a rounded p_t = 1 would zero
    x = h.clone().requires_grad_()
    total = LinearCrossEntropy.apply(x, w, None, t, None, None, 3)
    total.backward()
    assert total.item() == pytest.approx(expected.item(), rel=1e-2)
    torch.testing.assert_close(x.grad.double(), grad_h, rtol=2e-2, atol=1e-7)
