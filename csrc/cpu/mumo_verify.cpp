// MuMo verification row kernel (see mumo_verify.h).
#include "cpu/mumo_verify.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/vec_math.h"

namespace mtk {
namespace mumo {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kBlock = 4096;  // elements per block: 16 KB of float32, read twice from L1

template <DType D>
inline float load1(const void* base, int64_t j) {
  if constexpr (D == DType::kFloat32) return static_cast<const float*>(base)[j];
  else if constexpr (D == DType::kBFloat16) return bf16_bits_to_float(static_cast<const uint16_t*>(base)[j]);
  else return half_bits_to_float(static_cast<const uint16_t*>(base)[j]);
}

#if MTK_AVX2
template <DType D>
inline __m256 load8(const void* base, int64_t j) {
  if constexpr (D == DType::kFloat32) return _mm256_loadu_ps(static_cast<const float*>(base) + j);
  else if constexpr (D == DType::kBFloat16) return load8_bf16(static_cast<const uint16_t*>(base) + j);
  else return load8_f16(static_cast<const uint16_t*>(base) + j);
}

// max of x[0:n]; four accumulators so the max latency does not bound the loop
template <DType D>
float block_max(const void* x, int64_t n) {
  __m256 m0 = _mm256_set1_ps(-kInf), m1 = m0, m2 = m0, m3 = m0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    m0 = _mm256_max_ps(load8<D>(x, j), m0);
    m1 = _mm256_max_ps(load8<D>(x, j + 8), m1);
    m2 = _mm256_max_ps(load8<D>(x, j + 16), m2);
    m3 = _mm256_max_ps(load8<D>(x, j + 24), m3);
  }
  for (; j + 8 <= n; j += 8) m0 = _mm256_max_ps(load8<D>(x, j), m0);
  float m = hmax8(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
  for (; j < n; ++j) m = std::max(m, load1<D>(x, j));
  return m;
}

// sum of exp(x[j] - m) over x[0:n], m finite and >= every x[j] (so no exp argument is positive)
template <DType D>
float block_sum(const void* x, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    s0 = _mm256_add_ps(s0, exp8(_mm256_sub_ps(load8<D>(x, j), vm)));
    s1 = _mm256_add_ps(s1, exp8(_mm256_sub_ps(load8<D>(x, j + 8), vm)));
    s2 = _mm256_add_ps(s2, exp8(_mm256_sub_ps(load8<D>(x, j + 16), vm)));
    s3 = _mm256_add_ps(s3, exp8(_mm256_sub_ps(load8<D>(x, j + 24), vm)));
  }
  for (; j + 8 <= n; j += 8) s0 = _mm256_add_ps(s0, exp8(_mm256_sub_ps(load8<D>(x, j), vm)));
  float s = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; j < n; ++j) s += exp_scalar(load1<D>(x, j) - m);
  return s;
}
#else
template <DType D>
float block_max(const void* x, int64_t n) {
  float m = -kInf;
  for (int64_t j = 0; j < n; ++j) {
    const float v = load1<D>(x, j);
    m = v > m ? v : m;  // NaN is not a maximum (it reaches the sum)
  }
  return m;
}

template <DType D>
float block_sum(const void* x, int64_t n, float m) {
  float s = 0.0f;
  for (int64_t j = 0; j < n; ++j) s += exp_scalar(load1<D>(x, j) - m);
  return s;
}
#endif

template <DType D>
inline const void* offset(const void* base, int64_t elements) {
  using T = std::conditional_t<D == DType::kFloat32, float, uint16_t>;
  return static_cast<const T*>(base) + elements;
}

// log sum exp of one row: blocks small enough to stay in L1 between their two sweeps
template <DType D>
float row_lse(const void* row, int64_t vocab) {
  float m = -kInf;
  double s = 0.0;
  for (int64_t j = 0; j < vocab; j += kBlock) {
    const int64_t n = std::min(kBlock, vocab - j);
    const void* x = offset<D>(row, j);
    const float bm = block_max<D>(x, n);
    if (bm > m) {  // the running sum moves to the new maximum (nothing to move while m = -inf)
      if (m != -kInf) s *= std::exp(static_cast<double>(m) - static_cast<double>(bm));
      m = bm;
    }
    if (m != -kInf && m != kInf) s += block_sum<D>(x, n, m);
    else if (m == kInf) return kInf;  // +inf logit: lse is +inf (and the score NaN, as the spec's)
  }
  if (m == -kInf) return -kInf;  // every logit masked
  return static_cast<float>(static_cast<double>(m) + std::log(s));
}

template <DType D>
void run(const LsePickProblem& p, float* lse, float* picked, const Executor& ex) {
  ex.parallel_for(p.n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = p.rows ? p.rows[i] : i;
      const void* row = offset<D>(p.logits, r * p.row_stride);
      lse[i] = row_lse<D>(row, p.vocab);
      if (p.ids) picked[i] = load1<D>(row, p.ids[i]);
    }
  });
}

}  // namespace

void lse_pick(const LsePickProblem& p, float* lse, float* picked, const Executor& ex) {
  switch (p.dtype) {
    case DType::kFloat32: return run<DType::kFloat32>(p, lse, picked, ex);
    case DType::kBFloat16: return run<DType::kBFloat16>(p, lse, picked, ex);
    case DType::kFloat16: return run<DType::kFloat16>(p, lse, picked, ex);
  }
}

}  // namespace mumo
}  // namespace mtk
