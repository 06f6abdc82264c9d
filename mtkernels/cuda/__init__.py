"""The CUDA C++ backend (csrc/cuda), loaded through ``mtkernels.cuda.kernels``."""
