import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ARCHS
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
