// CUDA collab kernels: top-k + logsumexp, combined logits, threshold mass and Gumbel arg-max over
// z = (sum_m w[b, m] * x_m[b, :V]) / tau[b] (see collab.cuh).
//
// Layout of the work: a 1-D grid of B * splits blocks, block (row, split) owning the columns
// [split * chunk, min(V, (split + 1) * chunk)). Small batches get many splits so that the whole GPU
// streams the inputs; per-split partials go to a small workspace and a per-row kernel merges them.
#include "cuda/collab.cuh"

#include "common/fmix32.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

namespace mtk {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // every kernel; also the radix-select histogram width (one bin per thread)
constexpr int kIlp = 4;  // columns per thread per round: independent loads in flight
constexpr int kTile = kThreads * kIlp;
constexpr int kMaxChunk = 8192;  // columns of a top-k split, staged as z in 32 KiB of shared memory
constexpr int kMinChunk = 1024;  // fewer columns per block cost more in merging than they gain
constexpr int kBlocksPerSm = 4;  // blocks wanted per SM before a row is split further
constexpr int kSelectBatch = 8;  // keys per thread loaded before a radix-select pass uses them
constexpr uint64_t kSentinel = ~0ull;  // "no candidate": sorts after every real top-k key
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// ---- combined logits -------------------------------------------------------------------------------

// One row of the inputs, staged in shared memory by load_row_view: the kernel parameter arrays are
// only indexed with compile-time indices there, so no kernel keeps a local-memory copy of them.
struct RowView {
  const char* base[kMaxInputs];
  double w[kMaxInputs];
  int dtype[kMaxInputs];
  int num_inputs;
  double tau;
  bool divide;  // tau != 1 (dividing by 1 is exact: skipped)
};

__device__ __forceinline__ void load_row_view(const CollabInputs& in, int64_t row, RowView& rv) {
#pragma unroll
  for (int m = 0; m < kMaxInputs; ++m) {
    if (threadIdx.x == m && m < in.num_inputs) {
      const int64_t elem = in.dtype[m] == kFloat32 ? 4 : 2;
      rv.base[m] = static_cast<const char*>(in.data[m]) + row * in.row_stride[m] * elem;
      rv.w[m] = static_cast<double>(in.weights[row * in.num_inputs + m]);
      rv.dtype[m] = in.dtype[m];
    }
  }
  if (threadIdx.x == 0) {
    rv.num_inputs = in.num_inputs;
    rv.tau = static_cast<double>(in.temperature[row]);
    rv.divide = rv.tau != 1.0;
  }
  __syncthreads();
}

// z for the N columns col0 + e * step (e < N) that are < end; the others are left unspecified.
// THE one definition of z: every kernel calls it, so z is bit-identical between them (each column's
// z depends only on that column, not on N or on the split).
// Accumulation is in double: fp32 * fp32 products are exact there, so the sum is the correctly rounded
// sum of the exact products in model order, then divided by tau in double (IEEE, correctly rounded;
// skipped for tau == 1) -- the float64 reference's value, rounded once to float (the op layer and the
// tests compare thresholds taken from the reference's z with ours). Conversions run once per element
// and model, far below the memory-bound rate of this streaming kernel.
template <int N>
__device__ __forceinline__ void combined_logits(const RowView& rv, int col0, int step, int end, float (&z)[N]) {
  double acc[N];
  bool masked[N];
#pragma unroll
  for (int e = 0; e < N; ++e) {
    acc[e] = 0.0;  // +0.0: the sum can never be -0.0, so equal z values have equal order keys
    masked[e] = false;
  }
  for (int m = 0; m < rv.num_inputs; ++m) {
    const double w = rv.w[m];
    const int dtype = rv.dtype[m];
    float x[N];
    if (dtype == kFloat32) {
      const float* p = reinterpret_cast<const float*>(rv.base[m]);
#pragma unroll
      for (int e = 0; e < N; ++e) x[e] = col0 + e * step < end ? __ldg(p + col0 + e * step) : 0.0f;
    } else {
      const unsigned short* p = reinterpret_cast<const unsigned short*>(rv.base[m]);
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const unsigned short u = col0 + e * step < end ? __ldg(p + col0 + e * step) : 0;
        x[e] = dtype == kBFloat16 ? __bfloat162float(__ushort_as_bfloat16(u)) : __half2float(__ushort_as_half(u));
      }
    }
#pragma unroll
    for (int e = 0; e < N; ++e) {
      masked[e] |= x[e] == neg_inf();  // -inf in any model masks the token, whatever the weight
      acc[e] = fma(w, static_cast<double>(x[e]), acc[e]);  // NaN propagates; 0 * inf = NaN as in the reference
    }
  }
  if (rv.divide) {
    const double tau = rv.tau;
#pragma unroll
    for (int e = 0; e < N; ++e) acc[e] = __ddiv_rn(acc[e], tau);
  }
#pragma unroll
  for (int e = 0; e < N; ++e) z[e] = masked[e] ? neg_inf() : __double2float_rn(acc[e]);
}

// The keep set (theta, cut): z > theta, or z == theta and col <= cut. A NaN theta keeps nothing.
__device__ __forceinline__ bool in_keep_set(float z, int col, float theta, int64_t cut) {
  return z > theta || (z == theta && col <= cut);
}

// Calls f(col, z) for every column of [start, end) this thread owns (coalesced: stride kThreads).
// Threads may run different numbers of rounds: f must not use block- or warp-wide operations.
template <class F>
__device__ __forceinline__ void for_each_z(const RowView& rv, int start, int end, F&& f) {
  for (int c0 = start + static_cast<int>(threadIdx.x); c0 < end; c0 += kTile) {
    float z[kIlp];
    combined_logits<kIlp>(rv, c0, kThreads, end, z);
#pragma unroll
    for (int e = 0; e < kIlp; ++e)
      if (c0 + e * kThreads < end) f(c0 + e * kThreads, z[e]);
  }
}

struct Split {
  int64_t row;
  int start, end;  // columns
};

__device__ __forceinline__ Split this_split(int splits, int chunk, int64_t vocab) {
  Split s;
  s.row = blockIdx.x / splits;
  const int64_t start = static_cast<int64_t>(blockIdx.x % splits) * chunk;
  s.start = static_cast<int>(start);
  s.end = static_cast<int>(min(vocab, start + chunk));
  return s;
}

// ---- order keys ----------------------------------------------------------------------------------

// Order-preserving map of float to uint32 (-inf < ... < +inf); every NaN maps above +inf.
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t b = __float_as_uint(x);
  if (x != x) return 0xffffffffu;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float from_order_key(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Top-k key: ascending key order = descending z, then ascending column. Keys are distinct per row;
// real keys are < kSentinel (a high half of all ones would be order_key 0, a NaN, mapped elsewhere).
__device__ __forceinline__ uint64_t topk_key(float z, int col) {
  return (static_cast<uint64_t>(~order_key(z)) << 32) | static_cast<uint32_t>(col);
}
__device__ __forceinline__ float topk_value(uint64_t key) { return from_order_key(~static_cast<uint32_t>(key >> 32)); }
__device__ __forceinline__ int64_t topk_id(uint64_t key) { return static_cast<uint32_t>(key); }

// ---- reductions ------------------------------------------------------------------------------------

// Online (max, sum exp(z - max)). m is never NaN (a NaN z only poisons s, which then stays NaN, so
// lse = m + log(s) is NaN); m == -inf means every z seen was -inf and s is 0 (or NaN).
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ void add_to(MaxSum& a, float z) {
  if (z > a.m) {
    a.s = a.s * expf(a.m - z) + 1.0f;  // a.m - z is -inf or < 0: no inf - inf
    a.m = z;
  } else if (z != neg_inf()) {
    a.s += z == a.m ? 1.0f : expf(z - a.m);  // the equality test keeps +inf - +inf out
  }
}

struct MergeMaxSum {
  __device__ __forceinline__ MaxSum operator()(const MaxSum& a, const MaxSum& b) const {
    const float m = fmaxf(a.m, b.m);
    const float sa = a.m == m ? a.s : a.s * expf(a.m - m);  // -inf - -inf never happens
    const float sb = b.m == m ? b.s : b.s * expf(b.m - m);
    return {m, sa + sb};
  }
};

__device__ __forceinline__ float lse_of(const MaxSum& a) { return a.m + logf(a.s); }  // -inf + log 0 = -inf

struct MinKey {
  __device__ __forceinline__ uint64_t operator()(uint64_t a, uint64_t b) const { return a < b ? a : b; }
};

// ---- block top-k selection (radix select on distinct 64-bit keys) -------------------------------------

struct SelectStorage {
  typename cub::BlockScan<int, kThreads>::TempStorage scan;
  int hist[kThreads];
  int digit, before, count;
  int fill;
};

// This thread's keys get(base + j * kThreads + tid) of one batch, kSentinel past n. All loads are
// issued before any key is used (the merge kernel reads its keys from L2).
template <class GetKey>
__device__ __forceinline__ void load_key_batch(GetKey get, int n, int base, uint64_t (&keys)[kSelectBatch]) {
#pragma unroll
  for (int j = 0; j < kSelectBatch; ++j) {
    const int i = base + j * kThreads + static_cast<int>(threadIdx.x);
    keys[j] = i < n ? get(i) : kSentinel;
  }
}

// The r-th smallest key among get(0..n-1) as a threshold T such that exactly r keys are <= T
// (1 <= r < n; keys distinct, or duplicates only above the r-th). MSB-first 8-bit digits: each pass
// histograms the keys that share the prefix found so far and picks the digit holding the r-th key;
// it stops as soon as that digit's whole bin is needed (usually after 2-4 passes on real logits).
// Every thread of the block must call it; it returns the same value everywhere.
template <class GetKey>
__device__ uint64_t select_threshold(GetKey get, int n, int r, SelectStorage& sm) {
  static_assert(kThreads == 256, "one histogram bin per thread");
  const int lane = threadIdx.x & 31;
  uint64_t prefix = 0, mask = 0;
  int remaining = r;
  for (int shift = 56; shift >= 0; shift -= 8) {
    sm.hist[threadIdx.x] = 0;
    __syncthreads();
    for (int base = 0; base < n; base += kThreads * kSelectBatch) {  // uniform trip count: warp collectives are safe
      uint64_t keys[kSelectBatch];
      load_key_batch(get, n, base, keys);
#pragma unroll
      for (int j = 0; j < kSelectBatch; ++j) {
        const int i = base + j * kThreads + static_cast<int>(threadIdx.x);
        unsigned digit = 256;  // "no bin"
        if (i < n && (keys[j] & mask) == prefix) digit = static_cast<unsigned>(keys[j] >> shift) & 0xffu;
        // Most warps have no key in the prefix (later passes), or keys that mostly share one digit
        // (neighbouring logits, first pass): count the leader's digit with one atomic, the rest
        // one by one. Cheaper than __match_any_sync, whose throughput is low.
        const unsigned valid = __ballot_sync(kFullMask, digit != 256);
        if (valid) {
          const int leader = __ffs(valid) - 1;
          const unsigned common = __shfl_sync(kFullMask, digit, leader);
          const unsigned same = __ballot_sync(kFullMask, digit == common);
          if (lane == leader) atomicAdd(&sm.hist[common], __popc(same));
          else if (digit != 256 && digit != common) atomicAdd(&sm.hist[digit], 1);
        }
      }
    }
    __syncthreads();
    const int count = sm.hist[threadIdx.x];
    int before;
    cub::BlockScan<int, kThreads>(sm.scan).ExclusiveSum(count, before);
    if (before < remaining && before + count >= remaining) {  // exactly one thread
      sm.digit = threadIdx.x;
      sm.before = before;
      sm.count = count;
    }
    __syncthreads();
    remaining -= sm.before;
    prefix |= static_cast<uint64_t>(sm.digit) << shift;
    mask |= 0xffull << shift;
    if (sm.count == remaining) return prefix | ((1ull << shift) - 1);  // the whole bin: done
  }
  return prefix;  // not reached for distinct keys (the last bin holds one key)
}

// Writes every key <= threshold through put(slot, key), slots 0.. in no particular order.
template <class GetKey, class Put>
__device__ void compact_selected(GetKey get, int n, uint64_t threshold, SelectStorage& sm, Put put) {
  const int lane = threadIdx.x & 31;
  if (threadIdx.x == 0) sm.fill = 0;
  __syncthreads();
  for (int base = 0; base < n; base += kThreads * kSelectBatch) {  // uniform trip count for the ballot
    uint64_t keys[kSelectBatch];
    load_key_batch(get, n, base, keys);
#pragma unroll
    for (int j = 0; j < kSelectBatch; ++j) {
      const int i = base + j * kThreads + static_cast<int>(threadIdx.x);
      const bool take = i < n && keys[j] <= threshold;
      const unsigned ballot = __ballot_sync(kFullMask, take);
      int slot = 0;
      if (lane == 0 && ballot) slot = atomicAdd(&sm.fill, __popc(ballot));
      slot = __shfl_sync(kFullMask, slot, 0) + __popc(ballot & ((1u << lane) - 1));
      if (take) put(slot, keys[j]);
    }
  }
}

// ---- kernels ---------------------------------------------------------------------------------------

// Per split: (max, sum-exp) partial into stats, and the split's min(k, n) best keys into cand
// (B * splits * k; padded with kSentinel). z is staged in dynamic shared memory (chunk floats) so
// the inputs are read once; k == 1 needs no staging (a block arg-min of the keys).
__global__ void __launch_bounds__(kThreads) topk_split_kernel(const CollabInputs in, int k, int splits, int chunk,
                                                              uint64_t* __restrict__ cand, float2* __restrict__ stats) {
  extern __shared__ float zs[];
  __shared__ RowView rv;
  __shared__ union {
    typename cub::BlockReduce<MaxSum, kThreads>::TempStorage stat;
    typename cub::BlockReduce<uint64_t, kThreads>::TempStorage key;
    SelectStorage select;
  } smem;
  const Split sp = this_split(splits, chunk, in.vocab);
  const int n = sp.end - sp.start;
  load_row_view(in, sp.row, rv);

  MaxSum st{neg_inf(), 0.0f};
  uint64_t best = kSentinel;
  if (k == 1) {
    for_each_z(rv, sp.start, sp.end, [&](int col, float z) {
      add_to(st, z);
      best = MinKey()(best, topk_key(z, col));
    });
  } else {
    for_each_z(rv, sp.start, sp.end, [&](int col, float z) {
      add_to(st, z);
      zs[col - sp.start] = z;
    });
  }
  st = cub::BlockReduce<MaxSum, kThreads>(smem.stat).Reduce(st, MergeMaxSum());
  if (threadIdx.x == 0) stats[blockIdx.x] = make_float2(st.m, st.s);
  __syncthreads();  // zs complete; smem free for reuse

  uint64_t* out = cand + static_cast<int64_t>(blockIdx.x) * k;
  if (k == 1) {
    best = cub::BlockReduce<uint64_t, kThreads>(smem.key).Reduce(best, MinKey());
    if (threadIdx.x == 0) out[0] = best;
    return;
  }
  const int r = min(k, n);
  const int start = sp.start;
  auto get = [&](int i) { return topk_key(zs[i], start + i); };
  const uint64_t threshold = r == n ? kSentinel : select_threshold(get, n, r, smem.select);
  compact_selected(get, n, threshold, smem.select, [&](int slot, uint64_t key) { out[slot] = key; });
  for (int i = r + static_cast<int>(threadIdx.x); i < k; i += kThreads) out[i] = kSentinel;
}

// Per row: lse from the split stats; the k smallest of the row's splits * k candidate keys (at least
// k are real: each split gave min(k, its columns) and V >= k), bitonic-sorted in shared memory.
__global__ void __launch_bounds__(kThreads) topk_merge_kernel(int k, int splits, const uint64_t* __restrict__ cand,
                                                              const float2* __restrict__ stats, float* __restrict__ values,
                                                              int64_t* __restrict__ ids, float* __restrict__ lse) {
  __shared__ uint64_t buf[kMaxTopK];
  __shared__ union {
    typename cub::BlockReduce<MaxSum, kThreads>::TempStorage stat;
    typename cub::BlockReduce<uint64_t, kThreads>::TempStorage key;
    SelectStorage select;
  } smem;
  const int64_t row = blockIdx.x;

  MaxSum st{neg_inf(), 0.0f};
  for (int s = threadIdx.x; s < splits; s += kThreads) {
    const float2 p = stats[row * splits + s];
    st = MergeMaxSum()(st, MaxSum{p.x, p.y});
  }
  st = cub::BlockReduce<MaxSum, kThreads>(smem.stat).Reduce(st, MergeMaxSum());
  if (threadIdx.x == 0) lse[row] = lse_of(st);
  __syncthreads();

  const int n = splits * k;
  const uint64_t* src = cand + row * n;
  if (k == 1) {
    uint64_t best = kSentinel;
    for (int i = threadIdx.x; i < n; i += kThreads) best = MinKey()(best, src[i]);
    best = cub::BlockReduce<uint64_t, kThreads>(smem.key).Reduce(best, MinKey());
    if (threadIdx.x == 0) {
      values[row] = topk_value(best);
      ids[row] = topk_id(best);
    }
    return;
  }
  auto get = [&](int i) { return src[i]; };
  const uint64_t threshold = n == k ? kSentinel : select_threshold(get, n, k, smem.select);
  compact_selected(get, n, threshold, smem.select, [&](int slot, uint64_t key) { buf[slot] = key; });
  int width = 1;
  while (width < k) width <<= 1;
  for (int i = k + static_cast<int>(threadIdx.x); i < width; i += kThreads) buf[i] = kSentinel;

  // Bitonic sort of buf[0, width) ascending: keys are distinct, so the order is total.
  for (int size = 2; size <= width; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int t = threadIdx.x; t < width / 2; t += kThreads) {
        const int i = 2 * t - (t & (stride - 1));
        const int j = i + stride;
        const uint64_t a = buf[i], b = buf[j];
        if ((a > b) == ((i & size) == 0)) {
          buf[i] = b;
          buf[j] = a;
        }
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < k; i += kThreads) {
    values[row * k + i] = topk_value(buf[i]);
    ids[row * k + i] = topk_id(buf[i]);
  }
}

__global__ void __launch_bounds__(kThreads) logits_kernel(const CollabInputs in, int splits, int chunk, float* __restrict__ out) {
  __shared__ RowView rv;
  const Split sp = this_split(splits, chunk, in.vocab);
  load_row_view(in, sp.row, rv);
  float* dst = out + sp.row * in.vocab;
  for_each_z(rv, sp.start, sp.end, [&](int col, float z) { dst[col] = z; });
}

template <int T>
struct Sums {
  float v[T];
  int n[T];
};

template <int T>
struct AddSums {
  __device__ __forceinline__ Sums<T> operator()(const Sums<T>& a, const Sums<T>& b) const {
    Sums<T> c;
#pragma unroll
    for (int t = 0; t < T; ++t) {
      c.v[t] = a.v[t] + b.v[t];
      c.n[t] = a.n[t] + b.n[t];
    }
    return c;
  }
};

// Per split: the mass sum exp(z - lse) and token count of each keep set (theta_t, cut_t), for TT >= T
// keep sets held in registers (padding thresholds are NaN, which keep nothing), into ws (B * splits * T).
// A row whose thresholds are all NaN reads nothing.
template <int TT>
__global__ void __launch_bounds__(kThreads) mass_split_kernel(const CollabInputs in, const float* __restrict__ thresholds,
                                                              const int64_t* __restrict__ id_cuts, int num_thresholds,
                                                              const float* __restrict__ lse, int splits, int chunk,
                                                              float* __restrict__ ws, int* __restrict__ count_ws) {
  __shared__ RowView rv;
  __shared__ typename cub::BlockReduce<Sums<TT>, kThreads>::TempStorage reduce;
  const Split sp = this_split(splits, chunk, in.vocab);
  float th[TT];
  int64_t cut[TT];
  float lowest = __int_as_float(0x7f800000);
  bool any = false;
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    const bool real = t < num_thresholds;
    th[t] = real ? thresholds[sp.row * num_thresholds + t] : __int_as_float(0x7fc00000);
    cut[t] = real && id_cuts != nullptr ? id_cuts[sp.row * num_thresholds + t] : INT64_MAX;
    lowest = fminf(lowest, th[t]);  // fminf skips NaN
    any = any || th[t] == th[t];
  }
  float* dst = ws + static_cast<int64_t>(blockIdx.x) * num_thresholds;
  int* count_dst = count_ws + static_cast<int64_t>(blockIdx.x) * num_thresholds;
  if (!any) {  // uniform over the block: every thread read the same thresholds
    for (int t = threadIdx.x; t < num_thresholds; t += kThreads) {
      dst[t] = 0.0f;
      count_dst[t] = 0;
    }
    return;
  }
  load_row_view(in, sp.row, rv);
  const float row_lse = lse[sp.row];
  Sums<TT> acc;
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    acc.v[t] = 0.0f;
    acc.n[t] = 0;
  }
  for_each_z(rv, sp.start, sp.end, [&](int col, float z) {
    if (!(z >= lowest)) return;  // in no keep set: no exp needed
    const float p = expf(z - row_lse);
#pragma unroll
    for (int t = 0; t < TT; ++t) {
      if (in_keep_set(z, col, th[t], cut[t])) {
        acc.v[t] += p;
        acc.n[t] += 1;
      }
    }
  });
  acc = cub::BlockReduce<Sums<TT>, kThreads>(reduce).Reduce(acc, AddSums<TT>());
  if (threadIdx.x == 0) {
#pragma unroll
    for (int t = 0; t < TT; ++t) {
      if (t < num_thresholds) {
        dst[t] = acc.v[t];
        count_dst[t] = acc.n[t];
      }
    }
  }
}

// mass[b, t] / count[b, t] = the splits' partial sums in split order (deterministic).
__global__ void mass_merge_kernel(int64_t count, int num_thresholds, int splits, const float* __restrict__ ws,
                                  const int* __restrict__ count_ws, float* __restrict__ mass,
                                  int64_t* __restrict__ tokens) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int64_t row = i / num_thresholds, t = i % num_thresholds;
  float total = 0.0f;
  int64_t n = 0;
  for (int s = 0; s < splits; ++s) {
    total += ws[(row * splits + s) * num_thresholds + t];
    n += count_ws[(row * splits + s) * num_thresholds + t];
  }
  mass[i] = total;
  tokens[i] = n;
}

// The Gumbel noise of mtkernels/gumbel.py (fmix32: common/fmix32.h), in uint32 / float32 arithmetic.

__device__ __forceinline__ float gumbel(uint32_t key, uint32_t mixed_key, uint32_t col) {
  const uint32_t x = fmix32(fmix32(col ^ mixed_key) + key);
  const float u = __fmul_rn(__fadd_rn(static_cast<float>(x >> 9), 0.5f), 1.1920928955078125e-7f);  // * 2^-23, exact
  return -logf(-logf(u));  // logf, not __logf: stay close to the other backends' noise
}

// Arg-max key: ascending key order = ascending perturbed value, then DEscending column, so the
// maximum key is the best value with the lowest id. The block's winner carries its z along.
struct Best {
  uint64_t key;
  float z;
};

struct MaxBest {
  __device__ __forceinline__ Best operator()(const Best& a, const Best& b) const { return a.key >= b.key ? a : b; }
};

__global__ void __launch_bounds__(kThreads) gumbel_split_kernel(const CollabInputs in, const float* __restrict__ threshold,
                                                                const int64_t* __restrict__ id_cut,
                                                                const int64_t* __restrict__ keys, int splits, int chunk,
                                                                ulonglong2* __restrict__ ws) {
  __shared__ RowView rv;
  __shared__ typename cub::BlockReduce<Best, kThreads>::TempStorage reduce;
  const Split sp = this_split(splits, chunk, in.vocab);
  load_row_view(in, sp.row, rv);
  const float th = threshold[sp.row];
  const int64_t cut = id_cut != nullptr ? id_cut[sp.row] : INT64_MAX;
  const uint32_t key = static_cast<uint32_t>(static_cast<uint64_t>(keys[sp.row]));
  const uint32_t mixed_key = fmix32(key);
  Best best{0, 0.0f};  // key 0 loses to every column (whose key is at least order_key(-inf) << 32)
  for_each_z(rv, sp.start, sp.end, [&](int col, float z) {
    // Tokens outside the keep set compete at -inf, as in the reference.
    const float perturbed =
        in_keep_set(z, col, th, cut) ? __fadd_rn(z, gumbel(key, mixed_key, static_cast<uint32_t>(col))) : neg_inf();
    const uint64_t k = (static_cast<uint64_t>(order_key(perturbed)) << 32) | static_cast<uint32_t>(~col);
    if (k > best.key) best = Best{k, z};
  });
  best = cub::BlockReduce<Best, kThreads>(reduce).Reduce(best, MaxBest());
  if (threadIdx.x == 0) ws[blockIdx.x] = make_ulonglong2(best.key, __float_as_uint(best.z));
}

__global__ void gumbel_merge_kernel(int64_t batch, int splits, const ulonglong2* __restrict__ ws,
                                    int64_t* __restrict__ ids, float* __restrict__ z) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= batch) return;
  ulonglong2 best = ws[row * splits];
  for (int s = 1; s < splits; ++s) {
    const ulonglong2 p = ws[row * splits + s];
    if (p.x > best.x) best = p;
  }
  ids[row] = static_cast<uint32_t>(~best.x);
  z[row] = __uint_as_float(static_cast<uint32_t>(best.y));
}

// ---- host side -------------------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits per row: enough blocks to fill the GPU, columns per split within [min_chunk, max_chunk]
// (max_chunk wins), and no empty split.
int choose_splits(int64_t batch, int64_t vocab, int64_t min_chunk, int64_t max_chunk, int num_sms) {
  const int64_t wanted = ceil_div(static_cast<int64_t>(std::max(num_sms, 1)) * kBlocksPerSm, std::max<int64_t>(batch, 1));
  int64_t s = std::min(wanted, ceil_div(vocab, min_chunk));
  s = std::max({s, ceil_div(vocab, max_chunk), int64_t{1}});
  return static_cast<int>(ceil_div(vocab, ceil_div(vocab, s)));
}

bool valid(const CollabInputs& in) {
  return in.num_inputs >= 1 && in.num_inputs <= kMaxInputs && in.weights != nullptr && in.temperature != nullptr &&
         in.batch >= 0 && in.vocab >= 1 && in.vocab <= INT_MAX;
}

// 1-D grid of B * splits blocks, and the columns per split; false if it does not fit a launch.
bool split_grid(const CollabInputs& in, int splits, int& blocks, int& chunk) {
  if (splits < 1 || splits > in.vocab || in.batch * splits > INT_MAX) return false;
  blocks = static_cast<int>(in.batch * splits);
  chunk = static_cast<int>(ceil_div(in.vocab, splits));
  return true;
}

}  // namespace

int topk_splits(int64_t batch, int64_t vocab, int k, int num_sms) {
  // A split selects from its chunk, the merge from splits * k candidates, one block per row each:
  // chunk ~ sqrt(V * k) balances the two (e.g. V = 128K: 1K columns for k = 1, 2.5K for k = 50).
  const int64_t balanced = static_cast<int64_t>(std::sqrt(static_cast<double>(vocab) * k));
  const int64_t min_chunk = std::min<int64_t>(std::max<int64_t>(kMinChunk, balanced), kMaxChunk);
  return choose_splits(batch, vocab, min_chunk, kMaxChunk, num_sms);
}

int reduce_splits(int64_t batch, int64_t vocab, int num_sms) {
  return choose_splits(batch, vocab, kMinChunk, INT_MAX, num_sms);
}

cudaError_t collab_topk(const CollabInputs& in, int k, int splits, uint64_t* cand_ws, float* stat_ws, float* values,
                        int64_t* ids, float* lse, int /*num_sms*/, cudaStream_t stream) {
  int blocks, chunk;
  if (!valid(in) || k < 1 || k > kMaxTopK || k > in.vocab || !split_grid(in, splits, blocks, chunk) ||
      chunk > kMaxChunk || in.batch > INT_MAX)
    return cudaErrorInvalidValue;
  if (in.batch == 0) return cudaSuccess;
  const size_t smem = k == 1 ? 0 : static_cast<size_t>(chunk) * sizeof(float);
  float2* stats = reinterpret_cast<float2*>(stat_ws);
  topk_split_kernel<<<blocks, kThreads, smem, stream>>>(in, k, splits, chunk, cand_ws, stats);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  topk_merge_kernel<<<static_cast<int>(in.batch), kThreads, 0, stream>>>(k, splits, cand_ws, stats, values, ids, lse);
  return cudaGetLastError();
}

cudaError_t collab_logits(const CollabInputs& in, float* z, int num_sms, cudaStream_t stream) {
  if (!valid(in)) return cudaErrorInvalidValue;
  if (in.batch == 0) return cudaSuccess;
  // No merge here, so split finer than the reductions do: 2x the blocks, at least a tile per block.
  const int splits = choose_splits(in.batch, in.vocab, kTile, INT_MAX, 2 * num_sms);
  int blocks, chunk;
  if (!split_grid(in, splits, blocks, chunk)) return cudaErrorInvalidValue;
  logits_kernel<<<blocks, kThreads, 0, stream>>>(in, splits, chunk, z);
  return cudaGetLastError();
}

cudaError_t collab_threshold_mass(const CollabInputs& in, const float* thresholds, const int64_t* id_cuts,
                                  int num_thresholds, const float* lse, int splits, float* mass_ws, int* count_ws,
                                  float* mass, int64_t* count, cudaStream_t stream) {
  int blocks, chunk;
  if (!valid(in) || num_thresholds < 0 || num_thresholds > kMaxThresholds || !split_grid(in, splits, blocks, chunk))
    return cudaErrorInvalidValue;
  if (in.batch == 0 || num_thresholds == 0) return cudaSuccess;
  const int t = num_thresholds;
  if (t <= 1) {
    mass_split_kernel<1><<<blocks, kThreads, 0, stream>>>(in, thresholds, id_cuts, t, lse, splits, chunk, mass_ws, count_ws);
  } else if (t <= 2) {
    mass_split_kernel<2><<<blocks, kThreads, 0, stream>>>(in, thresholds, id_cuts, t, lse, splits, chunk, mass_ws, count_ws);
  } else if (t <= 4) {
    mass_split_kernel<4><<<blocks, kThreads, 0, stream>>>(in, thresholds, id_cuts, t, lse, splits, chunk, mass_ws, count_ws);
  } else if (t <= 8) {
    mass_split_kernel<8><<<blocks, kThreads, 0, stream>>>(in, thresholds, id_cuts, t, lse, splits, chunk, mass_ws, count_ws);
  } else {
    mass_split_kernel<16><<<blocks, kThreads, 0, stream>>>(in, thresholds, id_cuts, t, lse, splits, chunk, mass_ws,
                                                          count_ws);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t entries = in.batch * t;
  mass_merge_kernel<<<static_cast<unsigned>(ceil_div(entries, kThreads)), kThreads, 0, stream>>>(
      entries, t, splits, mass_ws, count_ws, mass, count);
  return cudaGetLastError();
}

cudaError_t collab_gumbel_argmax(const CollabInputs& in, const float* threshold, const int64_t* id_cut,
                                 const int64_t* keys, int splits, uint64_t* best_ws, int64_t* ids, float* z,
                                 cudaStream_t stream) {
  int blocks, chunk;
  if (!valid(in) || !split_grid(in, splits, blocks, chunk)) return cudaErrorInvalidValue;
  if (in.batch == 0) return cudaSuccess;
  ulonglong2* ws = reinterpret_cast<ulonglong2*>(best_ws);
  gumbel_split_kernel<<<blocks, kThreads, 0, stream>>>(in, threshold, id_cut, keys, splits, chunk, ws);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  gumbel_merge_kernel<<<static_cast<unsigned>(ceil_div(in.batch, kThreads)), kThreads, 0, stream>>>(in.batch, splits, ws,
                                                                                                    ids, z);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mtk
