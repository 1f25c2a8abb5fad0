"""Log-probabilities of whole answers through the chunked LM head: the full logits tensor never exists.

Preference losses weigh every answer differently (``d loss / d logp`` differs per sequence), so the
SFT head (:class:`instructglm.train.loss.LinearCrossEntropy`, one scalar sum) does not fit. Here
:class:`TokenLogProbs` returns each trained token's log-probability, worked through in chunks of
``[chunk, vocab]`` logits like the SFT head: with a frozen head (LoRA, Freeze) the hidden states'
gradient per token is computed in the same pass and only scaled in ``backward``; a trainable head
(full fine-tuning) has its weight gradient computed in ``backward`` from the chunk's logits again
(its gradient needs the per-token weights that only ``backward`` knows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instructglm.constants import IGNORE_INDEX
from instructglm.train.loss import causal_lm, head_chunk_rows


def _chunk(h, weight, bias, t, softcap, scale):
    """``(log-probs of the targets, d logp / d (pre-cap logits))`` of one chunk of rows."""
    logits = F.linear(h, weight, bias).float()
    if scale is not None:
        logits = logits * scale
    capped = logits if softcap is None else torch.tanh(logits / softcap) * softcap
    logp = torch.log_softmax(capped, dim=-1)
    target_logp = logp.gather(1, t[:, None])[:, 0]
    g = logp.exp_().neg_()  # d logp_t / d capped = onehot - softmax
    g[torch.arange(len(t), device=g.device), t] += 1
    if softcap is not None:
        g.mul_(1 - torch.tanh(logits / softcap) ** 2)
    if scale is not None:
        g.mul_(scale)
    return target_logp, g


class TokenLogProbs(torch.autograd.Function):
    """``log softmax(head(hidden))[targets]`` per row, ``head(h) = softcap(scale * (h W^T + b))``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, scale, chunk_size):
        need_h = ctx.needs_input_grad[0]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            out[rows], g = _chunk(hidden[rows], weight, bias, targets[rows], softcap, scale)
            if need_h:
                grad_h[rows] = g.to(weight.dtype) @ weight
        ctx.args = (softcap, scale, chunk_size)
        ctx.save_for_backward(grad_h, hidden, weight, bias, targets)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, hidden, weight, bias, targets = ctx.saved_tensors
        need_w, need_b = ctx.needs_input_grad[1], ctx.needs_input_grad[2] and bias is not None
        softcap, scale, chunk_size = ctx.args
        if grad_h is not None:
            grad_h = grad_h * grad_out[:, None].to(grad_h.dtype)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        if need_w or need_b:  # the chunk's logits again: the weight gradient needs the per-token scales
            for start in range(0, hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                h = hidden[rows]
                _, g = _chunk(h, weight, bias, targets[rows], softcap, scale)
                g.mul_(grad_out[rows, None].float())
                if need_w:
                    grad_w += g.t() @ h.float()
                if need_b:
                    grad_b += g.sum(0)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None)


def sequence_logps(model, batch: dict, sequences: int, method=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of trained tokens' log-probs, trained tokens)`` per sequence of a collated batch
    (:func:`instructglm.train.preference.collate.collate_sequences`): ``seq`` names each row's sequence,
    or, packed, ``segments`` each token's. ``method`` with ``USES_MODEL_FORWARD`` (P-Tuning's prefix)
    goes through the model's own forward, which makes full logits."""
    from instructglm.train.packing import attention_mask_for

    labels = batch["labels"]
    shift = labels[:, 1:]
    keep = shift != IGNORE_INDEX
    if "segments" in batch:
        seq_of = batch["segments"][:, 1:][keep]
    else:
        seq_of = batch["seq"][:, None].expand_as(shift)[keep]
    targets = shift[keep]
    if method is not None and method.USES_MODEL_FORWARD:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        token_logp = torch.log_softmax(logits[:, :-1][keep].float(), -1).gather(1, targets[:, None])[:, 0]
    else:
        lm = causal_lm(model)
        mask, positions = batch["attention_mask"], None
        if "segments" in batch:
            mask = attention_mask_for(lm.config, batch["segments"], next(lm.parameters()).dtype)
            positions = batch["position_ids"]
        out = lm.get_decoder()(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions,
                               use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        head = lm.get_output_embeddings()
        cfg = lm.config
        token_logp = TokenLogProbs.apply(hidden[:, :-1][keep], head.weight, head.bias, targets,
                                         getattr(cfg, "final_logit_softcapping", None),
                                         getattr(cfg, "logit_scale", None), head_chunk_rows(head.weight.shape[0]))
    sums = torch.zeros(sequences, dtype=torch.float32, device=token_logp.device).index_add(0, seq_of, token_logp)
    counts = torch.bincount(seq_of, minlength=sequences)
    return sums, counts
