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

#if defined(__AVX512F__) && defined(__AVX512BW__)
// 16 lanes: the exp sweep is the kernel's only arithmetic, and at 8 lanes it, not the memory read,
// bounds a row.
template <DType D>
inline __m512 load16(const void* base, int64_t j) {
  if constexpr (D == DType::kFloat32) {
    return _mm512_loadu_ps(static_cast<const float*>(base) + j);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + j));
    if constexpr (D == DType::kBFloat16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}

// exp(x) for x <= 0 as 2^t, t = x log2(e) = n + f, |f| <= 1/2: 2^f by a degree-5 polynomial
// (relative error 1.8e-7, fitted to 2^f on [-1/2, 1/2]), 2^n applied by scalef, which flushes to 0
// far below the float range. t is raised to -150 first (2^-150 is 0), so -inf gives 0, not NaN;
// max(-150, t) keeps a NaN t. Rounding t costs a relative error of |t| 6e-8 in exp, only where the
// term is small (it weighs 2^t). Eleven vector operations a lane block with the subtraction.
constexpr float kExp2C1 = 0.6931468844413757f, kExp2C2 = 0.24022237956523895f, kExp2C3 = 0.05550893023610115f;
constexpr float kExp2C4 = 0.009671707637608051f, kExp2C5 = 0.0013218676904216409f;

inline __m512 exp16(__m512 x) {
  const __m512 t = _mm512_max_ps(_mm512_set1_ps(-150.0f), _mm512_mul_ps(x, _mm512_set1_ps(kLog2e)));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kExp2C5), f, _mm512_set1_ps(kExp2C4));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C3));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C1));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

template <DType D>
float block_max(const void* x, int64_t n) {
  __m512 m0 = _mm512_set1_ps(-kInf), m1 = m0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    m0 = _mm512_max_ps(load16<D>(x, j), m0);  // a NaN element is not a maximum (it reaches the sum)
    m1 = _mm512_max_ps(load16<D>(x, j + 16), m1);
  }
  for (; j + 16 <= n; j += 16) m0 = _mm512_max_ps(load16<D>(x, j), m0);
  float m = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  for (; j < n; ++j) m = std::max(m, load1<D>(x, j));
  return m;
}

template <DType D>
float block_sum(const void* x, int64_t n, float m) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(load16<D>(x, j), vm)));
    s1 = _mm512_add_ps(s1, exp16(_mm512_sub_ps(load16<D>(x, j + 16), vm)));
  }
  for (; j + 16 <= n; j += 16) s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(load16<D>(x, j), vm)));
  float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  for (; j < n; ++j) s += exp_scalar(load1<D>(x, j) - m);
  return s;
}
// One sweep: the block's maximum and sum exp(x[j] - m) for a finite reference m (see row_lse).
template <DType D>
float block_max_sum(const void* x, int64_t n, float m, float& block_max_out) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 m0 = _mm512_set1_ps(-kInf), m1 = m0, s0 = _mm512_setzero_ps(), s1 = s0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 a = load16<D>(x, j), b = load16<D>(x, j + 16);
    m0 = _mm512_max_ps(a, m0);
    m1 = _mm512_max_ps(b, m1);
    s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(a, vm)));
    s1 = _mm512_add_ps(s1, exp16(_mm512_sub_ps(b, vm)));
  }
  for (; j + 16 <= n; j += 16) {
    const __m512 a = load16<D>(x, j);
    m0 = _mm512_max_ps(a, m0);
    s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(a, vm)));
  }
  float mx = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  for (; j < n; ++j) {
    const float v = load1<D>(x, j);
    mx = std::max(mx, v);
    s += std::exp(v - m);
  }
  block_max_out = mx;
  return s;
}
#elif MTK_AVX2
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

#if !(defined(__AVX512F__) && defined(__AVX512BW__))
// Without 16 lanes: the two sweeps, the second from L1.
template <DType D>
float block_max_sum(const void* x, int64_t n, float m, float& block_max_out) {
  block_max_out = block_max<D>(x, n);
  return block_max_out > m + 60.0f ? 0.0f : block_sum<D>(x, n, m);  // row_lse redoes the first case
}
#endif

template <DType D>
inline const void* offset(const void* base, int64_t elements) {
  using T = std::conditional_t<D == DType::kFloat32, float, uint16_t>;
  return static_cast<const T*>(base) + elements;
}

// Exponent slack of the shift reference: sums of exp(x - m) for x up to m + kSlack stay finite in
// float (e^64 * kBlock < 3e38) and lose nothing (relative precision does not depend on magnitude).
constexpr float kSlack = 64.0f;

// log sum exp of one row, in one sweep per L1-sized block. The shift reference m is a logit of the
// row (the maximum of its first elements), not the running maximum: sum exp(x - m) is then exact
// up to rounding whenever no x exceeds m by more than kSlack, so the block's maximum and its sum
// come from the same sweep. A block that breaks this (a much larger logit, or a reference that is
// still -inf) moves the reference to its maximum and is summed again from L1: rare, and rows whose
// every logit is -inf give -inf.
template <DType D>
float row_lse(const void* row, int64_t vocab) {
  float m = block_max<D>(row, std::min<int64_t>(vocab, 64));
  double s = 0.0;  // sum of exp(x - m) over the blocks done
  for (int64_t j = 0; j < vocab; j += kBlock) {
    const int64_t n = std::min(kBlock, vocab - j);
    const void* x = offset<D>(row, j);
    float bm, bs;
    if (m == -kInf) {
      bm = block_max<D>(x, n);
      if (bm == -kInf) continue;  // nothing but masked logits so far
      bs = bm == kInf ? 0.0f : block_sum<D>(x, n, bm);
      m = bm;
    } else {
      bs = block_max_sum<D>(x, n, m, bm);
      if (bm > m + kSlack) {
        if (bm != kInf) {
          s *= std::exp(static_cast<double>(m) - static_cast<double>(bm));
          bs = block_sum<D>(x, n, bm);
        }
        m = bm;
      }
    }
    if (m == kInf) return kInf;  // a +inf logit: lse is +inf (and the score NaN, as the spec's)
    s += bs;
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
