"""Each preference loss against a reference written here from the papers' formulas, on fixed log-probs.

The references use plain Python floats and ``math`` (no torch), so they share no code with the losses.
"""

from __future__ import annotations

import math

import pytest
import torch

from instructglm.train.preference.losses import dpo_loss, kto_loss, orpo_loss, simpo_loss, stage_losses
from instructglm.train.preference.options import PreferenceOptions

CHOSEN = [-12.0, -30.5, -4.25, -18.0]
REJECTED = [-15.0, -29.0, -9.5, -18.0]
REF_CHOSEN = [-13.0, -31.0, -5.0, -17.5]
REF_REJECTED = [-14.0, -30.0, -8.0, -18.5]
LEN_CHOSEN = [4, 10, 2, 6]
LEN_REJECTED = [5, 9, 7, 6]


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def close(actual, expected):
    assert torch.allclose(actual, t(expected), rtol=1e-9, atol=1e-12), (actual.tolist(), expected)


@pytest.mark.parametrize("beta, smoothing", [(0.1, 0.0), (0.5, 0.2)])
def test_dpo_sigmoid(beta, smoothing):
    expected, rewards_c, rewards_r = [], [], []
    for c, r, rc, rr in zip(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED):
        logits = beta * ((c - rc) - (r - rr))
        expected.append(-(1 - smoothing) * log_sigmoid(logits) - smoothing * log_sigmoid(-logits))
        rewards_c.append(beta * (c - rc))
        rewards_r.append(beta * (r - rr))
    losses, chosen, rejected = dpo_loss(t(CHOSEN), t(REJECTED), t(REF_CHOSEN), t(REF_REJECTED), beta, smoothing)
    close(losses, expected)
    close(chosen, rewards_c)
    close(rejected, rewards_r)


def test_hinge():
    beta = 0.25
    h = [(c - rc) - (r - rr) for c, r, rc, rr in zip(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED)]
    close(dpo_loss(t(CHOSEN), t(REJECTED), t(REF_CHOSEN), t(REF_REJECTED), beta, kind="hinge")[0],
          [max(0.0, 1 - beta * x) for x in h])


def test_ipo_uses_length_averaged_logps():
    beta = 0.25
    expected, rewards_c = [], []
    for c, r, rc, rr, lc, lr in zip(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, LEN_CHOSEN, LEN_REJECTED):
        h = (c / lc - rc / lc) - (r / lr - rr / lr)  # each answer's log-ratio per token
        expected.append((h - 1 / (2 * beta)) ** 2)
        rewards_c.append(beta * (c - rc) / lc)
    lc, lr = t(LEN_CHOSEN), t(LEN_REJECTED)
    lp = {"chosen": t(CHOSEN), "rejected": t(REJECTED), "ref_chosen": t(REF_CHOSEN), "ref_rejected": t(REF_REJECTED),
          "chosen_mean": t(CHOSEN) / lc, "rejected_mean": t(REJECTED) / lr,
          "ref_chosen_mean": t(REF_CHOSEN) / lc, "ref_rejected_mean": t(REF_REJECTED) / lr}
    losses, chosen, _ = stage_losses("dpo", PreferenceOptions(beta=beta, dpo_loss="ipo"), lp)
    close(losses, expected)
    close(chosen, rewards_c)
    summed = [((c - rc) - (r - rr) - 1 / (2 * beta)) ** 2 for c, r, rc, rr in zip(CHOSEN, REJECTED, REF_CHOSEN,
                                                                                   REF_REJECTED)]
    assert max(abs(a - b) for a, b in zip(losses.tolist(), summed)) > 1  # not the summed-log-prob form


def test_dpo_is_ln2_with_zero_rewards_when_policy_is_reference():
    losses, chosen, rejected = dpo_loss(t(CHOSEN), t(REJECTED), t(CHOSEN), t(REJECTED), 0.1)
    close(losses, [math.log(2)] * 4)
    close(chosen, [0.0] * 4)
    close(rejected, [0.0] * 4)


def test_orpo():
    beta = 0.2
    expected = []
    for c, r, lc, lr in zip(CHOSEN, REJECTED, LEN_CHOSEN, LEN_REJECTED):
        mc, mr = c / lc, r / lr
        odds = math.log(math.exp(mc) / (1 - math.exp(mc))) - math.log(math.exp(mr) / (1 - math.exp(mr)))
        expected.append(-mc - beta * log_sigmoid(odds))
    losses, chosen, _ = orpo_loss(t(CHOSEN) / t(LEN_CHOSEN), t(REJECTED) / t(LEN_REJECTED), beta)
    close(losses, expected)
    close(chosen, [beta * c / n for c, n in zip(CHOSEN, LEN_CHOSEN)])


def test_simpo_is_length_normalised():
    beta, gamma = 2.0, 0.5
    expected = [-log_sigmoid(beta * (c / lc - r / lr) - gamma)
                for c, r, lc, lr in zip(CHOSEN, REJECTED, LEN_CHOSEN, LEN_REJECTED)]
    close(simpo_loss(t(CHOSEN) / t(LEN_CHOSEN), t(REJECTED) / t(LEN_REJECTED), beta, gamma)[0], expected)


def test_kto():
    beta, wd, wu = 0.1, 1.0, 1.5
    logps, ref = CHOSEN + REJECTED, REF_CHOSEN + REF_REJECTED
    desirable = [True] * 4 + [False] * 4
    ratios = [p - q for p, q in zip(logps, ref)]
    z = max(0.0, sum(ratios) / len(ratios))
    expected = [wd * (1 - sigmoid(beta * (x - z))) if d else wu * (1 - sigmoid(beta * (z - x)))
                for x, d in zip(ratios, desirable)]
    losses, chosen, rejected = kto_loss(t(logps), t(ref), torch.tensor(desirable), beta, wd, wu)
    close(losses, expected)
    assert torch.isnan(chosen[4:]).all() and torch.isnan(rejected[:4]).all()
    close(chosen[:4], [beta * x for x in ratios[:4]])


def test_kto_reference_point_is_clamped_and_not_differentiated():
    logps = t([-1.0, -2.0]).requires_grad_()
    ref = t([-5.0, -6.0])  # mean ratio 4 > 0: z = 4 is used but carries no gradient
    losses, _, _ = kto_loss(logps, ref, torch.tensor([True, False]), 1.0)
    losses.sum().backward()
    expected = [-sigmoid(0.0) * (1 - sigmoid(0.0)), sigmoid(0.0) * (1 - sigmoid(0.0))]
    close(logps.grad, expected)


def test_sft_term_adds_the_chosen_token_mean_nll():
    opts = PreferenceOptions(beta=0.1, sft_weight=0.5)
    lp = {"chosen": t(CHOSEN), "rejected": t(REJECTED), "ref_chosen": t(REF_CHOSEN), "ref_rejected": t(REF_REJECTED),
          "chosen_mean": t(CHOSEN) / t(LEN_CHOSEN), "rejected_mean": t(REJECTED) / t(LEN_REJECTED)}
    plain = stage_losses("dpo", PreferenceOptions(beta=0.1), lp)[0]
    close(stage_losses("dpo", opts, lp)[0] - plain, [-0.5 * c / n for c, n in zip(CHOSEN, LEN_CHOSEN)])
