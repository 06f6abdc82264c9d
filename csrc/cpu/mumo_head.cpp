// Cross-entropy row kernel of the MuMo head loss (see mumo_head.h). Each row is swept in
// L1-sized blocks: a max sweep, then the block's Σ e^(x − m) from L1 in 8-float vectors (AVX2, or
// scalar), added per row in double (150k-long rows stay accurate at no cost). The row formulas are
// common/ce_row.h's, instantiated with double row scalars.
#include "cpu/mumo_head.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/ce_row.h"
#include "cpu/vec_math.h"

namespace mtk {
namespace mumo {
namespace {

constexpr int64_t kBlock = 2048;  // floats per block: 8 KiB, re-read from L1 by the sum sweep
constexpr float kInf = std::numeric_limits<float>::infinity();
using Stats = ce::LseStats<double>;

float block_max(const float* x, int64_t n) {
  int64_t j = 0;
  float m = -kInf;
#if MTK_AVX2
  __m256 vm = _mm256_set1_ps(-kInf);
  for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
  m = hmax8(vm);
#endif
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// NaN logits: max ignores them, the sum does not (a NaN row gets a NaN loss).
float block_sum_exp(const float* x, int64_t n, float origin) {
  int64_t j = 0;
  float s = 0.0f;
#if MTK_AVX2
  const __m256 o = _mm256_set1_ps(origin);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();  // two chains hide the add latency
  for (; j + 16 <= n; j += 16) {
    a0 = _mm256_add_ps(a0, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), o)));
    a1 = _mm256_add_ps(a1, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), o)));
  }
  for (; j + 8 <= n; j += 8) a0 = _mm256_add_ps(a0, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), o)));
  s = hsum8(_mm256_add_ps(a0, a1));
#endif
  for (; j < n; ++j) s += exp_scalar(x[j] - origin);
  return s;
}

Stats row_stats(const float* x, int64_t cols) {
  Stats a = ce::empty_stats<double>();
  for (int64_t j = 0; j < cols; j += kBlock) {
    const int64_t n = std::min(kBlock, cols - j);
    const float bm = block_max(x + j, n);
    ce::raise_max<double>(a, std::max<double>(a.m, bm));
    a.s += block_sum_exp(x + j, n, static_cast<float>(ce::shift_origin(a.m)));
  }
  return a;
}

// x <- scale · softmax(x) in place, softmax_j = e^((x_j − m) − log_s); the caller subtracts the onehot.
void write_softmax(float* x, int64_t cols, float m, float log_s, float scale) {
  int64_t j = 0;
#if MTK_AVX2
  const __m256 vm = _mm256_set1_ps(m), vl = _mm256_set1_ps(log_s), vs = _mm256_set1_ps(scale);
  for (; j + 8 <= cols; j += 8) {
    const __m256 z = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vl);
    _mm256_storeu_ps(x + j, _mm256_mul_ps(exp8(z), vs));
  }
#endif
  for (; j < cols; ++j) x[j] = exp_scalar((x[j] - m) - log_s) * scale;
}

void process_row(const CeProblem& p, float* loss, int64_t i) {
  float* x = p.logits + i * p.stride;
  const int64_t g = p.targets[i];
  if (g == p.ignore_index) {
    loss[i] = 0.0f;
    if (p.compute_grad) std::fill(x, x + p.cols, 0.0f);
    return;
  }
  const Stats a = row_stats(x, p.cols);
  const ce::RowResult<double> r = ce::row_result<double>(a, x[g]);
  loss[i] = static_cast<float>(r.loss);
  if (!p.compute_grad) return;
  if (!r.has_distribution) {
    std::fill(x, x + p.cols, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  const float scale = p.grad_scale[i];
  write_softmax(x, p.cols, static_cast<float>(a.m), static_cast<float>(r.log_s), scale);
  x[g] -= scale;
}

}  // namespace

void ce_rows(const CeProblem& p, float* loss, const Executor& ex) {
  ex.parallel_for(p.rows, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) process_row(p, loss, i);
  });
}

}  // namespace mumo
}  // namespace mtk
