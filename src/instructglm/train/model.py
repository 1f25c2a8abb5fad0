"""The model to train: base weights in the precision this machine runs best (or quantized), and the
counts and FLOPs the logs report."""

from __future__ import annotations

from instructglm.errors import UserError


def resolve_precision(precision: str):
    """(torch dtype for the frozen base weights, accelerate mixed_precision) for this machine."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise UserError("precision fp16: needs a GPU; on CPU use fp32 (default) or bf16")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return dtype, ("no" if precision == "fp32" else precision)


def load_base(model_path: str, dtype, load_in: str, trust_remote_code: bool):
    """The base model in ``dtype``, or quantized with bitsandbytes when ``load_in`` asks for it."""
    import torch

    from instructglm.models.loading import load_model

    if load_in == "none":
        return load_model(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
    if not torch.cuda.is_available():
        raise UserError(f"load_in={load_in}: quantized loading needs a CUDA GPU; none is visible")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(f"load_in={load_in}: needs the bitsandbytes package (pip install bitsandbytes)") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = (BitsAndBytesConfig(load_in_8bit=True) if load_in == "8bit" else
             BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype))
    model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=quant, dtype=dtype,
                                                 trust_remote_code=trust_remote_code)
    return prepare_model_for_kbit_training(model)


def numel(p) -> int:
    """Elements of a parameter, also when DeepSpeed ZeRO-3 has partitioned it away (``ds_numel``)."""
    return getattr(p, "ds_numel", None) or p.numel()


def training_flops_per_token(model, method: str) -> float:
    """FLOPs per trained token: 6N for full fine-tuning, 4N when the base is frozen (forward 2N plus
    input gradients 2N; the adapters' own weight gradients are negligible), N including the LM head,
    plus the attention term 6 * layers * hidden * context (ignored here for short rows)."""
    n = sum(numel(p) for p in model.parameters())
    return (6 if method == "full" else 4) * n


def gpu_peak_flops() -> float:
    """Dense bf16 peak of the visible GPU in FLOP/s (H100/H200 SXM: 989e12), for MFU."""
    import torch

    name = torch.cuda.get_device_name()
    for key, peak in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40", 181e12), ("4090", 165e12)):
        if key in name:
            return peak
    return 312e12
