"""Causal-LM loss computed only where it counts.

transformers' ``ForCausalLM.forward`` projects *every* position onto the vocabulary and then
throws most of it away: in instruction tuning the prompt positions carry label IGNORE_INDEX. With the
262k-token vocabulary of Gemma 3 the LM head is about half of all FLOPs and most of the
activation memory. Here the backbone runs as usual, then only the hidden states whose next
token is trained go through the LM head, in chunks whose gradients are computed on the way
(:class:`LinearCrossEntropy`), so the full ``[tokens, vocab]`` logits tensor never exists. The
result equals the model's own token-mean cross-entropy (tested against ``model(labels=...)`` for
every supported family).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F

from instructglm.constants import IGNORE_INDEX
from instructglm.train.kernels import FUSED_CE_ATTR, fused_head_ce_sum
from instructglm.train.model import AUTOCAST_ATTR


def causal_lm(model):
    """The ``*ForCausalLM`` module under PEFT / DDP wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        else:
            return model


def head_buffers(rows: int, weight, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The two ``[rows, vocab]`` buffers (logits, and log-probs or probabilities) every chunk of one call
    reuses: fresh ones per chunk would be paged in anew each time, and every out-of-place step would add
    another. fp32, or bf16 for :func:`bf16_chunk_`."""
    logits = torch.empty((rows, weight.shape[0]), dtype=dtype, device=weight.device)
    return logits, torch.empty_like(logits)


def direct_head(hidden, weight, bias) -> bool:
    """Whether the head's matmuls can write straight into the fp32 buffers (all fp32, no autocast)."""
    return (hidden.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
            and not torch.is_autocast_enabled(hidden.device.type))


def chunk_log_softmax_(h, weight, bias, softcap, scale, logits, logp, direct: bool) -> None:
    """One chunk of the head, in place: ``logits`` <- ``softcap(scale * (h W^T + b))``, ``logp`` <- its
    log-softmax (one fused pass; logsumexp is several, on CPU)."""
    if direct:
        torch.addmm(bias, h, weight.t(), out=logits) if bias is not None else torch.mm(h, weight.t(), out=logits)
    else:  # low precision or autocast: the matmul in its own dtype, the softmax in fp32
        logits.copy_(F.linear(h, weight, bias))
    if scale is not None:
        logits.mul_(scale)
    if softcap is not None:
        logits.div_(softcap).tanh_().mul_(softcap)
    torch.log_softmax(logits, dim=-1, out=logp)


def cross_entropy_grad_(logp, logits, targets, softcap, scale) -> torch.Tensor:
    """``d cross_entropy / d (pre-cap, pre-scale) logits`` of a chunk from :func:`chunk_log_softmax_`,
    made in place in ``logp`` (``logits`` is overwritten too). The gradient of a target's log-prob is
    its negation, exactly."""
    g = logp.exp_()  # the softmax: d loss / d (capped) logits, once 1 is taken off at the target
    g[torch.arange(len(targets), device=g.device), targets] -= 1
    if softcap is not None:  # d (c tanh(x / c)) / dx = 1 - tanh^2, from the capped logits
        g.mul_(logits.div_(softcap).square_().neg_().add_(1))
    if scale is not None:
        g.mul_(scale)
    return g


def bf16_head(hidden, weight, softcap, scale) -> bool:
    """Whether the head computes in bf16 (bf16 weights or a bf16 autocast) with neither logit cap nor
    scale: then :func:`bf16_chunk_` takes the softmax straight from the bf16 logits."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    return dtype == torch.bfloat16 and softcap is None and scale is None


def bf16_chunk_(h, weight, bias, targets, logits, probs) -> torch.Tensor:
    """One chunk of a bf16 head: the sum of its token cross-entropies, with ``d loss / d logits`` left
    in ``probs`` (bf16; ``logits`` holds the chunk's logits).

    Why not :func:`chunk_log_softmax_`: its fp32 log-softmax, exp and cast back each stream the whole
    ``[rows, vocab]`` chunk through memory in fp32, about 40 bytes per logit; here it is about 10 (the
    matmul writes bf16 logits, one fused softmax reads them and writes bf16, one matrix-vector product
    and the gradient matmul read that). The target's entry ``p_t - 1`` is not taken from the bf16
    ``p_t``: near 1, bf16 holds p_t only to 2^-9, so a confident target's gradient would round to 0
    (or double) while the other entries keep theirs, a bias that grows as training succeeds. It is
    ``-(sum of the other probabilities)``, summed in fp32 by that matrix-vector product, exact to
    bf16's relative precision however small. The loss is ``-log p_t`` (``-log1p(-others)`` when the
    target is likely), within 2^-9 relative, below the bf16 logits' own error; and exactly from the
    logits for the rare target too improbable for bf16 to hold."""
    with torch.autocast(h.device.type, enabled=False):  # ``out=`` matmuls: the casts are done by the caller
        if bias is None:
            torch.mm(h, weight.t(), out=logits)
        else:
            torch.addmm(bias, h, weight.t(), out=logits)
        torch.softmax(logits, dim=-1, out=probs)
        rows = torch.arange(len(targets), device=h.device)
        p = probs[rows, targets].float()
        probs[rows, targets] = 0
        others = (probs @ torch.ones((probs.shape[1], 1), dtype=probs.dtype, device=probs.device))[:, 0].float()
    loss = torch.where(p < 0.5, -p.log(), -torch.log1p(-others.clamp(max=1)))
    lost = p < 1e-37  # below bf16's normal range: the log-sum-exp of this row's logits, in fp32
    if bool(lost.any()):
        r = rows[lost]
        loss[lost] = torch.logsumexp(logits[r].float(), dim=-1) - logits[r, targets[r]].float()
    probs[rows, targets] = (-others).to(probs.dtype)
    return loss.sum()


class LinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of ``cross_entropy(head(hidden), targets)``, with ``head(h) = softcap(scale * (h W^T + b))``,
    worked through in chunks of rows with the gradients computed in the same pass.

    One chunk's ``[chunk, vocab]`` logits exist at a time and nothing is recomputed: per chunk one
    matmul gives the logits, the softmax is turned into ``d loss / d logits`` in place, and one matmul
    per needed gradient follows (with a frozen head, as in LoRA, only the hidden states' gradient).
    ``backward`` only scales the kept gradients. PyTorch has no fused linear + cross-entropy (Liger's,
    used on GPUs, is Triton-only), and checkpointing the chunks would run the head's matmul twice.
    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, scale, chunk_size):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias is not None
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        bf16 = bf16_head(hidden, weight, softcap, scale)
        if bf16:  # the casts autocast would make per matmul, once: bf16_chunk_'s matmuls write into bf16 buffers
            hidden, weight = hidden.to(torch.bfloat16), weight.to(torch.bfloat16)
            bias = None if bias is None else bias.to(torch.bfloat16)
        buffers = head_buffers(min(chunk_size, hidden.shape[0]), weight, torch.bfloat16 if bf16 else torch.float32)
        direct = direct_head(hidden, weight, bias)
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
            logits, second = (b[:len(t)] for b in buffers)
            if bf16:  # ``second`` becomes d loss / d logits
                total += bf16_chunk_(h, weight, bias, t, logits, second)
            else:  # ``second`` holds the log-probs until cross_entropy_grad_ makes it the gradient
                chunk_log_softmax_(h, weight, bias, softcap, scale, logits, second, direct)
                total -= second.gather(1, t[:, None]).sum()
            if not (need_h or need_w or need_b):
                continue
            g = second if bf16 else cross_entropy_grad_(second, logits, t, softcap, scale)
            if need_b:
                grad_b += g.sum(0, dtype=torch.float32)
            g = g.to(weight.dtype)
            if need_h:
                if direct:
                    torch.mm(g, weight, out=grad_h[start:start + chunk_size])
                else:
                    grad_h[start:start + chunk_size] = g @ weight
            if need_w and direct:
                grad_w.addmm_(g.t(), h)
            elif need_w:
                grad_w += (g.t() @ h.to(weight.dtype)).float()
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_total.float()
        if grad_h is not None:
            grad_h = grad_h * scale.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * scale).to(ctx.dtypes[0])
        if grad_b is not None:
            grad_b = (grad_b * scale).to(ctx.dtypes[1])
        return grad_h, grad_w, grad_b, None, None, None, None


def head_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk of :class:`LinearCrossEntropy`: about 2^26 logits (256 MB in fp32) at a time."""
    return max(64, 2**26 // max(vocab_size, 1))


def causal_lm_loss_sum(model, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask=None,
                       position_ids=None, chunk_size: int | None = None, **attention) -> tuple[torch.Tensor, int]:
    """Return ``(sum of token cross-entropies, number of trained tokens)`` for a batch; ``attention``:
    keywords for the model's attention function (``train/attention.py``'s examples in packed rows).

    Labels are unshifted (as in transformers): position ``t`` predicts ``labels[t + 1]``.
    """
    lm = causal_lm(model)
    backbone = lm.get_decoder()
    head = lm.get_output_embeddings()
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                   **attention)
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
    if getattr(lm, FUSED_CE_ATTR, False):  # Liger's fused kernel (train/kernels.py)
        return fused_head_ce_sum(h, targets, head.weight, head.bias, softcap), n
    rows = chunk_size or head_chunk_rows(head.weight.shape[0])
    total = LinearCrossEntropy.apply(h, head.weight, head.bias, targets, softcap, scale, rows)
    return total, n


@contextmanager
def compute_context(model):
    """What a loss computes under: the bf16 autocast of a base that ``precision auto`` loaded in bf16
    on a CPU (``train/model.py``; its fp32 trainable weights are cast per op), unless an autocast
    (accelerate's, for precision bf16/fp16) is already on; and under any autocast PEFT's cast of each
    LoRA layer's input to the adapter's fp32 switched off. Autocast undoes that cast at once (bf16 ->
    fp32 -> bf16 is exact): two copies of every adapted activation, forward and backward, for nothing
    (``copy_`` came second only to ``mm`` in a profiled bf16 CPU step, bench/results/profile-*.json).
    The preference losses use the same context, so SFT and DPO steps compute alike."""
    from peft.helpers import disable_input_dtype_casting

    lm = causal_lm(model)
    dtype = getattr(lm, AUTOCAST_ATTR, None)
    device = next(lm.parameters()).device.type
    with ExitStack() as stack:
        if dtype is not None and not torch.is_autocast_enabled(device):
            stack.enter_context(torch.autocast(device, dtype=dtype))
        if torch.is_autocast_enabled(device):
            stack.enter_context(disable_input_dtype_casting(model))
        yield


def batch_loss_sum(model, method, batch: dict) -> tuple[torch.Tensor, int]:
    """(sum of token losses, trained tokens) of a micro-batch, through the method's forward path:
    the model's own forward when the method needs it (P-Tuning), else :func:`causal_lm_loss_sum`
    with the packed rows' block-diagonal mask, under :func:`compute_context`."""
    with compute_context(model):
        return _batch_loss_sum(model, method, batch)


def _batch_loss_sum(model, method, batch: dict) -> tuple[torch.Tensor, int]:
    from instructglm.train import attention as packed
    from instructglm.train.data import trained_tokens
    from instructglm.train.packing import attention_mask_for

    if method.USES_MODEL_FORWARD:
        n = trained_tokens(batch)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return (out.loss * n if n else out.loss * 0.0), n
    mask, positions, attention = batch["attention_mask"], None, {}
    if "segments" in batch:
        lm = causal_lm(model)
        mask = attention_mask_for(lm.config, batch["segments"], next(lm.parameters()).dtype)
        positions = batch["position_ids"]
        if getattr(lm.config, "_attn_implementation", None) == packed.NAME:
            attention[packed.SPANS] = packed.spans_of(batch["segments"])
    return causal_lm_loss_sum(model, batch["input_ids"], batch["labels"], mask, positions, **attention)


class LossForward(torch.nn.Module):
    """The model with the loss computed inside ``forward``: under DDP/FSDP (accelerate wraps this
    module) gradient synchronisation then sees the whole computation."""

    def __init__(self, model, method):
        super().__init__()
        self.model = model
        self.method = method
        # FSDP's transformer-based auto-wrap looks up the block classes on the module it is given
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, **batch):
        return batch_loss_sum(self.model, self.method, batch)
