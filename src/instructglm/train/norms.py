"""One autograd node per RMSNorm for low-precision training (issue 23).

transformers' RMSNorm modules compute ``x.float()``, ``pow``, ``mean``, ``+ eps``, ``rsqrt``, two ``mul``
and a cast as separate autograd nodes, each a pass over the activations forward and backward. In a bf16
CPU LoRA step of Gemma 3 270M (4 norms per layer on [tokens, 640] plus q_norm/k_norm on [tokens, heads,
256]) they took ~250 ms of ~2.3 s. Here the same formula runs as one ``torch.autograd.Function`` that
saves only ``x`` (low precision) and the fp32 ``rstd`` and computes the input grad in closed form
(``rstd * dn - x * rstd^3 * mean(dn * x)``) with in-place fp32 temporaries.

Measured in bf16 on 2 shared CPU threads, forward + backward of the input grad (min over interleaved
rounds, 3 runs): Gemma3RMSNorm [2,450,640] 1.7-2.7 -> 1.3-1.4 ms, [2,450,4,256] 3.4-4.5 -> 2.1-2.7 ms,
LlamaRMSNorm [2,461,576] 1.6-2.2 -> 1.2-1.5 ms. A whole LoRA step's forward + backward (rank 8, batch
4 x 1024 tokens, the same batches alternated in one process) was 8.6-9.4% faster on Gemma 3 270M and
5.8-6.1% on SmolLM2-135M, with the same loss. ``F.rms_norm`` on the fp32 input was no faster than the
module (2.2, 3.5-3.7 and 1.7 ms: its CPU backward is a chain of autograd ops too), and
``aten._fused_rms_norm_backward`` has no CPU kernel.

The formula and rounding order are each class's own (checked once per class on a probe input, and a
class not listed in ``_KNOWN`` is never touched): Gemma normalises in fp32, multiplies by ``1 + w`` in
fp32, then casts to x's dtype; Llama-style norms normalise in fp32, cast to x's dtype, then multiply by
``w`` (result dtype by promotion). Only low-precision computation is replaced (autocast on for x's
device, or a bf16/fp16 input or weight); in fp32 the module's own forward runs, so fp32 losses (the
recorded-loss tests, exact to 1e-6) are untouched.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

LOW_PRECISION = (torch.bfloat16, torch.float16)
GEMMA, LLAMA = "gemma", "llama"  # (norm * (1 + w)).to(dtype) | w * norm.to(dtype)
_EPS_ATTR = {GEMMA: "eps", LLAMA: "variance_epsilon"}

# transformers module -> (RMSNorm class name, formula); each checked against its source in transformers 5
_KNOWN = {
    "gemma": ("GemmaRMSNorm", GEMMA), "gemma2": ("Gemma2RMSNorm", GEMMA), "gemma3": ("Gemma3RMSNorm", GEMMA),
    "llama": ("LlamaRMSNorm", LLAMA), "mistral": ("MistralRMSNorm", LLAMA), "qwen2": ("Qwen2RMSNorm", LLAMA),
    "qwen3": ("Qwen3RMSNorm", LLAMA), "qwen3_moe": ("Qwen3MoeRMSNorm", LLAMA), "glm": ("GlmRMSNorm", LLAMA),
    "glm4": ("Glm4RMSNorm", LLAMA),
}


def known_formula(module) -> str | None:
    """The formula of ``module`` when its class is exactly one of ``_KNOWN`` (matched by module path and
    class name, so none of the ten transformers modeling modules is imported only to compare), else None."""
    cls = type(module)
    for arch, (name, formula) in _KNOWN.items():
        if cls.__name__ == name and cls.__module__ == f"transformers.models.{arch}.modeling_{arch}":
            return formula
    return None


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm over the last dim in fp32; ``gemma`` picks the formula (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, gemma: bool):
        with torch.autocast(x.device.type, enabled=False):  # every op here is meant in fp32
            xf = x.float()
            rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            ctx.save_for_backward(x, weight, rstd)
            ctx.gemma = gemma
            if gemma:  # the fp32 product rounds once to x's dtype on the write, as .type_as(x) does
                return torch.mul(xf * rstd, 1.0 + weight.float(), out=torch.empty_like(x))
            return weight * torch.mul(xf, rstd, out=torch.empty_like(x))

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        xf = x.to(torch.float32, copy=True)  # copies, so the in-place ops below never touch x or grad
        dn = grad.to(torch.float32, copy=True)
        dweight = _weight_grad(dn, xf, rstd, x.dtype, weight, ctx.gemma) if ctx.needs_input_grad[1] else None
        dn.mul_(1.0 + weight.float() if ctx.gemma else weight)  # d loss / d (x * rstd)
        k = (dn * xf).sum(-1, keepdim=True).mul_(rstd.pow(3) / x.shape[-1])
        dx = torch.sub(dn.mul_(rstd), xf.mul_(k), out=torch.empty_like(x))
        return dx, dweight, None, None


def _weight_grad(grad32, xf, rstd, dtype, weight, gemma: bool) -> torch.Tensor:
    """Sum over all but the last dim of ``grad * norm`` (for Llama, the norm as rounded to x's dtype)."""
    norm = xf * rstd if gemma else (xf * rstd).to(dtype)
    return (grad32 * norm).reshape(-1, weight.shape[-1]).sum(0).to(weight.dtype)


def is_low_precision(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type) or x.dtype in LOW_PRECISION or weight.dtype in LOW_PRECISION


def rms_norm_forward(module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s forward: one :class:`_RMSNormFunction` node in low precision, else the class's own."""
    if not is_low_precision(x, module.weight):
        return type(module).forward(module, x)
    return _fused_norm(module, x, module._instructglm_rms_formula)


def _fused_norm(module, x: torch.Tensor, formula: str) -> torch.Tensor:
    return _RMSNormFunction.apply(x, module.weight, getattr(module, _EPS_ATTR[formula]), formula == GEMMA)


class _FusedNormForward:
    """The ``forward`` set on one norm instance (its class stays as it is). An object rather than a
    closure so that ``copy.deepcopy`` of a model points the copy's forward at the copied module."""

    def __init__(self, module):
        self.module = module

    def __call__(self, x):
        return rms_norm_forward(self.module, x)


def _formula_holds(module, formula: str) -> bool | None:
    """Whether ``module``'s own forward matches ``formula`` on a bf16 probe (a transformers version that
    changed the class's maths makes this False); None when the weight cannot be probed (meta, partitioned)."""
    if not isinstance(getattr(module, _EPS_ATTR[formula], None), float):
        return False
    weight = module.weight
    if weight.device.type == "meta" or weight.dim() != 1 or not weight.numel():
        return None
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(8, weight.numel(), generator=generator).to(device=weight.device, dtype=torch.bfloat16)
    with torch.no_grad():
        own = type(module).forward(module, probe).float()
        ours = _fused_norm(module, probe, formula).float()
    return torch.allclose(ours, own, rtol=2 ** -7, atol=1e-3)


def _owned_elsewhere(module) -> bool:
    """A forward already set on the instance by someone else (Liger's kernels, an accelerate hook): theirs."""
    return "forward" in vars(module) and not isinstance(vars(module)["forward"], _FusedNormForward)


def fuse_rms_norms(model) -> int:
    """Route the forward of every RMSNorm of a known class in ``model`` through :func:`rms_norm_forward`;
    the number of modules so routed (calling it again changes nothing). Subclasses, unknown classes and
    modules whose forward something else already replaced keep theirs."""
    holds: dict[type, bool | None] = {}
    count = 0
    for module in model.modules():
        formula = known_formula(module)
        if formula is None or _owned_elsewhere(module):
            continue
        if holds.get(type(module)) is None:  # probed on the first module of each class that can be probed
            holds[type(module)] = _formula_holds(module, formula)
            if holds[type(module)] is False:
                log.warning("%s does not compute the RMSNorm formula expected of it; its forward is kept",
                            type(module).__name__)
        if holds[type(module)]:
            module._instructglm_rms_formula = formula
            if not isinstance(vars(module).get("forward"), _FusedNormForward):
                module.forward = _FusedNormForward(module)
            count += 1
    if count:
        log.info("RMSNorm: %d modules compute in one autograd node each in low precision", count)
    return count
