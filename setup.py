"""Builds mtkernels._C (CPU C++ kernels) and, with a CUDA build of torch and nvcc, mtkernels._C_cuda.

Install with ``pip install --no-build-isolation -e .`` so the build uses the torch already
installed. Without a C++ compiler the package still installs (pure Python: reference and Triton
backends). MTKERNELS_CPU_ARCH sets the -march of the CPU kernels (default: native).
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("mtkernels: torch is not installed at build time; building no C++ extension", file=sys.stderr)
        return [], {}
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        print("mtkernels: no C++ compiler found; building no C++ extension", file=sys.stderr)
        return [], {}
    arch = os.environ.get("MTKERNELS_CPU_ARCH", "native")
    cxx_flags = ["-O3", "-std=c++20", f"-march={arch}", "-fno-math-errno", "-fopenmp"]
    exts = [
        cpp_extension.CppExtension(
            "mtkernels._C",
            sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))),
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ]
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    if torch.version.cuda and cpp_extension.CUDA_HOME and cuda_sources and os.environ.get("MTKERNELS_NO_CUDA") != "1":
        exts.append(
            cpp_extension.CUDAExtension(
                "mtkernels._C_cuda",
                cuda_sources,
                include_dirs=[os.path.join(ROOT, "csrc")],
                extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
            )
        )
    return exts, {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
