"""train/cpu_process.py: freed large blocks stay in the process, and denormals flush on every worker thread."""

import subprocess
import sys

import pytest

from instructglm.train.cpu_process import keep_freed_blocks

# Allocates and touches a 64 MiB block (above glibc's largest automatic mmap threshold, 32 MiB), frees
# it, and prints how many of its pages left the process's resident memory with the free; argv[1] says
# whether to call keep_freed_blocks first. Its own process: mallopt settings last for the process.
# (Whether the next request then reuses those pages depends on where malloc can fit it, so the page
# faults a training run saves are measured by bench/cpu_process.py, not here.)
KEEP = """
import os, sys
import torch
from instructglm.train.cpu_process import keep_freed_blocks
if sys.argv[1] == "keep":
    assert keep_freed_blocks()
def resident():
    return int(open("/proc/self/statm").read().split()[1])
t = torch.empty(64 << 20, dtype=torch.uint8)
t.fill_(1)
before = resident()
del t
print(before - resident())
"""

# Multiplies a large tensor of one denormal number by 1 on two threads (each takes half) and prints
# how many results are still non-zero; argv[1] says whether prepare_cpu_process runs first.
FLUSH = """
import sys
import torch
from instructglm.train.cpu_process import prepare_cpu_process
if sys.argv[1] == "prepare":
    prepare_cpu_process()
torch.set_num_threads(2)
x = torch.full((1 << 22,), 1e-39)
print(int((x * 1.0 != 0).sum()))
"""


def child(code: str, mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_large_block_stays_in_the_process():
    pages = (64 << 20) // 4096
    assert child(KEEP, "plain") > pages * 9 // 10  # without it: unmapped at once, to be faulted in anew
    assert child(KEEP, "keep") < pages // 20


def test_reports_whether_it_applied():
    assert keep_freed_blocks() is sys.platform.startswith("linux")


def test_denormals_flush_on_the_worker_threads_too():
    assert child(FLUSH, "plain") == 1 << 22  # kept: slow arithmetic on every one of them
    assert child(FLUSH, "prepare") == 0  # the thread pool started after: every thread flushes
