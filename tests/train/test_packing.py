import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny import ARCHS
from instructglm.train import methods
from instructglm.train.packing import collate_packed, plan_rows
from instructglm.train.data import collate
from instructglm.train.loss import batch_loss_sum


def _examples(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    cols = {"input_ids": [], "labels": []}
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        cols["input_ids"].append(ids)
        cols["labels"].append([-100] * (n // 2) + ids[n // 2:])
    return cols


def test_plan_rows_first_fit():
    assert plan_rows([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]
    assert plan_rows([10, 2], 8) == [[0], [1]]  # too long for a row: a row of its own


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_loss_and_grads_equal_unpacked(arch, impl, tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models(arch), attn_implementation=impl)
    # gemma3's tiny config has a 16-token sliding window: rows of 40 tokens exercise it
    cols = _examples(model.config.vocab_size, [40, 9, 23, 17, 30])
    lora = methods.get_method("lora")
    results = []
    for batch in (collate(cols, 0), collate_packed(cols, 0, pack_length=64)):
        model.zero_grad()
        total, n = batch_loss_sum(model, lora, batch)
        (total / n).backward()
        results.append((total.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (t1, n1, g1), (t2, n2, g2) = results
    assert n1 == n2
    torch.testing.assert_close(t2, t1, rtol=1e-5, atol=1e-4)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-6, msg=k)


def test_packing_wastes_less_than_padding():
    cols = _examples(300, [120, 10, 15, 12, 90, 8, 11, 9])
    padded, packed = collate(cols, 0), collate_packed(cols, 0, pack_length=128)
    assert packed["input_ids"].numel() < 0.6 * padded["input_ids"].numel()
    assert int(packed["attention_mask"].sum()) == int(padded["attention_mask"].sum())
