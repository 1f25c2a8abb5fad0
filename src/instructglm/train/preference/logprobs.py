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

from instructglm.constants import IGNORE_INDEX
from instructglm.train.loss import (causal_lm, chunk_log_softmax_, cross_entropy_grad_, direct_head, head_buffers,
                                    head_chunk_rows)


def chunk_rows(vocab_size: int) -> int:
    """Rows per head chunk: half the SFT head's (about 2^25 logits, 128 MB in fp32). The head runs last,
    when the whole forward's activations are live, so its chunk adds straight onto the step's peak;
    on Gemma 3 LoRA DPO halving it took 0.3-0.36 GB off each step's peak (4 steps measured)."""
    return max(32, head_chunk_rows(vocab_size) // 2)


def _chunk(h, weight, bias, t, softcap, scale, buffers, grad: bool = True):
    """``(log-probs of the targets, d cross-entropy / d (pre-cap) logits or None without grad)`` of one
    chunk of rows, worked in place in ``buffers`` (the gradient is a view of the second, valid until the
    next chunk). The gradient of the log-probs is its negation: callers negate the (smaller) products."""
    logits, logp = (b[:len(t)] for b in buffers)
    chunk_log_softmax_(h, weight, bias, softcap, scale, logits, logp, direct_head(h, weight, bias))
    target_logp = logp.gather(1, t[:, None])[:, 0]
    if not grad:  # the reference pass, eval: the log-probs are all that is wanted
        return target_logp, None
    return target_logp, cross_entropy_grad_(logp, logits, t, softcap, scale)


class TokenLogProbs(torch.autograd.Function):
    """``log softmax(head(hidden))[targets]`` per row, ``head(h) = softcap(scale * (h W^T + b))``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, scale, chunk_size):
        need_h = ctx.needs_input_grad[0]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        buffers = head_buffers(min(chunk_size, hidden.shape[0]), weight)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            out[rows], g = _chunk(hidden[rows], weight, bias, targets[rows], softcap, scale, buffers, need_h)
            if need_h:  # d logp / d h: the cross-entropy's, negated
                grad_h[rows] = (g.to(weight.dtype) @ weight).neg_()
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
            buffers = head_buffers(min(chunk_size, hidden.shape[0]), weight)
            for start in range(0, hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                h = hidden[rows]
                _, g = _chunk(h, weight, bias, targets[rows], softcap, scale, buffers)
                g.mul_(grad_out[rows, None].float().neg())  # d logp = -(d cross-entropy)
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
                                         getattr(cfg, "logit_scale", None), chunk_rows(head.weight.shape[0]))
    sums = torch.zeros(sequences, dtype=torch.float32, device=token_logp.device).index_add(0, seq_of, token_logp)
    counts = torch.bincount(seq_of, minlength=sequences)
    return sums, counts
