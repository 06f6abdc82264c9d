"""pytest-benchmark set-up for ``benchmarks/``.

    pytest benchmarks/ --benchmark-only                 # default sizes (a few minutes on a CPU)
    pytest benchmarks/ --benchmark-only --large         # larger sizes (same as --bench-sizes=large)

Files named ``bench_*.py`` are collected here (pytest only looks for ``test_*.py`` by default).
Triton runs only on a GPU here: TRITON_INTERPRET is never set for benchmarks.
"""

import pytest

from mtkernels.bench.problems import DEFAULT_SHAPES, LARGE_SHAPES

SIZE_SETS = {"default": DEFAULT_SHAPES, "large": LARGE_SHAPES}


def pytest_addoption(parser):
    group = parser.getgroup("mtkernels benchmarks")
    group.addoption("--bench-sizes", choices=sorted(SIZE_SETS), default="default",
                    help="which shapes to benchmark (default: %(default)s)")
    group.addoption("--large", action="store_true", help="same as --bench-sizes=large")


def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest itself; adding it here too
    # would run every benchmark twice.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _shape_id(shape):
    return f"M{shape.models}-B{shape.batch}-V{shape.vocab}-{shape.dtype_name}"


def pytest_generate_tests(metafunc):
    """Parametrize the ``bench_shape`` argument with the chosen size set."""
    if "bench_shape" in metafunc.fixturenames:
        config = metafunc.config
        sizes = "large" if config.getoption("--large") else config.getoption("--bench-sizes")
        shapes = SIZE_SETS[sizes]
        metafunc.parametrize("bench_shape", shapes, ids=[_shape_id(s) for s in shapes])
