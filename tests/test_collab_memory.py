"""Working memory of the cpu backend's collab ops: O(k) scratch per thread, not per row.

Peak resident memory (``ru_maxrss``) of a fresh process, above what it held before the calls: C++
allocations do not show in tracemalloc, and the peak is what matters. 10**6 rows of two tokens make
per-row scratch of a few KiB (the fault this guards against) cost gigabytes, while inputs and outputs
stay small (8 MiB and ~20 MiB).
"""

import os
import subprocess
import sys

import pytest

import mtkernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT_MIB = 200

_MEASURE = r"""
import resource, torch, mtkernels

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

x = torch.randn(10**6, 2)
calls = [
    lambda x: mtkernels.fused_collab_softmax([x], top_k=1, backend="cpu"),
    lambda x: mtkernels.fused_collab_sample([x], top_p=0.7, return_logprobs=True, backend="cpu"),
    lambda x: mtkernels.fused_collab_sample([x], min_p=0.1, return_logprobs=True, backend="cpu"),
    lambda x: mtkernels.fused_collab_sample([x], top_k=2, top_p=0.9, backend="cpu"),
    lambda x: mtkernels.collab_logits([x], temperature=0.5, backend="cpu"),
]
for call in calls:
    call(x[:16])  # load everything first
base = max(rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
for call in calls:
    call(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.skipif("cpu" not in mtkernels.available_backends(), reason="needs the cpu backend")
def test_peak_memory_of_a_million_rows():
    proc = subprocess.run([sys.executable, "-c", _MEASURE], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_mib = float(proc.stdout.strip().splitlines()[-1])
    assert peak_mib < LIMIT_MIB, f"peak {peak_mib:.0f} MiB above the inputs for 10**6 rows (8 MiB of logits)"
