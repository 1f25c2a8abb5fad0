"""Causal-LM loss computed only where it counts.

transformers' ``ForCausalLM.forward`` projects *every* position onto the vocabulary and then
throws most of it away: in instruction tuning the prompt positions carry label -100. With the
262k-token vocabulary of Gemma 3 the LM head is about half of all FLOPs and most of the
activation memory. Here the backbone runs as usual, then only the hidden states whose next
token is trained go through the LM head, in chunks that are recomputed in the backward pass, so
the full ``[tokens, vocab]`` logits tensor never exists. The result equals the model's own
token-mean cross-entropy (tested against ``model(labels=...)`` for every supported family).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _causal_lm(model):
    """The ``*ForCausalLM`` module under PEFT / DDP wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        else:
            return model


def _head_ce_sum(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias, softcap, scale):
    logits = F.linear(hidden, weight, bias).float()
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def causal_lm_loss_sum(model, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask=None,
                       position_ids=None, chunk_size: int = 2048) -> tuple[torch.Tensor, int]:
    """Return ``(sum of token cross-entropies, number of trained tokens)`` for a batch.

    Labels are unshifted (as in transformers): position ``t`` predicts ``labels[t + 1]``.
    """
    lm = _causal_lm(model)
    backbone = lm.get_decoder()
    head = lm.get_output_embeddings()
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    shift_labels = labels[:, 1:]
    keep = shift_labels != IGNORE_INDEX
    h = hidden[:, :-1][keep]
    targets = shift_labels[keep]
    n = int(targets.numel())
    if n == 0:
        return hidden.sum() * 0.0, 0
    cfg = lm.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    if getattr(lm, "_instructglm_fused_ce", False):  # Liger's fused kernel (train/kernels.py)
        from instructglm.train.kernels import fused_head_ce_sum

        return fused_head_ce_sum(h, targets, head.weight, head.bias, softcap), n
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk_size):
        hc, tc = h[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled() and n > chunk_size:
            total = total + checkpoint(_head_ce_sum, hc, tc, head.weight, head.bias, softcap, scale,
                                       use_reentrant=False)
        else:
            total = total + _head_ce_sum(hc, tc, head.weight, head.bias, softcap, scale)
    return total, n
