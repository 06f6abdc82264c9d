"""Collaborative decoding: the fused ops on each available backend beside their baselines.

Each benchmark group is one op on one problem (shape, device): the fused backends, the eager
chain (a), the Hugging Face chain (b), torch.compile of (a) (c) and the read-once floor, as
``mtkernels.bench.collab`` defines them. A case's result is checked before it is timed.
``extra_info`` holds the op, shape, backend, device, peak memory (MiB), the check's summary and, on
CUDA, the median of ``triton.testing.do_bench`` (``gpu_median_ms``).
"""

import functools

import pytest

from mtkernels.bench import collab
from mtkernels.bench.measure import GPU_TIMER, PEAK_MEMORY_METHOD, cuda_time_ms, peak_memory_mb, synchronized
from mtkernels.bench.problems import make_problem
from mtkernels.bench.runner import device_specs

BACKENDS = collab.bench_backends()


def _cases():
    """``(spec, device)`` for every case of every op, on each device the backends use."""
    return [(spec, device) for device, specs in device_specs(BACKENDS) for spec in specs]


CASES = _cases()


@functools.lru_cache(maxsize=2)
def _problem(shape, device):
    """The inputs of one shape, shared by the cases of that shape (kept for the next few tests)."""
    return make_problem(shape, device)


@pytest.mark.parametrize("case", CASES, ids=[f"{s.op}-{s.variant}-{d.type}" for s, d in CASES])
def test_collab(benchmark, bench_shape, case):
    spec, device = case
    problem = _problem(bench_shape, device)
    bound = collab.bind_case(spec, problem)  # raises if its result disagrees with the eager chain
    benchmark.group = f"{spec.op} {bench_shape.label} {device.type}"
    benchmark.extra_info.update(
        op=collab.OPS[spec.op].title, kind=spec.kind, backend=spec.variant, device=device.type,
        shape={"M": bench_shape.models, "B": bench_shape.batch, "V": bench_shape.vocab,
               "dtype": bench_shape.dtype_name},
        peak_memory_mb=peak_memory_mb(bound.fn, device), peak_memory_method=PEAK_MEMORY_METHOD, check=bound.check,
    )
    if device.type == "cuda":
        benchmark.extra_info.update(gpu_median_ms=cuda_time_ms(bound.fn, device), gpu_timer=GPU_TIMER)
    benchmark(synchronized(bound.fn, device))
