"""Time and peak memory of one callable.

Time, CPU: a few warm-up calls, then the median of repeated calls timed with
``time.perf_counter``. The number of calls adapts to the cost of one call so that slow baselines
don't dominate the run (``Timing``).

Time, CUDA (``cuda_time_ms``): the median of ``triton.testing.do_bench``, the timer GPU kernel
libraries report with: CUDA events around each call, the L2 cache flushed before each one, warm-up
and repetition counts set from a first estimate of the call's cost. Without Triton, the same
procedure written here with ``torch.cuda.Event``.

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
import inspect
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, Optional

import torch
from torch.profiler import ProfilerActivity, profile

MIB = 2**20
PEAK_MEMORY_METHOD = (
    "peak bytes allocated during one call above those held before it (inputs excluded, outputs included); "
    "CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats minus memory_allocated before; "
    "CPU: running maximum of the time-ordered allocation/free events of torch.profiler.profile(profile_memory=True)")


@dataclasses.dataclass(frozen=True)
class Timing:
    """How many calls to make on the CPU: ``warmup`` untimed, then between ``min_runs`` and
    ``max_runs`` timed, as many as fit in ``budget_s`` seconds at the warm-up's speed. On CUDA
    only ``budget_s`` is used: ``cuda_time_ms`` repeats for ``100 * budget_s`` ms (do_bench's
    default 100 ms at the default budget)."""

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


GPU_TIMER = ("triton.testing.do_bench, median: CUDA events around each call, L2 flushed before each call, "
             "warm-up / repetitions sized from a first estimate")


def _do_bench_median(fn: Callable[[], Any], warmup_ms: float, rep_ms: float) -> Optional[float]:
    """``triton.testing.do_bench``'s median in ms, whichever way this Triton spells it; None without Triton."""
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    params = inspect.signature(do_bench).parameters
    kwargs: Dict[str, Any] = {"warmup": warmup_ms, "rep": rep_ms}
    if "return_mode" in params:
        try:
            return float(do_bench(fn, return_mode="median", **kwargs))
        except AssertionError:  # a Triton whose return_mode has no "median"
            pass
    if "quantiles" in params:  # the median as the 0.5 quantile
        out = do_bench(fn, quantiles=[0.5], **kwargs)
        return float(out[0] if isinstance(out, (list, tuple)) else out)
    return float(do_bench(fn, **kwargs))


def _events_median(fn: Callable[[], Any], device: torch.device, warmup_ms: float, rep_ms: float) -> float:
    """``do_bench``'s procedure with ``torch.cuda.Event``: the fallback where Triton is missing."""
    flush = torch.empty(256 * MIB // 4, dtype=torch.int32, device=device)  # larger than any L2
    fn()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate = max(start.elapsed_time(end) / 5, 1e-4)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    n = max(1, int(rep_ms / estimate))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def cuda_time_ms(fn: Callable[[], Any], device="cuda", warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median GPU time of ``fn()`` in milliseconds (see ``GPU_TIMER``)."""
    device = torch.device(device)
    with torch.cuda.device(device):
        ms = _do_bench_median(fn, warmup_ms, rep_ms)
        return ms if ms is not None else _events_median(fn, device, warmup_ms, rep_ms)


def median_time_ms(fn: Callable[[], Any], device, timing: Timing = Timing()) -> float:
    """Median time of ``fn()`` in milliseconds: on CUDA ``cuda_time_ms`` with ``timing.budget_s`` as
    its repetition time, else wall time after ``timing.warmup`` untimed calls."""
    device = torch.device(device)
    if device.type == "cuda":
        return cuda_time_ms(fn, device, warmup_ms=min(25.0, 250 * timing.budget_s), rep_ms=100 * timing.budget_s)
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
