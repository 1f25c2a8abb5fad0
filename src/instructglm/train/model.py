"""The model to train: base weights in the precision this machine runs best (or quantized), and the
counts and FLOPs the logs report."""

from __future__ import annotations

import logging

from instructglm.errors import UserError

log = logging.getLogger(__name__)


AUTOCAST_ATTR = "_instructglm_autocast"  # set on the base *ForCausalLM by load_base; read by loss.py

# Narrower models stay in fp32 under ``auto``: their matmuls are too small for bf16 to pay for the
# casts autocast adds around every op (and tiny test models keep their exact fp32 losses).
BF16_MIN_HIDDEN = 512


def cpu_bf16_instructions() -> str | None:
    """The native bf16 matrix instructions of this CPU (``avx512_bf16``, ``amx_bf16``), or None.

    Without them PyTorch still runs bf16, but emulated, and no faster than fp32."""
    import torch

    found = []
    try:
        flags = set()
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
        found = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    except OSError:  # not Linux: ask PyTorch's own CPU probe
        cpu = getattr(torch, "cpu", None)
        for name, probe in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
            if getattr(cpu, probe, lambda: False)():
                found.append(name)
    return ", ".join(found) or None


def resolve_precision(precision: str):
    """(torch dtype for the frozen base weights, accelerate mixed_precision) for this machine.

    ``auto`` on a CPU returns dtype None: :func:`load_base` decides once it sees the model (bf16 on a
    CPU with native bf16 matrix instructions, for models wide enough to gain; fp32 otherwise), and
    ``loss.py`` then runs the forward under bf16 autocast itself (accelerate's stays off)."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        if not cuda:
            return None, "no"
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise UserError("precision fp16: needs a GPU; on CPU use fp32 (default) or bf16")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return dtype, ("no" if precision == "fp32" else precision)


def _hidden_size(model_path: str) -> int | None:
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a hub id (no local config): auto stays fp32
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    return config.get("hidden_size") or config.get("n_embd") or config.get("d_model")


def auto_cpu_dtype(model_path: str, hidden_size: int | None = None):
    """``precision auto`` on a CPU: bf16 compute when the CPU has native bf16 matrix instructions and
    the model is at least :data:`BF16_MIN_HIDDEN` wide, else fp32; logged either way."""
    import torch

    hidden = hidden_size or _hidden_size(model_path)
    native = cpu_bf16_instructions()
    if native and (hidden or 0) >= BF16_MIN_HIDDEN:
        log.info("precision auto: bf16 compute (this CPU has %s)", native)
        return torch.bfloat16
    why = (f"hidden size {hidden} < {BF16_MIN_HIDDEN}, too small to gain from bf16" if native else
           "this CPU has no native bf16 matrix instructions (avx512_bf16 or AMX)")
    log.info("precision auto: fp32 (%s)", why)
    return torch.float32


def load_base(model_path: str, dtype, load_in: str, trust_remote_code: bool):
    """The base model in ``dtype`` (None: :func:`auto_cpu_dtype` picks), or quantized with bitsandbytes
    when ``load_in`` asks for it."""
    import torch

    from instructglm.models.loading import load_model
    from instructglm.train.attention import use_packed_attention

    if dtype is None and load_in == "none":
        dtype = auto_cpu_dtype(model_path)
        model = load_model(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
        if dtype == torch.bfloat16:  # accelerate's autocast is off on CPU: loss.py opens its own
            setattr(model, AUTOCAST_ATTR, dtype)
            log.info("precision auto: frozen base weights bf16; trainable weights and optimizer state fp32")
            if use_packed_attention(model):
                log.info("attention: per example in packed rows, bf16 matrix products (train/attention.py)")
        return model
    if load_in == "none":
        return load_model(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
    if not torch.cuda.is_available():  # (precision auto leaves dtype None only on a CPU)
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


def gpu_record(tokens_per_s: float, flops_per_token: float) -> dict:
    """The log line's GPU values: MFU of one GPU's ``tokens_per_s`` against its dense bf16 peak, and peak memory."""
    import torch

    return {"mfu": round(tokens_per_s * flops_per_token / gpu_peak_flops(), 4),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
