"""train/host_memory.py: a freed large block is reused by the next allocation, not paged in anew."""

import subprocess
import sys

import pytest

from instructglm.train.host_memory import keep_freed_blocks

# Allocates, touches and frees a 64 MiB block (above glibc's largest automatic mmap threshold, 32 MiB)
# twice, and prints the minor page faults of the second round; argv[1] says whether to call
# keep_freed_blocks first. Its own process: mallopt settings last for the process.
CHILD = """
import resource, sys
import torch
from instructglm.train.host_memory import keep_freed_blocks
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


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_block_is_reused_instead_of_paged_in_again():
    pages = (64 << 20) // 4096
    assert faults("plain") > pages // 2  # without it: a fresh mapping, every page faulted in again
    assert faults("keep") < pages // 20


def test_reports_whether_it_applied():
    assert keep_freed_blocks() is sys.platform.startswith("linux")
