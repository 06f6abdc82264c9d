// MTK_HOST_DEVICE marks the small functions that the CPU build and the CUDA build both compile, so
// that one definition of a formula serves both backends.
#pragma once

#if defined(__CUDACC__)
#define MTK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MTK_HOST_DEVICE inline
#endif
