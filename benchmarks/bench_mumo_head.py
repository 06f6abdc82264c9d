"""MuMo head ops, each case of ``mtkernels.bench.mumo_head`` side by side, on CPU tensors (the
``cpu`` backend) always and on CUDA tensors (``cuda``, ``triton``) where there is a device:

- top-k (k = 10) at (N, H, V_multi, V_mono) = (16, 1024, 128256, 30000) against ``torch.cat`` +
  ``softmax`` + ``topk`` and the two GEMMs alone;
- cross-entropy forward + backward against eager concatenated cross-entropy and the GEMM floor.

extra_info holds the peak memory (MiB above the inputs) and, on CUDA, the median of
``triton.testing.do_bench`` (``gpu_median_ms``).

    pytest benchmarks/bench_mumo_head.py --benchmark-only              # CE at (512, 256, 32000, 8000)
    pytest benchmarks/bench_mumo_head.py --benchmark-only --large      # CE at (1024, 1024, 128256, 30000)
"""

import pytest

from mtkernels.bench import mumo_head
from mtkernels.bench.measure import GPU_TIMER, PEAK_MEMORY_METHOD, cuda_time_ms, peak_memory_mb, synchronized


def _params(op):
    params = []
    for device in mumo_head.DEVICES:
        missing = mumo_head.cuda_missing_reason() if device == "cuda" else None
        marks = [pytest.mark.skip(reason=missing)] if missing else []
        params += [pytest.param(op, device, case, id=f"{device}-{case}", marks=marks)
                   for case in mumo_head.case_names(device)]
    return params


def pytest_generate_tests(metafunc):
    if "head_shape" in metafunc.fixturenames:
        config = metafunc.config
        large = config.getoption("--large") or config.getoption("--bench-sizes") == "large"
        op = metafunc.function.__name__
        if "topk" in op:
            shapes = mumo_head.TOPK_SHAPES
        else:
            shapes = mumo_head.CE_LARGE_SHAPES if large else mumo_head.CE_SHAPES
        metafunc.parametrize("head_shape", shapes, ids=[f"N{n}-H{h}-V{vm}+{vo}" for n, h, vm, vo in shapes])


def _bench(benchmark, op, head_shape, device, case):
    try:
        fn = mumo_head.make_case(op, case, device)
    except mumo_head.Unavailable as exc:
        pytest.skip(f"{case} on {device} tensors: {exc}")
    args = mumo_head.make_inputs(head_shape, device)

    def call():
        return fn(*args)

    n, h, vm, vo = head_shape
    benchmark.group = f"{op} N{n} H{h} V{vm}+{vo} {device}"
    info = dict(case=case, device=device, shape=head_shape, peak_memory_method=PEAK_MEMORY_METHOD,
                peak_memory_mb=peak_memory_mb(call, device))
    if device == "cuda":
        info.update(gpu_median_ms=cuda_time_ms(call, device, rep_ms=200), gpu_timer=GPU_TIMER)
    benchmark.extra_info.update(info)
    benchmark.pedantic(synchronized(fn, device), args=args, rounds=5, warmup_rounds=2)


@pytest.mark.parametrize("op,device,case", _params("mumo_head_topk"))
def test_mumo_head_topk(benchmark, head_shape, op, device, case):
    _bench(benchmark, op, head_shape, device, case)


@pytest.mark.parametrize("op,device,case", _params("mumo_head_ce_fwd_bwd"))
def test_mumo_head_ce_forward_backward(benchmark, head_shape, op, device, case):
    _bench(benchmark, op, head_shape, device, case)
