"""Fused GPU kernels from Liger Kernel (``pip install liger-kernel``), behind ``train --liger``.

Liger replaces, in supported architectures (LLaMA, Qwen2/3, Gemma 3, GLM-4, Mistral, ...), the
RMSNorm, rotary embedding and SwiGLU/GeGLU MLP with Triton kernels, and offers a fused linear +
cross-entropy that never materialises logits. Here the norm/RoPE/MLP kernels are patched into the
model instance, and the fused cross-entropy takes the place of ``loss.py``'s chunked LM head on the
trained positions (same result: tested against the unfused path).

``auto`` (the default) uses Liger on a CUDA GPU when the package is installed and the architecture
is supported, and says so in the log; ``on`` insists (an error names what is missing); ``off`` never.
Triton has no CPU backend: on CPU only Triton's interpreter (``TRITON_INTERPRET=1``, slow, for
testing) runs the kernels.
"""

from __future__ import annotations

import inspect
import logging
import os

from instructglm.errors import UserError

log = logging.getLogger(__name__)

FUSED_CE_ATTR = "_instructglm_fused_ce"  # set on the *ForCausalLM module; read by loss.py


def _cannot(mode: str, why: str) -> bool:
    if mode == "on":
        raise UserError(f"liger=on: {why}; use --liger auto or off")
    log.info("Liger kernels not used: %s", why)
    return False


def apply_liger(model, mode: str) -> bool:
    """Patch Liger's kernels into ``model`` (a base ``*ForCausalLM``, before PEFT) when ``mode`` asks for
    them and they can run; returns whether they were applied."""
    import torch

    if mode == "off":
        return False
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        return _cannot(mode, "Liger's Triton kernels need a CUDA GPU")
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return _cannot(mode, "the liger-kernel package is not installed (pip install liger-kernel)")
    model_type = getattr(model.config, "model_type", None)
    patch = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if patch is None:
        return _cannot(mode, f"Liger has no kernels for the '{model_type}' architecture")
    logging.getLogger("liger_kernel.backends.registry").setLevel(logging.ERROR)  # optional backends it lacks
    wanted = {"rope": True, "rms_norm": True, "swiglu": True, "geglu": True,
              "cross_entropy": False, "fused_linear_cross_entropy": False}  # the loss is ours (loss.py)
    accepted = inspect.signature(patch).parameters
    patch(model=model, **{k: v for k, v in wanted.items() if k in accepted})
    if getattr(model.config, "logit_scale", None) is None:  # Liger's fused loss has softcap but no scale
        setattr(model, FUSED_CE_ATTR, True)
    log.info("Liger kernels applied (%s): RMSNorm, RoPE, MLP%s", model_type,
             ", fused LM head + cross-entropy" if getattr(model, FUSED_CE_ATTR, False) else "")
    return True


def fused_head_ce_sum(hidden, targets, weight, bias, softcap):
    """Sum of token cross-entropies of ``hidden @ weight.T (+ bias)`` against ``targets``, in one
    Liger kernel that works through the vocabulary in chunks and computes the gradient on the way."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden, weight, targets, bias=bias, reduction="sum", softcap=softcap)
