"""Benchmarks of the mtkernels ops against the PyTorch chains they replace.

``collab`` defines the collaborative-decoding cases and baselines, ``runner`` runs them into
records, ``report`` prints and saves them; ``benchmarks/bench_collab.py`` (pytest-benchmark) and
``mtkernels bench`` (``mtkernels.cli``) both build on these. ``kd`` holds the KD loss cases, and
``gpu_table`` (``python -m mtkernels.bench.gpu_table``) times every op beside its baselines on a
GPU into one table.
"""

from .collab import OPS, CaseSpec, bench_backends, bind_case, case_specs
from .measure import Timing, cuda_time_ms, median_time_ms, peak_memory_mb
from .problems import DEFAULT_SHAPES, LARGE_SHAPES, Problem, Shape, make_problem
from .runner import SuiteConfig, run_suite

__all__ = [
    "DEFAULT_SHAPES", "LARGE_SHAPES", "OPS", "CaseSpec", "Problem", "Shape", "SuiteConfig", "Timing",
    "bench_backends", "bind_case", "case_specs", "cuda_time_ms", "make_problem", "median_time_ms", "peak_memory_mb",
    "run_suite",
]
