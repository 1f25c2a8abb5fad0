"""train/cpu_process.py: freed large blocks are reused, and denormals flush on every worker thread."""

import subprocess
import sys

import pytest

from instructglm.train.cpu_process import keep_freed_blocks

# Allocates, touches and frees a 64 MiB block (above glibc's largest automatic mmap threshold, 32 MiB)
# twice, and prints the minor page faults of the second round; argv[1] says whether to call
# keep_freed_blocks first. Its own process: mallopt settings last for the process.
REUSE = """
import resource, sys
import torch
from instructglm.train.cpu_process import keep_freed_blocks
if sys.argv[1] == "keep":
    assert keep_freed_blocks()
def touch():
    t = torch.empty(64 << 20, dtype=torch.uint8)
    t.fill_(1)
    del t
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
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
def test_freed_block_is_reused_instead_of_paged_in_again():
    pages = (64 << 20) // 4096
    assert child(REUSE, "plain") > pages // 2  # without it: a fresh mapping, every page faulted in again
    assert child(REUSE, "keep") < pages // 20


def test_reports_whether_it_applied():
    assert keep_freed_blocks() is sys.platform.startswith("linux")


def test_denormals_flush_on_the_worker_threads_too():
    assert child(FLUSH, "plain") == 1 << 22  # kept: slow arithmetic on every one of them
    assert child(FLUSH, "prepare") == 0  # the thread pool started after: every thread flushes
