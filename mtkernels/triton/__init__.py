"""Triton kernels (GPU; on the CPU only under TRITON_INTERPRET=1, for tests).

- ``utils``: what every family shares (launch options, dtype names, next_pow2, ...);
- ``collab_kernels`` / ``kd_kernels``: the ``@triton.jit`` device helpers and kernels;
- ``collab`` / ``self_evolution_kd``: their launch configuration and launchers;
- ``aot_specs``: every kernel variant the launchers use, for ahead-of-time compiles;
- ``kernels``: the backend's registration of the launchers.
"""
