"""MuMo verification scores, each case of ``mtkernels.bench.mumo_verify`` side by side: from logits
(fused backend, eager log_softmax + gather + masked mean, one-read floor) and from hidden states
(fused backend, GEMM + eager, the GEMM alone). extra_info holds the peak memory above the inputs.

    pytest benchmarks/bench_mumo_verify.py --benchmark-only
"""

import pytest

from mtkernels.bench import mumo_verify as mv
from mtkernels.bench.measure import PEAK_MEMORY_METHOD, peak_memory_mb, synchronized


@pytest.mark.parametrize("case", list(mv.logits_cases("cpu")))
@pytest.mark.parametrize("shape", mv.LOGITS_SHAPES, ids=lambda s: "B{}-K{}-L{}-V{}".format(*s))
def test_mumo_verify_from_logits(benchmark, shape, case):
    args = mv.logits_inputs(shape, "cpu")
    fn = mv.logits_cases("cpu")[case]
    benchmark.group = "mumo verify from logits B{} K{} L{} V{} cpu".format(*shape)
    benchmark.extra_info.update(case=case, peak_memory_method=PEAK_MEMORY_METHOD,
                                peak_memory_mb=peak_memory_mb(lambda: fn(*args), "cpu"))
    benchmark.pedantic(synchronized(fn, "cpu"), args=args, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("case", list(mv.fused_cases("cpu")))
@pytest.mark.parametrize("shape", mv.FUSED_SHAPES, ids=lambda s: "B{}-K{}-L{}-H{}-V{}".format(*s))
def test_mumo_verify_fused(benchmark, shape, case):
    args = mv.fused_inputs(shape, "cpu")
    fn = mv.fused_cases("cpu")[case]
    benchmark.group = "mumo verify from hidden B{} K{} L{} H{} V{} cpu".format(*shape)
    benchmark.extra_info.update(case=case, peak_memory_method=PEAK_MEMORY_METHOD,
                                peak_memory_mb=peak_memory_mb(lambda: fn(*args), "cpu"))
    benchmark.pedantic(synchronized(fn, "cpu"), args=args, rounds=3, warmup_rounds=1)
