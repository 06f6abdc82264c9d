"""Triton kernels (GPU; on the CPU only under TRITON_INTERPRET=1, for tests)."""
