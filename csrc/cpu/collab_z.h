// The one place that computes combined logits z, a block of columns at a time, plus the split of
// the work into (row, vocabulary slice) tasks. Shared by all four collab kernels so that z is
// bit-identical between them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/collab.h"
#include "cpu/vec_math.h"

namespace mtk {
namespace collab {

constexpr int kBlock = 1024;  // columns per z block: 4 KiB of z, stays in L1
constexpr int64_t kMinSliceCols = 8192;  // smaller slices cost more in merging than they gain
constexpr int64_t kSliceAlign = 64;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline int64_t element_size(DType d) { return d == DType::kFloat32 ? 4 : 2; }

inline float load_one(DType d, const char* p, int64_t i) {
  switch (d) {
    case DType::kFloat32: return reinterpret_cast<const float*>(p)[i];
    case DType::kBFloat16: return bf16_bits_to_float(reinterpret_cast<const uint16_t*>(p)[i]);
    default: return half_bits_to_float(reinterpret_cast<const uint16_t*>(p)[i]);
  }
}

#if MTK_AVX2
inline void widen(__m256 v, __m256d& lo, __m256d& hi) {
  lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
}

// Columns i..i+15 of one model, widened to double in registers (x[0..3], 4 lanes each), and folded
// into the running minimums that detect -inf. The switch is on the model's dtype (the same branch
// every chunk, so it is predicted); it lets the accumulators stay in registers. fp32 converts
// straight from memory, which saves the lane extraction.
inline void load16(DType d, const char* p, int64_t i, __m256d x[4], __m256& min0, __m256& min1) {
  __m256 v0, v1;
  switch (d) {
    case DType::kFloat32: {
      const float* f = reinterpret_cast<const float*>(p) + i;
      min0 = _mm256_min_ps(_mm256_loadu_ps(f), min0);  // a NaN leaves min unchanged (second operand)
      min1 = _mm256_min_ps(_mm256_loadu_ps(f + 8), min1);
      for (int k = 0; k < 4; ++k) x[k] = _mm256_cvtps_pd(_mm_loadu_ps(f + 4 * k));
      return;
    }
    case DType::kBFloat16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(p) + i;
      v0 = load8_bf16(h);
      v1 = load8_bf16(h + 8);
      break;
    }
    default: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(p) + i;
      v0 = load8_f16(h);
      v1 = load8_f16(h + 8);
      break;
    }
  }
  min0 = _mm256_min_ps(v0, min0);
  min1 = _mm256_min_ps(v1, min1);
  widen(v0, x[0], x[1]);
  widen(v1, x[2], x[3]);
}

inline __m256 to_float(__m256d lo, __m256d hi) { return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo)); }
#endif

// Computes z a block of columns at a time.
//
// The sum is accumulated in double, starting from 0, in model order: products of two floats are
// exact in double, so fma(w, x, acc) == acc + w * x, which is exactly the reference's float64 sum.
// It is then divided by tau in double (correctly rounded, as the reference's division; skipped for
// tau == 1, where it is exact) and rounded once to float, so z is bit-identical to float32(reference
// z) and thresholds taken from the reference or from another pass select exactly the same tokens.
// The vector body and the scalar tail do the same operations, so a column's z never depends on
// block or slice boundaries.
class ZComputer {
 public:
  explicit ZComputer(const Problem& p) : p_(p) {}

  // z[0..n) = combined logits of row b, columns [j0, j0 + n); returns max z over the block (a NaN
  // may or may not show in it; callers that care check separately). With kFlagInf, *any_inf is set
  // when some unmasked column's z is +-inf (an overflow, or an infinite input).
  template <bool kFlagInf = false>
  float block(int64_t b, int64_t j0, int n, float* z, bool* any_inf = nullptr) const {
    const int M = static_cast<int>(p_.models.size());
    const float* w = p_.weights + b * M;
    const double tau = p_.temperature[b];
    const bool divide = tau != 1.0;  // a uniform branch per row: predicted
    std::vector<const char*> heap_rows;
    std::vector<int64_t> heap_sizes;
    const char* stack_rows[kMaxModelsInline];
    int64_t stack_sizes[kMaxModelsInline];
    const char** rows = stack_rows;
    int64_t* elem_size = stack_sizes;
    if (M > kMaxModelsInline) {
      heap_rows.resize(M);
      heap_sizes.resize(M);
      rows = heap_rows.data();
      elem_size = heap_sizes.data();
    }
    for (int m = 0; m < M; ++m) {
      const ModelInput& in = p_.models[m];
      elem_size[m] = element_size(in.dtype);
      rows[m] = static_cast<const char*>(in.data) + (b * in.row_stride + j0) * elem_size[m];
    }
    float zmax = kNegInf;
    int i = 0;
#if MTK_AVX2
    const __m256 ninf = _mm256_set1_ps(kNegInf);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmax = ninf, vinf = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
      __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
      __m256 min0 = _mm256_setzero_ps(), min1 = min0;  // -inf here iff some model has -inf
      for (int m = 0; m < M; ++m) {
        // Rows are streamed from memory: ask for them a little ahead of the hardware prefetcher.
        _mm_prefetch(rows[m] + (i + kPrefetchCols) * elem_size[m], _MM_HINT_T0);
        __m256d x[4];
        load16(p_.models[m].dtype, rows[m], i, x, min0, min1);
        const __m256d wm = _mm256_set1_pd(w[m]);
        a0 = _mm256_fmadd_pd(wm, x[0], a0);
        a1 = _mm256_fmadd_pd(wm, x[1], a1);
        a2 = _mm256_fmadd_pd(wm, x[2], a2);
        a3 = _mm256_fmadd_pd(wm, x[3], a3);
      }
      if (divide) {
        const __m256d vtau = _mm256_set1_pd(tau);
        a0 = _mm256_div_pd(a0, vtau);
        a1 = _mm256_div_pd(a1, vtau);
        a2 = _mm256_div_pd(a2, vtau);
        a3 = _mm256_div_pd(a3, vtau);
      }
      const __m256 f0 = to_float(a0, a1), f1 = to_float(a2, a3);
      const __m256 masked0 = _mm256_cmp_ps(min0, ninf, _CMP_EQ_OQ), masked1 = _mm256_cmp_ps(min1, ninf, _CMP_EQ_OQ);
      if (kFlagInf) {
        const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
        vinf = _mm256_or_ps(vinf, _mm256_andnot_ps(masked0, _mm256_cmp_ps(_mm256_and_ps(f0, abs_mask), inf, _CMP_EQ_OQ)));
        vinf = _mm256_or_ps(vinf, _mm256_andnot_ps(masked1, _mm256_cmp_ps(_mm256_and_ps(f1, abs_mask), inf, _CMP_EQ_OQ)));
      }
      const __m256 z0 = _mm256_blendv_ps(f0, ninf, masked0);
      const __m256 z1 = _mm256_blendv_ps(f1, ninf, masked1);
      _mm256_storeu_ps(z + i, z0);
      _mm256_storeu_ps(z + i + 8, z1);
      vmax = _mm256_max_ps(vmax, _mm256_max_ps(z0, z1));
    }
    zmax = hmax8(vmax);
    if (kFlagInf && _mm256_movemask_ps(vinf)) *any_inf = true;
#endif
    for (; i < n; ++i) {
      double acc = 0.0;
      bool masked = false;
      for (int m = 0; m < M; ++m) {
        const float v = load_one(p_.models[m].dtype, rows[m], i);
        masked = masked || v == kNegInf;
        acc = std::fma(static_cast<double>(w[m]), static_cast<double>(v), acc);
      }
      if (divide) acc /= tau;
      z[i] = masked ? kNegInf : static_cast<float>(acc);
      if (kFlagInf && !masked && std::isinf(z[i])) *any_inf = true;
      zmax = std::max(zmax, z[i]);
    }
    return zmax;
  }

  // Calls visit(j0, n, z, zmax) for consecutive blocks covering columns [lo, hi) of row b.
  template <class Visit>
  void for_each_block(int64_t b, int64_t lo, int64_t hi, Visit&& visit) const {
    alignas(64) float z[kBlock];
    for (int64_t j0 = lo; j0 < hi; j0 += kBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kBlock, hi - j0));
      const float zmax = block(b, j0, n, z);
      visit(j0, n, static_cast<const float*>(z), zmax);
    }
  }

 private:
  static constexpr int kMaxModelsInline = 16;
  static constexpr int64_t kPrefetchCols = 1024;
  const Problem& p_;
};

// Rows are cut into `per_row` slices of `cols` columns; task t = (row t / per_row, slice t % per_row).
struct Slicing {
  int64_t per_row;
  int64_t cols;
  int64_t tasks(int64_t batch) const { return batch * per_row; }
  int64_t lo(int64_t slice) const { return slice * cols; }
  int64_t hi(int64_t slice, int64_t vocab) const { return std::min(vocab, (slice + 1) * cols); }
};

// Enough tasks (about 4 per thread) that a small batch still uses every core, but slices of at
// least kMinSliceCols columns; a large batch gets one slice per row.
inline Slicing plan_slices(int64_t batch, int64_t vocab, int num_threads) {
  const int64_t want_tasks = 4 * static_cast<int64_t>(std::max(1, num_threads));
  int64_t per_row = (want_tasks + batch - 1) / batch;
  per_row = std::max<int64_t>(1, std::min(per_row, vocab / kMinSliceCols));
  int64_t cols = (vocab + per_row - 1) / per_row;
  cols = (cols + kSliceAlign - 1) / kSliceAlign * kSliceAlign;
  return Slicing{(vocab + cols - 1) / cols, cols};
}

// Runs task(scratch, row, lo, hi, task_index) for every (row, slice) task in parallel. Each chunk of
// tasks (one per thread) makes its scratch once with make_scratch() and reuses it for all its tasks,
// so per-task working memory is per thread, not per row.
template <class MakeScratch, class Task>
void run_tasks(const Problem& p, const Slicing& s, const Executor& ex, MakeScratch&& make_scratch, Task&& task) {
  ex.parallel_for(s.tasks(p.batch), [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slice = t % s.per_row;
      task(scratch, t / s.per_row, s.lo(slice), s.hi(slice, p.vocab), t);
    }
  });
}

// Runs task(row, lo, hi, task_index) for every (row, slice) task in parallel.
template <class Task>
void run_tasks(const Problem& p, const Slicing& s, const Executor& ex, Task&& task) {
  run_tasks(p, s, ex, [] { return 0; }, [&](int, int64_t b, int64_t lo, int64_t hi, int64_t t) { task(b, lo, hi, t); });
}

}  // namespace collab
}  // namespace mtk
