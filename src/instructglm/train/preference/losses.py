"""Preference losses on sequence log-probabilities: DPO (sigmoid, IPO, hinge), ORPO, SimPO, KTO.

Every function takes per-example tensors and returns ``(losses, chosen_rewards, rejected_rewards)``,
one value per pair (KTO: per completion, rewards of the other kind are NaN). Inputs:

* ``chosen``/``rejected``: summed log-probabilities of each answer under the policy;
* ``ref_chosen``/``ref_rejected``: the same under the reference model (DPO, KTO);
* ``chosen_mean``/``rejected_mean`` (and ``ref_chosen_mean``/``ref_rejected_mean``): token-mean
  log-probabilities (ORPO, SimPO and IPO are length-normalised).

Formulas (``h`` is the DPO log-ratio difference ``(chosen - ref_chosen) - (rejected - ref_rejected)``):

* DPO sigmoid: ``-(1 - e) log s(beta h) - e log s(-beta h)`` (``e``: label smoothing); hinge:
  ``max(0, 1 - beta h)``; rewards ``beta (logp - ref)``. IPO: ``(h - 1 / (2 beta))^2`` with ``h`` and
  the rewards from token-mean log-probs (the IPO formulation: the target gap is per token, so the
  answers' lengths do not scale it).
* ORPO: ``-chosen_mean - beta log s(log odds(chosen) - log odds(rejected))`` with
  ``log odds(p) = m - log(1 - exp(m))`` for the token-mean log-prob ``m``; rewards ``beta m``.
* SimPO: ``-(1 - e) log s(z) - e log s(-z)``, ``z = beta (chosen_mean - rejected_mean) - gamma``; rewards ``beta m``.
* KTO: ``r = logp - ref``, ``z = max(0, mean r over the batch)`` (not back-propagated; the KTO paper's
  reference point, here estimated from the batch's own completions rather than mismatched pairs);
  desirable ``w_d (1 - s(beta (r - z)))``, undesirable ``w_u (1 - s(beta (z - r)))``; rewards ``beta r``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _smoothed(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta: float, label_smoothing: float = 0.0,
             kind: str = "sigmoid"):
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if kind == "sigmoid":
        losses = _smoothed(beta * h, label_smoothing)
    elif kind == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss {kind!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def _log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` of ``p = exp(mean_logp)``, stable near p = 1 (``log1p(-exp)`` of a value < 0)."""
    return mean_logp - torch.log1p(-torch.exp(mean_logp.clamp(max=-1e-6)))


def orpo_loss(chosen_mean, rejected_mean, beta: float):
    ratio = _log_odds(chosen_mean) - _log_odds(rejected_mean)
    losses = -chosen_mean - beta * F.logsigmoid(ratio)
    return losses, beta * chosen_mean.detach(), beta * rejected_mean.detach()


def simpo_loss(chosen_mean, rejected_mean, beta: float, gamma: float, label_smoothing: float = 0.0):
    logits = beta * (chosen_mean - rejected_mean) - gamma
    return _smoothed(logits, label_smoothing), beta * chosen_mean.detach(), beta * rejected_mean.detach()


def kto_loss(logps, ref_logps, desirable, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """``desirable``: a boolean tensor, True for desirable completions."""
    ratio = logps - ref_logps
    z = ratio.detach().mean().clamp(min=0)
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - z))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio))))
    rewards = beta * ratio.detach()
    nan = torch.full_like(rewards, float("nan"))
    return losses, torch.where(desirable, rewards, nan), torch.where(desirable, nan, rewards)


def stage_losses(stage: str, opts, lp: dict):
    """``(losses, chosen_rewards, rejected_rewards)`` of a stage from the log-probs in ``lp``
    (:func:`instructglm.train.preference.forward.preference_logps`), with the optional SFT term."""
    if stage == "dpo":
        side = "_mean" if opts.dpo_loss == "ipo" else ""  # IPO regresses a per-token gap (see above)
        out = dpo_loss(lp["chosen" + side], lp["rejected" + side], lp["ref_chosen" + side],
                       lp["ref_rejected" + side], opts.beta, opts.label_smoothing, opts.dpo_loss)
    elif stage == "orpo":
        return orpo_loss(lp["chosen_mean"], lp["rejected_mean"], opts.beta)
    elif stage == "simpo":
        out = simpo_loss(lp["chosen_mean"], lp["rejected_mean"], opts.beta, opts.gamma, opts.label_smoothing)
    elif stage == "kto":
        out = kto_loss(lp["chosen"], lp["ref_chosen"], lp["desirable"], opts.beta, opts.desirable_weight,
                       opts.undesirable_weight)
    else:
        raise ValueError(f"not a preference stage: {stage!r}")
    if opts.sft_weight:
        nll = -lp["chosen_mean"]
        if stage == "kto":  # only desirable completions are worth imitating
            nll = torch.where(lp["desirable"], nll, torch.zeros_like(nll))
        out = (out[0] + opts.sft_weight * nll, *out[1:])
    return out
