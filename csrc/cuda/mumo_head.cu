// CUDA cross-entropy row kernel of the MuMo head loss (docs/mumo_head.md; see mumo_head.cuh).
//
// One block per row (rows are 32k-160k columns long: plenty to stream, no cross-block merge).
// Sweep 1 streams the log-sum-exp: each thread keeps a raw running max and Σ e^(x − m), raised once
// per round of kIlp loads, and the block merges the pairs (common/ce_row.h). Sweep 2, with
// compute_grad, overwrites the row with grad_scale · (softmax − onehot). All float32.
#include "cuda/mumo_head.cuh"

#include <limits>

#include <cub/block/block_reduce.cuh>

#include "common/ce_row.h"

namespace mtk {
namespace cuda {
namespace {

using Stats = ce::LseStats<float>;

constexpr int kThreads = 512;
constexpr int kIlp = 4;  // columns per thread per round, loaded before any is used
constexpr int kTile = kThreads * kIlp;

struct MergeStats {
  __device__ __forceinline__ Stats operator()(const Stats& a, const Stats& b) const { return ce::merge_stats(a, b); }
};

__global__ void __launch_bounds__(kThreads) ce_rows_kernel(const CeRowsArgs a) {
  __shared__ typename cub::BlockReduce<Stats, kThreads>::TempStorage tmp;
  __shared__ float row_m, row_log_s;
  __shared__ bool row_ok;

  const int64_t row = blockIdx.x;
  float* __restrict__ x = a.logits + row * a.stride;
  const int cols = static_cast<int>(a.cols);
  const int tid = threadIdx.x;
  const int64_t target = a.targets[row];
  // Ignored rows (and, defensively, targets outside the row, which the caller rules out: NaN makes
  // such a bug visible instead of reading out of bounds) contribute nothing.
  const bool ignored = target == a.ignore_index;
  if (ignored || target < 0 || target >= cols) {
    if (tid == 0) a.loss[row] = ignored ? 0.f : __int_as_float(0x7fffffff);
    if (a.compute_grad) {
      for (int j = tid; j < cols; j += kThreads) x[j] = 0.f;
    }
    return;
  }
  const int g = static_cast<int>(target);

  Stats acc = ce::empty_stats<float>();
  for (int base = tid; base < cols; base += kTile) {
    float v[kIlp];
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      const int j = base + e * kThreads;
      v[e] = j < cols ? x[j] : -HUGE_VALF;
    }
    float round_m = acc.m;
#pragma unroll
    for (int e = 0; e < kIlp; ++e) round_m = fmaxf(round_m, v[e]);
    ce::raise_max(acc, round_m);
    const float origin = ce::shift_origin(acc.m);
#pragma unroll
    for (int e = 0; e < kIlp; ++e) acc.s += expf(v[e] - origin);  // -inf past cols: 0
  }
  acc = cub::BlockReduce<Stats, kThreads>(tmp).Reduce(acc, MergeStats());
  if (tid == 0) {
    const ce::RowResult<float> r = ce::row_result(acc, x[g]);
    a.loss[row] = r.loss;
    row_m = acc.m;
    row_log_s = r.log_s;
    row_ok = r.has_distribution;
  }
  __syncthreads();  // also orders every read of the row above before the writes below
  if (!a.compute_grad) return;
  const float m = row_m, log_s = row_log_s, scale = a.grad_scale[row];
  const bool ok = row_ok;
  for (int base = tid; base < cols; base += kTile) {
    float v[kIlp];
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      const int j = base + e * kThreads;
      v[e] = j < cols ? x[j] : 0.f;
    }
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      const int j = base + e * kThreads;
      if (j < cols) x[j] = ok ? ce::grad_column(v[e], m, log_s, j == g, scale) : ce::quiet_nan<float>();
    }
  }
}

}  // namespace

cudaError_t ce_rows(const CeRowsArgs& args, cudaStream_t stream) {
  if (args.rows == 0) return cudaSuccess;
  if (args.rows < 0 || args.rows > std::numeric_limits<int>::max() || args.cols < 1 ||
      args.cols > std::numeric_limits<int>::max() || args.stride < args.cols) {
    return cudaErrorInvalidValue;
  }
  ce_rows_kernel<<<static_cast<unsigned>(args.rows), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mtk
