"""Time and peak memory of one callable.

Time: a few warm-up calls, then the median of repeated calls timed with ``time.perf_counter``,
with ``torch.cuda.synchronize`` around each call on a GPU. The number of calls adapts to the
cost of one call so that slow baselines don't dominate the run (``Timing``).

Peak memory: the most bytes held at once during one call, above what was allocated before it
(the inputs), outputs included.
- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``torch.cuda.memory_allocated()`` before the call.
- CPU, which has no allocator statistics: one call under ``torch.profiler.profile(
  profile_memory=True)``; its allocation and free events (every allocation of the CPU allocator,
  C++ extensions and inductor-generated code included) are summed in time order and the running
  maximum is the peak.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

MIB = 2**20
PEAK_MEMORY_METHOD = (
    "peak bytes allocated during one call above those held before it (inputs excluded, outputs included); "
    "CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats minus memory_allocated before; "
    "CPU: running maximum of the time-ordered allocation/free events of torch.profiler.profile(profile_memory=True)")


@dataclasses.dataclass(frozen=True)
class Timing:
    """How many calls to make: ``warmup`` untimed, then between ``min_runs`` and ``max_runs`` timed,
    as many as fit in ``budget_s`` seconds at the warm-up's speed."""

    warmup: int = 3
    min_runs: int = 5
    max_runs: int = 50
    budget_s: float = 1.0


QUICK_TIMING = Timing(warmup=1, min_runs=3, max_runs=5, budget_s=0.2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds taken by one call, the device work included."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def median_time_ms(fn: Callable[[], Any], device, timing: Timing = Timing()) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``timing.warmup`` untimed calls."""
    device = torch.device(device)
    warm = [_timed_call(fn, device) for _ in range(max(1, timing.warmup))]
    per_call = max(min(warm), 1e-6)
    runs = int(min(timing.max_runs, max(timing.min_runs, timing.budget_s / per_call)))
    return 1e3 * statistics.median(_timed_call(fn, device) for _ in range(runs))


def _cuda_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return max(peak, 0)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null: the profiler's C++ side logs a line at every start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()  # negative for a free
        peak = max(peak, held)
    return peak


def synchronized(fn: Callable[[], Any], device) -> Callable[[], Any]:
    """``fn`` followed by a device synchronisation, for timers that do not synchronise themselves."""
    device = torch.device(device)
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return run


def peak_memory_mb(fn: Callable[[], Any], device) -> float:
    """Peak bytes (in MiB) allocated during one call of ``fn()`` above those held before it."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak_bytes(fn, device) / MIB
    return _cpu_peak_bytes(fn) / MIB
