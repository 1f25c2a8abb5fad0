"""The preference loss module: policy and reference log-probs of a batch, then the stage's loss.

The reference costs nothing extra for adapter methods (LoRA, P-Tuning): it is the same model with
its adapters switched off, run under ``no_grad``. Freeze and full fine-tuning get a frozen copy made
before training (kept outside the module's parameters, so DDP/FSDP and checkpoints never see it), or
no reference at all when its log-probs were precomputed (``ref_logps`` in the batch).
"""

from __future__ import annotations

import torch

from instructglm.train.loss import LossForward, compute_context
from instructglm.train.preference.collate import sequence_count
from instructglm.train.preference.logprobs import sequence_logps
from instructglm.train.preference.losses import stage_losses
from instructglm.train.preference.options import REFERENCE_FREE

ADAPTER = "adapter"  # the reference is the model with its adapters disabled


def reference_logps(model, method, reference, batch: dict) -> torch.Tensor:
    """Per-sequence summed log-probs under the reference (no gradient)."""
    n = sequence_count(batch)
    with torch.no_grad():
        if reference == ADAPTER:
            with model.disable_adapter():
                return sequence_logps(model, batch, n, method)[0]
        return sequence_logps(reference, batch, n)[0]


class PreferenceForward(LossForward):
    """``forward(**batch)`` -> per loss unit (pair or KTO completion): ``losses``, ``rewards_chosen``,
    ``rewards_rejected``, ``logps_chosen``, ``logps_rejected`` (summed log-probs)."""

    def __init__(self, model, method, stage: str, options, reference=None):
        super().__init__(model, method)
        self.stage, self.options = stage, options
        self.__dict__["reference"] = reference  # not a submodule: no gradients, no checkpoint, no sharding

    def forward(self, **batch):
        with compute_context(self.model):
            return self._forward(batch)

    def _forward(self, batch: dict) -> dict:
        n = sequence_count(batch)
        ref = batch.get("ref_logps")
        if ref is None and self.stage not in REFERENCE_FREE:  # first: its working memory is freed before
            ref = reference_logps(self.model, self.method, self.reference, batch)  # the policy's graph exists
        logps, tokens = sequence_logps(self.model, batch, n, self.method)
        mean = logps / tokens.clamp(min=1)
        if self.stage == "kto":
            lp = {"chosen": logps, "ref_chosen": ref, "chosen_mean": mean, "desirable": batch["desirable"]}
        else:
            b = n // 2
            lp = {"chosen": logps[:b], "rejected": logps[b:], "chosen_mean": mean[:b], "rejected_mean": mean[b:]}
            if ref is not None:
                ref_mean = ref / tokens.clamp(min=1)
                lp.update(ref_chosen=ref[:b], ref_rejected=ref[b:], ref_chosen_mean=ref_mean[:b],
                          ref_rejected_mean=ref_mean[b:])
        losses, chosen_rewards, rejected_rewards = stage_losses(self.stage, self.options, lp)
        if self.stage == "kto":
            desirable = batch["desirable"]
            nan = torch.full_like(logps, float("nan"))
            chosen_lp, rejected_lp = torch.where(desirable, logps, nan), torch.where(desirable, nan, logps)
        else:
            chosen_lp, rejected_lp = lp["chosen"], lp["rejected"]
        return {"losses": losses, "rewards_chosen": chosen_rewards, "rewards_rejected": rejected_rewards,
                "logps_chosen": chosen_lp.detach(), "logps_rejected": rejected_lp.detach()}
