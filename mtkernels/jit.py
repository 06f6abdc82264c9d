"""Compiling the C++ and CUDA extensions on first use, against the torch that imports them.

Nothing is compiled when the package is installed: ``pip install`` (with or without build
isolation) stays pure Python, and the first op call that needs an extension builds it with
``torch.utils.cpp_extension.load`` (ninja) for the running torch, Python, CPU and GPU. Builds are
cached under ``$MTKERNELS_CACHE_DIR`` (default ``~/.cache/mtkernels``) in a folder named by a hash
of everything the binary depends on (sources, flags, torch / CUDA / Python versions, CPU model or
``$MTKERNELS_CPU_ARCH``, CUDA architectures), so a change of any of them builds afresh and two
machines sharing a home folder never load each other's binary. A lock file (``fcntl.flock``,
released by the kernel if a process dies) makes parallel test workers or torchrun ranks compile
once; the others wait and load the result. ``mtkernels build`` compiles ahead of time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from typing import Dict, List, Optional, Sequence

import torch

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CACHE_ENV = "MTKERNELS_CACHE_DIR"
CPU_ARCH_ENV = "MTKERNELS_CPU_ARCH"
CUDA_ARCH_ENV = "TORCH_CUDA_ARCH_LIST"


def source_root() -> str:
    """The ``csrc`` folder: shipped inside the package (wheel / sdist), or beside it in a checkout."""
    for candidate in (os.path.join(PACKAGE_DIR, "csrc"), os.path.join(os.path.dirname(PACKAGE_DIR), "csrc")):
        if os.path.isdir(os.path.join(candidate, "cpu")):
            return candidate
    raise FileNotFoundError("mtkernels: the C++ sources (csrc/) are missing from this installation")


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mtkernels")


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """Everything one extension build depends on; ``key`` names its cache folder."""

    name: str  # "cpu" or "cuda"
    sources: tuple
    cflags: tuple
    cuda_flags: tuple
    ldflags: tuple
    include_dirs: tuple

    @functools.cached_property
    def key(self) -> str:
        digest = hashlib.sha256()
        for part in (self.name, self.cflags, self.cuda_flags, self.ldflags, torch.__version__, torch.version.cuda,
                     sys.version, sysconfig.get_platform(), _cpu_identity(), _compiler_identity()):
            digest.update(repr(part).encode())
        root = source_root()
        for path in self._hashed_files():  # by name inside csrc: a checkout and an install share builds
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
        return digest.hexdigest()[:16]

    def _hashed_files(self) -> List[str]:
        root = source_root()
        files = set(self.sources)
        for pattern in ("common/*.h", "cpu/*.h", "cuda/*.cuh", "cuda/*.h"):
            files.update(glob.glob(os.path.join(root, pattern)))
        return sorted(files)

    @property
    def module_name(self) -> str:
        return f"mtkernels_{self.name}_{self.key}"

    @property
    def directory(self) -> str:
        return os.path.join(cache_root(), self.module_name)


def _cpu_identity() -> str:
    """What -march=native compiles for: the CPU model (a shared cache must not mix machines)."""
    if os.environ.get(CPU_ARCH_ENV):
        return os.environ[CPU_ARCH_ENV]
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def _compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "c++"))


@functools.lru_cache(maxsize=None)
def _compiler_identity() -> str:
    compiler = _compiler()
    if compiler is None:
        return "none"
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return compiler


@functools.lru_cache(maxsize=None)
def _compiler_accepts(flag: str) -> bool:
    """Whether the C++ compiler takes ``flag`` (Apple clang has no -fopenmp, aarch64 no -mavx2, ...)."""
    compiler = _compiler()
    if compiler is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("int main() { return 0; }\n")
        cmd = [compiler, flag, src, "-o", os.path.join(tmp, "probe")]
        try:
            return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


def cpu_arch_flags() -> List[str]:
    """``-march`` for the CPU kernels: ``$MTKERNELS_CPU_ARCH`` (e.g. ``x86-64`` for a baseline build
    without AVX2, which takes the scalar paths), else the machine's own (``native``) where the
    compiler supports it."""
    arch = os.environ.get(CPU_ARCH_ENV)
    if arch:
        return [f"-march={arch}"]
    return ["-march=native"] if _compiler_accepts("-march=native") else []


def cpu_plan() -> BuildPlan:
    root = source_root()
    flags = ["-O3", "-std=c++20", "-fno-math-errno", *cpu_arch_flags()]
    openmp = ["-fopenmp"] if _compiler_accepts("-fopenmp") else []  # at::parallel_for's OpenMP pragmas
    return BuildPlan("cpu", tuple(sorted(glob.glob(os.path.join(root, "cpu", "*.cpp")))), tuple(flags + openmp), (),
                     tuple(openmp), (root,))


def cuda_arch_list(requested: Optional[Sequence[str]] = None) -> List[str]:
    """CUDA architectures to build for: ``requested`` (``["8.0", "9.0"]``), else
    ``$TORCH_CUDA_ARCH_LIST``, else the visible GPUs'. Raises where there is none of these."""
    if requested:
        return list(requested)
    if os.environ.get(CUDA_ARCH_ENV):
        return os.environ[CUDA_ARCH_ENV].replace(",", ";").replace(" ", ";").split(";")
    if torch.cuda.is_available():
        return sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    raise RuntimeError("no CUDA architecture to build for: no GPU is visible; pass --cuda-arch 8.0,9.0 or set "
                       f"${CUDA_ARCH_ENV}")


def cuda_plan(archs: Optional[Sequence[str]] = None) -> BuildPlan:
    """The CUDA extension's build. Needs a CUDA build of torch (``torch.version.cuda``)."""
    if torch.version.cuda is None:
        raise RuntimeError(f"the CUDA kernels need a CUDA build of torch; this torch ({torch.__version__}) is CPU-only")
    root = source_root()
    gencode = []
    for arch in cuda_arch_list(archs):
        number = arch.replace(".", "").replace("+PTX", "")
        gencode += ["-gencode", f"arch=compute_{number},code=sm_{number}"]
    sources = sorted(glob.glob(os.path.join(root, "cuda", "*.cu")) + glob.glob(os.path.join(root, "cuda", "*.cpp")))
    return BuildPlan("cuda", tuple(sources), ("-O3", "-std=c++17"), ("-O3", "-std=c++17", "-lineinfo", *gencode), (),
                     (root,))


@contextlib.contextmanager
def _exclusive(path: str):
    """An exclusive lock on ``path``; the OS releases it if the holder dies, so no stale lock can hang."""
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _built_library(plan: BuildPlan) -> Optional[str]:
    found = glob.glob(os.path.join(plan.directory, plan.module_name + "*.so"))
    return found[0] if found else None


def _import_library(plan: BuildPlan, path: str):
    spec = importlib.util.spec_from_file_location(plan.module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LOADED: Dict[str, object] = {}


def load(plan: BuildPlan, verbose: bool = False):
    """The built extension module of ``plan``, compiling it first if the cache has none."""
    if plan.key in _LOADED:
        return _LOADED[plan.key]
    path = _built_library(plan)
    module = None
    if path is None:
        with _exclusive(plan.directory + ".lock"):
            path = _built_library(plan)  # another process may have built it while we waited
            if path is None:
                module = _compile(plan, verbose)  # compiled and imported
    _LOADED[plan.key] = module if module is not None else _import_library(plan, path)
    return _LOADED[plan.key]


def _compile(plan: BuildPlan, verbose: bool):
    from torch.utils import cpp_extension

    if plan.name == "cpu" and _compiler() is None:
        raise RuntimeError("mtkernels: no C++ compiler found (set $CXX); the cpu backend cannot be built")
    os.makedirs(plan.directory, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):  # torch's own lock, left behind by a killed build
        os.remove(os.path.join(plan.directory, "lock"))
    print(f"mtkernels: compiling the {plan.name} kernels for this machine (once; cached in {plan.directory})",
          file=sys.stderr, flush=True)
    return cpp_extension.load(plan.module_name, list(plan.sources), extra_cflags=list(plan.cflags),
                              extra_cuda_cflags=list(plan.cuda_flags) or None, extra_ldflags=list(plan.ldflags),
                              extra_include_paths=list(plan.include_dirs), build_directory=plan.directory,
                              verbose=verbose, with_cuda=plan.name == "cuda")


def compiler_available() -> bool:
    """Whether the cpu backend can be built here (checked without compiling anything)."""
    return _compiler() is not None
