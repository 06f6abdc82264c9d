"""The CPU C++ backend (csrc/cpu), loaded through ``mtkernels.cpu.kernels``."""
