"""Test set-up: Triton kernels run under the interpreter when there is no CUDA device.

TRITON_INTERPRET must be set before triton is first imported, hence here, before mtkernels.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import mtkernels  # noqa: E402

FUSED_BACKENDS = [b for b in mtkernels.available_backends() if b != "reference"]


def device_for(backend: str) -> torch.device:
    """The device whose tensors a backend runs on here."""
    if backend == "cuda" or (backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1"):
        return torch.device("cuda")
    return torch.device("cpu")


@pytest.fixture(params=FUSED_BACKENDS or [pytest.param("none", marks=pytest.mark.skip(reason="no fused backend"))])
def fused_backend(request):
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared machine: one thread avoids oversubscription (much faster here) and
    is immune to other processes competing for the cores. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_sessionstart(session):
    """Compile the CPU kernels once, before any test: tests that start fresh processes under a time
    limit then load them from the cache instead of racing to build them (the cold build itself is
    tested in test_install.py, with caches of its own)."""
    if "cpu" in FUSED_BACKENDS:
        from mtkernels import jit

        jit.load(jit.cpu_plan())


def pytest_report_header(config):
    return [f"mtkernels backends: {mtkernels.backend_report()}"]
