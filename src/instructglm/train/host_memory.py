"""Keep freed host memory for the next training step (CPU training on glibc).

glibc's malloc serves every block above its mmap threshold (which it raises to at most 32 MiB)
with a fresh ``mmap`` and gives it back to the kernel on ``free``. A training step allocates and
frees the same large tensors every step (the LM head's two ``[chunk, vocab]`` buffers alone are
128 MiB each for Gemma 3's 262k vocabulary, and the activations of a long packed row pass 32 MiB),
so every step the kernel maps and zero-fills them again, page by page: about 2 million minor page
faults and 5 s of system time in 20 steps of Gemma 3 270M. With both thresholds raised such
blocks stay in malloc's heap, and the next step reuses them (``bench/train.py`` measures the
command with it). PyTorch's CPU allocator is plain malloc, so this is the one place to change it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from the heap and stay there when freed


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
    done = mallopt(M_MMAP_THRESHOLD, KEEP_BELOW) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_BELOW) == 1
    log.debug("glibc malloc keeps freed blocks under %d MiB: %s", KEEP_BELOW >> 20, done)
    return done
