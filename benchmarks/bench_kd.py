"""Self-evolution KD loss, forward + backward, each case of ``mtkernels.bench.kd`` (fused backends,
eager float32 PyTorch, Liger-Kernel's chunked JSD loss where installed, the GEMM floor), with
peak memory (MiB above the inputs) in extra_info.

    pytest benchmarks/ --benchmark-only -k kd            # (N, H, V) = (512, 256, 32000)
    pytest benchmarks/ --benchmark-only -k kd --large    # (4096, 1024, 32000), (1024, 1024, 128256)
"""

import pytest
import torch

from mtkernels.bench import kd
from mtkernels.bench.measure import PEAK_MEMORY_METHOD, peak_memory_mb


def pytest_generate_tests(metafunc):
    if "kd_shape" in metafunc.fixturenames:
        config = metafunc.config
        large = config.getoption("--large") or config.getoption("--bench-sizes") == "large"
        shapes = kd.LARGE_SHAPES if large else kd.DEFAULT_SHAPES
        metafunc.parametrize("kd_shape", shapes, ids=[f"N{n}-H{h}-V{v}" for n, h, v in shapes])


@pytest.mark.parametrize("case", list(kd.cases()))
def test_kd_forward_backward(benchmark, kd_shape, case):
    try:
        fn = kd.cases()[case]()
    except ImportError as exc:
        pytest.skip(f"{case}: {exc}")
    args = kd.make_inputs(kd_shape)
    benchmark.group = f"kd forward_kd fwd+bwd N{kd_shape[0]} H{kd_shape[1]} V{kd_shape[2]}"
    benchmark.extra_info.update(case=case, shape=kd_shape, peak_memory_method=PEAK_MEMORY_METHOD,
                                peak_memory_mb=peak_memory_mb(lambda: fn(*args), torch.device("cpu")))
    benchmark.pedantic(fn, args=args, rounds=3, warmup_rounds=1)
