"""Self-evolution KD loss, forward + backward, each case of ``mtkernels.bench.kd`` on each device:
CPU tensors (the ``cpu`` backend) always, CUDA tensors (the ``cuda`` and ``triton`` backends)
where there is a CUDA device; beside eager PyTorch, Liger-Kernel's chunked JSD loss where
installed, and the GEMM floor. extra_info holds the peak memory (MiB above the inputs) and, on
CUDA, the median of ``triton.testing.do_bench`` (``gpu_median_ms``). Cases that cannot run here
are skipped with the reason.

    pytest benchmarks/ --benchmark-only -k kd            # (N, H, V) = (512, 256, 32000)
    pytest benchmarks/ --benchmark-only -k kd --large    # (4096, 1024, 32000), (1024, 1024, 128256)
    pytest benchmarks/ --benchmark-only -k "kd and cuda" # CUDA tensors only
    pytest benchmarks/ --benchmark-only -k vocab_parallel # 2 gloo processes against one process

The vocabulary-parallel case (``mtkernels.bench.kd_vocab_parallel``) times its ranks in their own
processes; extra_info holds every rank's time, peak memory and bytes per row, and the benchmark itself
times the one-process loss of the same shape.
"""

import pytest

from mtkernels.bench import kd, kd_vocab_parallel
from mtkernels.bench.measure import GPU_TIMER, PEAK_MEMORY_METHOD, cuda_time_ms, peak_memory_mb, synchronized


def _params():
    params = []
    for device in kd.DEVICES:
        missing = kd.cuda_missing_reason() if device == "cuda" else None
        marks = [pytest.mark.skip(reason=missing)] if missing else []
        params += [pytest.param(device, case, id=f"{device}-{case}", marks=marks) for case in kd.case_names(device)]
    return params


def pytest_generate_tests(metafunc):
    if "kd_shape" in metafunc.fixturenames:
        config = metafunc.config
        large = config.getoption("--large") or config.getoption("--bench-sizes") == "large"
        shapes = kd.LARGE_SHAPES if large else kd.DEFAULT_SHAPES
        metafunc.parametrize("kd_shape", shapes, ids=[f"N{n}-H{h}-V{v}" for n, h, v in shapes])


@pytest.mark.parametrize("device,case", _params())
def test_kd_forward_backward(benchmark, kd_shape, device, case):
    try:
        fn = kd.make_case(case, device)
    except kd.Unavailable as exc:
        pytest.skip(f"{case} on {device} tensors: {exc}")
    args = kd.make_inputs(kd_shape, device)

    def call():
        return fn(*args)

    benchmark.group = f"kd forward_kd fwd+bwd N{kd_shape[0]} H{kd_shape[1]} V{kd_shape[2]} {device}"
    info = dict(case=case, device=device, shape=kd_shape, peak_memory_method=PEAK_MEMORY_METHOD,
                peak_memory_mb=peak_memory_mb(call, device))
    if device == "cuda":
        info.update(gpu_median_ms=cuda_time_ms(call, device, rep_ms=200), gpu_timer=GPU_TIMER)
    benchmark.extra_info.update(info)
    benchmark.pedantic(synchronized(fn, device), args=args, rounds=3, warmup_rounds=1)


def test_kd_vocab_parallel(benchmark, kd_shape):
    config = kd_vocab_parallel.Config(shape=tuple(kd_shape))
    records = kd_vocab_parallel.run(config)
    print("\n" + kd_vocab_parallel.format_table(records))
    benchmark.group = f"kd vocab-parallel fwd+bwd N{kd_shape[0]} H{kd_shape[1]} V{kd_shape[2]} cpu"
    benchmark.extra_info.update(records=records, peak_memory_method=PEAK_MEMORY_METHOD)
    h, w, ht, wt, labels = kd_vocab_parallel.make_inputs(config, "cpu")
    benchmark.pedantic(kd_vocab_parallel.step, args=(h, w, ht, wt, labels, config.mode), rounds=3,
                       warmup_rounds=1)
