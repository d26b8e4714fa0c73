"""Allocator settings: freed activation memory is reused instead of page-faulted in again."""
import subprocess
import sys

import pytest

# R(2+1)D at 16x64x64, batch 4, fp32: activations of up to 33 MB, above glibc's largest default
# mmap threshold, so by default each forward pass page-faults in about 1 GB (~240k pages).
PROBE = """
import resource, sys
import torch
if sys.argv[1] == "tuned":
    from avlib.runtime import tune_allocator
    assert tune_allocator() and tune_allocator()          # idempotent
from avlib.model import build_model
torch.manual_seed(0)
model = build_model().eval()
video, audio = torch.rand(4, 3, 16, 64, 64), torch.randn(4, 20, 40)
faults = []
with torch.no_grad():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(video, audio)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_tuned_allocator_reuses_activation_memory_between_passes():
    def worst_fault_count(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip().splitlines()[-1])

    default, tuned = worst_fault_count("default"), worst_fault_count("tuned")
    assert tuned < 20_000, (tuned, default)        # under 80 MB of fresh pages per pass once warm
    assert tuned < default / 5, (tuned, default)
