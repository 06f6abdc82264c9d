// CUDA MuMo verification row kernel (see mumo_verify.cuh).
#include "cuda/mumo_verify.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>

namespace mtk {
namespace cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kIlp = 4;  // columns per thread per round, all loaded before any is used

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// A running (max, sum of exp(x - max)); max = -inf while nothing finite was seen.
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.f};
  const float sa = a.m == -INFINITY ? 0.f : a.s * __expf(a.m - m);
  const float sb = b.m == -INFINITY ? 0.f : b.s * __expf(b.m - m);
  return {m, sa + sb};
}

struct Merge {
  __device__ __forceinline__ MaxSum operator()(const MaxSum& a, const MaxSum& b) const { return merge(a, b); }
};

template <class T>
__global__ void __launch_bounds__(kThreads) lse_pick_kernel(const LsePickArgs a) {
  __shared__ typename cub::BlockReduce<MaxSum, kThreads>::TempStorage tmp;
  const int64_t i = blockIdx.x;
  const int64_t r = a.rows ? a.rows[i] : i;
  const T* __restrict__ row = static_cast<const T*>(a.logits) + r * a.row_stride;
  const int vocab = static_cast<int>(a.vocab);
  MaxSum acc{-INFINITY, 0.f};
  for (int base = threadIdx.x; base < vocab; base += kThreads * kIlp) {
    float x[kIlp];
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      const int j = base + e * kThreads;
      x[e] = j < vocab ? to_float(row[j]) : -INFINITY;
    }
    float m = acc.m;
#pragma unroll
    for (int e = 0; e < kIlp; ++e) m = fmaxf(m, x[e]);
    if (m == -INFINITY) continue;
    float s = acc.m == -INFINITY ? 0.f : acc.s * __expf(acc.m - m);
#pragma unroll
    for (int e = 0; e < kIlp; ++e) s += __expf(x[e] - m);  // NaN x reaches the sum
    acc = {m, s};
  }
  const MaxSum total = cub::BlockReduce<MaxSum, kThreads>(tmp).Reduce(acc, Merge());
  if (threadIdx.x == 0) {
    a.lse[i] = total.m == -INFINITY ? -INFINITY : (total.m == INFINITY ? INFINITY : total.m + logf(total.s));
    if (a.ids) a.picked[i] = to_float(row[a.ids[i]]);
  }
}

}  // namespace

cudaError_t mumo_lse_pick(const LsePickArgs& args, cudaStream_t stream) {
  if (args.n == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(args.n));
  switch (args.dtype) {
    case 0: lse_pick_kernel<float><<<grid, kThreads, 0, stream>>>(args); break;
    case 1: lse_pick_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(args); break;
    case 2: lse_pick_kernel<__half><<<grid, kThreads, 0, stream>>>(args); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mtk
