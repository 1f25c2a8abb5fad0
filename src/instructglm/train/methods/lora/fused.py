"""One autograd node per LoRA layer for low-precision training (issue 23).

PEFT's ``lora.Linear.forward`` runs the base linear, the dropout, ``lora_A``, ``lora_B``, ``* scaling`` and
``+`` as separate autograd nodes, each a pass over a [tokens, out] tensor forward and backward. Under
bf16 those passes, not the matmuls, weigh on a small model's step: computing ``y = x W^T + b + s (x A^T) B^T``
as two matmuls and one in-place ``addmm`` (the backward as its three matrix products) made a whole bf16
CPU training step (LoRA rank 8 on every linear, 4 x 1024 tokens, AMX) 3-6% faster on Gemma 3 270M and
4-14% on SmolLM2-135M in two runs each on a shared 2-core machine.

Only low-precision computation is fused: under autocast, or with a bf16/fp16 base. In fp32 PEFT's own
forward stays, so fp32 losses (the recorded-loss tests, exact to 1e-6) are untouched: a fused layer
rounds differently (one ``addmm`` where PEFT rounds after each op), invisible at bf16 precision but
not at fp32's. A bf16 base without autocast computes the adapter product in bf16 too (PEFT, casting
the input to the fp32 adapter, would compute it in fp32); training under ``precision auto`` or
accelerate's bf16 always has autocast on, where the two agree.
Every call checks that the layer is plain LoRA (one active adapter, nothing merged, adapters enabled,
no DoRA or other variant, a plain frozen ``nn.Linear`` base, bias-free adapters, no extra arguments)
and otherwise hands the call to PEFT, so nothing else ever changes the maths.
"""

from __future__ import annotations

import torch
from torch import nn

LOW_PRECISION = (torch.bfloat16, torch.float16)


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype the layer computes in when it is low precision (autocast's, else the base weight's,
    which then must be x's as ``F.linear`` requires), or None: fp32, left to PEFT."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    if weight.dtype in LOW_PRECISION and x.dtype == weight.dtype:
        return weight.dtype
    return None


class FusedLoraLinear(torch.autograd.Function):
    """``x W^T + b + s (xd A^T) B^T`` in ``dtype``, with ``xd`` the dropped-out x (None: no dropout,
    the LoRA path reads x too). The bias is frozen (no gradient); gradients come back in each input's
    own dtype, so fp32 master adapter weights get fp32 gradients."""

    @staticmethod
    def forward(ctx, x, xd, weight, bias, lora_a, lora_b, scaling, dtype):
        device = x.device.type
        with torch.autocast(device, enabled=False):  # we cast ourselves, once per tensor
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            xd2 = x2 if xd is None else xd.reshape(-1, xd.shape[-1]).to(dtype)
            w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            xa = xd2 @ a.t()  # [tokens, r]
            y = nn.functional.linear(x2, w, None if bias is None else bias.to(dtype))
            y.addmm_(xa, b.t(), alpha=scaling)
        ctx.save_for_backward(xd2, xa, w, a, b)
        ctx.meta = (scaling, x.shape, x.dtype, None if xd is None else xd.dtype, lora_a.dtype, lora_b.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        xd2, xa, w, a, b = ctx.saved_tensors
        scaling, shape, x_dtype, xd_dtype, a_dtype, b_dtype = ctx.meta
        need_x, need_xd, _, _, need_a, need_b = ctx.needs_input_grad[:6]
        grad_x = grad_xd = grad_a = grad_b = None
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(w.dtype)
            gb = g @ b  # [tokens, r]: dL/d(xd A^T), before the scaling
            if need_x:
                grad_x = g @ w
                if xd_dtype is None:  # one input feeds both paths: one buffer for both terms
                    grad_x.addmm_(gb, a, alpha=scaling)
                grad_x = grad_x.reshape(shape).to(x_dtype)
            if need_xd:
                grad_xd = torch.mm(gb, a).mul_(scaling).reshape(shape).to(xd_dtype)
            if need_a:
                grad_a = (gb.t() @ xd2).mul_(scaling).to(a_dtype)
            if need_b:
                grad_b = (g.t() @ xa).mul_(scaling).to(b_dtype)
        return grad_x, grad_xd, None, None, grad_a, grad_b, None, None


def _plain_linear(module, bias: bool) -> bool:
    """A ``torch.nn.Linear`` itself (no subclass, no hooks that could change its forward), on plain tensors."""
    return (type(module) is nn.Linear and (bias or module.bias is None) and type(module.weight) is nn.Parameter
            and not module._forward_hooks and not module._forward_pre_hooks and "forward" not in module.__dict__)


def _fusable_adapter(layer, x: torch.Tensor, args, kwargs) -> str | None:
    """The one active adapter a fused call may compute, or None when PEFT's forward must run."""
    if args or kwargs or layer.disable_adapters or layer.merged or getattr(layer, "fan_in_fan_out", False):
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(name):
        return None
    base = layer.base_layer
    if not (_plain_linear(base, bias=True) and not base.weight.requires_grad
            and (base.bias is None or not base.bias.requires_grad)):
        return None
    if not (_plain_linear(layer.lora_A[name], bias=False) and _plain_linear(layer.lora_B[name], bias=False)):
        return None
    if type(layer.lora_dropout[name]) not in (nn.Identity, nn.Dropout):
        return None
    return name


def fused_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``layer``'s forward: :class:`FusedLoraLinear` when the layer is plain LoRA in low precision, else PEFT's."""
    name = _fusable_adapter(layer, x, args, kwargs)
    dtype = None if name is None else compute_dtype(x, layer.base_layer.weight)
    if dtype is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    dropout = layer.lora_dropout[name]
    # PEFT's own dropout module, so the masks (and the RNG stream) are exactly the unfused ones
    xd = dropout(x) if isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0 else None
    base = layer.base_layer
    return FusedLoraLinear.apply(x, xd, base.weight, base.bias, layer.lora_A[name].weight,
                                 layer.lora_B[name].weight, layer.scaling[name], dtype)


class _FusedForward:
    """The ``forward`` set on one layer instance (PEFT's class stays as it is). An object rather than a
    bound method so that ``copy.deepcopy`` of a model points the copy's forward at the copied layer."""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x, *args, **kwargs):
        return fused_forward(self.layer, x, *args, **kwargs)


def fuse_lora_layers(model) -> int:
    """Route the forward of every PEFT ``lora.Linear`` in ``model`` through :func:`fused_forward`; the
    number of layers so routed (calling it again changes nothing). Eligibility is checked per call."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            if not isinstance(module.__dict__.get("forward"), _FusedForward):
                module.forward = _FusedForward(module)
            count += 1
    return count
