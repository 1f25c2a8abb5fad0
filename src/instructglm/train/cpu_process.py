"""Two process-wide settings for training on a CPU, made before the first step (and before PyTorch
starts its worker threads, which copy the floating-point mode of the thread that creates them).

Freed memory is kept for reuse. glibc's malloc serves every block above its mmap threshold (which
it raises to at most 32 MiB) with a fresh ``mmap`` and gives it back to the kernel on ``free``. A
training step allocates and frees the same large tensors every step (the LM head's two
``[chunk, vocab]`` buffers alone are 128 MiB each for Gemma 3's 262k vocabulary), so every step the
kernel maps and zero-fills them again, page by page. With both thresholds raised such blocks stay
in malloc's heap, and the next step reuses them wherever its requests fit (PyTorch's 64-byte aligned
requests do not always fit a freed block of the same size exactly): ``bench/cpu_process.py``, 10 steps
of Gemma 3 270M, counts 1.50 million minor page faults and 8.2 s of system time without the settings,
0.94 million and 5.8 s with them. PyTorch's CPU allocator is plain malloc, so this is the one place to say it.

Denormal numbers are flushed to zero. A trained model's logits spread over tens of units, so the
softmax over a 262k vocabulary turns many of them into numbers below fp32's (and bf16's) normal
range, and each such number costs the CPU a microcode assist of a hundred-odd cycles: a bf16
softmax over 256 x 262,144 logits spread like a trained model's takes 172 ms instead of 26 ms
(``bench/cpu_process.py``).
They are below 1.2e-38; flushing them changes no loss or gradient that matters (the bf16 matrix
unit flushes them anyway).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from the heap and stay there when freed


def prepare_cpu_process() -> None:
    """Both settings; call it before the first parallel PyTorch operation of the process."""
    import torch

    kept = keep_freed_blocks()
    flushed = torch.set_flush_denormal(True)
    log.debug("CPU process: freed blocks under %d MiB kept: %s; denormals flushed: %s", KEEP_BELOW >> 20, kept,
              flushed)


def keep_freed_blocks() -> bool:
    """Make glibc keep freed blocks under ``KEEP_BELOW`` for reuse instead of unmapping them;
    returns whether it did (False with another C library, e.g. on macOS or musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):
        return False  # mallopt exists elsewhere too, with other parameter numbers
    return mallopt(M_MMAP_THRESHOLD, KEEP_BELOW) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_BELOW) == 1
