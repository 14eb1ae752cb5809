"""CPU ranks' host allocator: with glibc's threshold fixed, freed large blocks go back to the system; left to
rise, glibc keeps them resident (the retention that made 2 gloo ranks' stepping peak exceed one process's)."""

import ctypes.util
import subprocess
import sys

import pytest

PROGRAM = """
import sys, torch
from potstill.core.host_allocator import fix_mmap_threshold
from potstill.core.memory_budget import process_memory

def resident_mib():
    return process_memory("VmRSS") / 2**20

if sys.argv[1] == "fixed":
    assert fix_mmap_threshold(1)
block = torch.ones(2**22)      # 16 MiB, freed: glibc's own threshold rises past the 8 MiB blocks below
del block
before = resident_mib()
blocks, pins = [], []
for _ in range(50):            # 400 MiB, with a small live block after each (the heap's top cannot shrink past it)
    blocks.append(torch.ones(2**21))
    pins.append(torch.ones(1000))
del blocks
print(resident_mib() - before)
"""


def retained_mib(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="glibc's mallopt")
def test_fixed_threshold_returns_freed_blocks_that_glibc_would_keep():
    assert retained_mib("rising") > 300          # 400 MiB freed, kept resident
    assert retained_mib("fixed") < 50

