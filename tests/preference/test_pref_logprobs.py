"""Answer log-probs through the chunked head equal full logits; packed pairs equal padded ones."""

from __future__ import annotations

import datasets
import pytest
import torch

from instructglm.models.loading import load_model, load_tokenizer
from instructglm.train.loss import causal_lm
from instructglm.train.preference.collate import collate_sequences, sequence_count
from instructglm.train.preference.logprobs import TokenLogProbs, sequence_logps


@pytest.mark.parametrize("softcap, scale, bias", [(None, None, False), (3.0, 0.7, True)])
def test_token_logprobs_and_gradients_equal_full_logits(softcap, scale, bias):
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(50, dtype=torch.float64, requires_grad=True) if bias else None
    targets = torch.randint(0, 50, (37,))
    weights = torch.randn(37, dtype=torch.float64)

    logits = torch.nn.functional.linear(h, w, b)
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    expected = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
    grads = torch.autograd.grad((expected * weights).sum(), [h, w] + ([b] if bias else []))

    ours = TokenLogProbs.apply(h, w, b, targets, softcap, scale, 8)  # 5 chunks
    assert torch.allclose(ours.double(), expected, atol=1e-6)
    ours_grads = torch.autograd.grad((ours.double() * weights).sum(), [h, w] + ([b] if bias else []))
    for a, e in zip(ours_grads, grads):
        assert torch.allclose(a.double(), e, atol=1e-5)


def test_packed_and_padded_pairs_give_the_same_logps_and_gradients(tiny_models, pair_dataset):
    model_dir = tiny_models("llama")
    model = load_model(model_dir, dtype=torch.float32)
    pad = load_tokenizer(model_dir).pad_token_id
    rows = datasets.load_from_disk(str(pair_dataset("llama")))[:5]
    results = []
    for pack in (None, 512):
        model.zero_grad()
        batch = collate_sequences(rows, pad, pack)
        n = sequence_count(batch)
        sums, counts = sequence_logps(model, batch, n)
        (sums * torch.linspace(-1, 2, n)).sum().backward()
        results.append((sums.detach(), counts, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (a, ca, ga), (b, cb, gb) = results
    assert a.shape == (10,) and torch.equal(ca, cb) and (ca > 0).all()
    assert torch.allclose(a, b, atol=1e-4)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-4)


def test_logps_equal_the_models_own_logits(tiny_models, pair_dataset):
    model_dir = tiny_models("gemma3")  # softcapping / tied head
    model = load_model(model_dir, dtype=torch.float32)
    pad = load_tokenizer(model_dir).pad_token_id
    rows = datasets.load_from_disk(str(pair_dataset("gemma3")))[:2]
    batch = collate_sequences(rows, pad, None)
    sums, _ = sequence_logps(model, batch, 4)
    with torch.no_grad():
        logits = causal_lm(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(2, labels.clamp(min=0)[..., None])[..., 0]
    expected = (logp * (labels != -100)).sum(1)
    assert torch.allclose(sums.detach(), expected, atol=1e-4)
