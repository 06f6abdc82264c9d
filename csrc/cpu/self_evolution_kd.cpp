// Self-evolution KD row kernel (see self_evolution_kd.h). Each row is swept over the vocabulary
// with 8-float vectors (F8 below: AVX2, or a plain-array twin); sums are taken per L1-sized block in
// float and carried per row in double, which keeps 150k-long rows accurate at no cost. The formulas
// (statistics, row terms, the hard-loss column) are common/kd_row.h's, instantiated for F8 lanes and
// double row scalars.
#include "cpu/self_evolution_kd.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/vec_math.h"

namespace mtk {
namespace kd {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kBlock = 1024;  // elements per block: student + teacher blocks stay in L1

// ---- 8-lane float vector ----------------------------------------------------------------------

#if MTK_AVX2
struct F8 {
  __m256 v;
};
inline F8 set1(float x) { return {_mm256_set1_ps(x)}; }
inline F8 loadu(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void storeu(float* p, F8 a) { _mm256_storeu_ps(p, a.v); }
inline F8 operator+(F8 a, F8 b) { return {_mm256_add_ps(a.v, b.v)}; }
inline F8 operator-(F8 a, F8 b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline F8 operator*(F8 a, F8 b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline F8 operator/(F8 a, F8 b) { return {_mm256_div_ps(a.v, b.v)}; }
inline F8 fma(F8 a, F8 b, F8 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }  // a * b + c
inline F8 k_max(F8 a, F8 b) { return {_mm256_max_ps(a.v, b.v)}; }
inline F8 k_min(F8 a, F8 b) { return {_mm256_min_ps(a.v, b.v)}; }
inline F8 k_exp(F8 a) { return {exp8(a.v)}; }  // arguments here are <= ~0 (or bounded, see r q)
// a * b where a > 0, else 0 (also where b is infinite or NaN)
inline F8 mul_where_positive(F8 a, F8 b) {
  return {_mm256_and_ps(_mm256_cmp_ps(a.v, _mm256_setzero_ps(), _CMP_GT_OQ), _mm256_mul_ps(a.v, b.v))};
}
inline float hsum(F8 a) { return hsum8(a.v); }
inline float hmax(F8 a) { return hmax8(a.v); }
#else
struct F8 {
  float v[8];
};
template <class Fn>
inline F8 map(Fn fn) {
  F8 r;
  for (int k = 0; k < 8; ++k) r.v[k] = fn(k);
  return r;
}
inline F8 set1(float x) { return map([&](int) { return x; }); }
inline F8 loadu(const float* p) { return map([&](int k) { return p[k]; }); }
inline void storeu(float* p, F8 a) { std::copy(a.v, a.v + 8, p); }
inline F8 operator+(F8 a, F8 b) { return map([&](int k) { return a.v[k] + b.v[k]; }); }
inline F8 operator-(F8 a, F8 b) { return map([&](int k) { return a.v[k] - b.v[k]; }); }
inline F8 operator*(F8 a, F8 b) { return map([&](int k) { return a.v[k] * b.v[k]; }); }
inline F8 operator/(F8 a, F8 b) { return map([&](int k) { return a.v[k] / b.v[k]; }); }
inline F8 fma(F8 a, F8 b, F8 c) { return map([&](int k) { return std::fma(a.v[k], b.v[k], c.v[k]); }); }
inline F8 k_max(F8 a, F8 b) { return map([&](int k) { return std::max(a.v[k], b.v[k]); }); }
inline F8 k_min(F8 a, F8 b) { return map([&](int k) { return std::min(a.v[k], b.v[k]); }); }
inline F8 k_exp(F8 a) { return map([&](int k) { return exp_scalar(std::min(a.v[k], kExpHi)); }); }
inline F8 mul_where_positive(F8 a, F8 b) { return map([&](int k) { return a.v[k] > 0 ? a.v[k] * b.v[k] : 0.0f; }); }
inline float hsum(F8 a) {
  float s = 0.0f;
  for (float x : a.v) s += x;
  return s;
}
inline float hmax(F8 a) { return *std::max_element(a.v, a.v + 8); }
#endif

// log(1 + u) for u in [0, 1] from arithmetic only: log(1 + u) = 2 atanh(z), z = u / (2 + u) <= 1/3,
// and the atanh series z (1 + w/3 + w^2/5 + ...), w = z^2 <= 1/9, cut after w^6 (error < 2e-8).
// (log_add_exp only passes u = e^(lo - hi) in [0, 1].)
inline F8 k_log1p(F8 u) {
  const F8 z = u / (set1(2.0f) + u);
  const F8 w = z * z;
  F8 poly = set1(1.0f / 13);
  for (float c : {1.0f / 11, 1.0f / 9, 1.0f / 7, 1.0f / 5, 1.0f / 3, 1.0f}) poly = fma(poly, w, set1(c));
  return set1(2.0f) * z * poly;
}

// Raw x[0:8], or for a row's last n < 8 elements those with the other lanes -inf: a -inf column
// has no mass, and every pass below turns it into an exactly-zero contribution.
inline F8 load_raw(const float* x, int64_t n) {
  if (n >= 8) return loadu(x);
  float buf[8];
  for (int k = 0; k < 8; ++k) buf[k] = k < n ? x[k] : -kInf;
  return loadu(buf);
}

// (x - origin) / τ: raw values shifted before scaling (common/kd_row.h, "Numerics").
inline F8 load_shifted(const float* x, int64_t n, F8 origin, F8 inv_t) { return (load_raw(x, n) - origin) * inv_t; }

inline void store_partial(float* x, int64_t n, F8 a) {
  if (n >= 8) return storeu(x, a);
  float buf[8];
  storeu(buf, a);
  std::copy(buf, buf + n, x);
}

// Calls body(j, count) for the 8-wide steps of [begin, end): count is the constant 8 in the main
// loop, so the tail branches of load_raw / store_partial fold away there; then once for the rest.
template <class Body>
inline void for_vectors(int64_t begin, int64_t end, Body&& body) {
  int64_t j = begin;
  for (; j + 8 <= end; j += 8) body(j, int64_t{8});
  if (j < end) body(j, end - j);
}

using Stats = kd::Stats<double>;
using RowTerms = kd::RowTerms<double>;

// ---- pass 1: streaming statistics --------------------------------------------------------------

// Folds one block: a cheap max sweep first (so the running maxima move at most once per block and
// the sums never see a positive exp argument), then the block's sums, in float, added in double.
template <bool kReverse>
void stats_block(const float* x, const float* y, int64_t n, float inv_t, Stats& a) {
  F8 mx = set1(-kInf), my = set1(-kInf);
  for_vectors(0, n, [&](int64_t i, int64_t c) {
    mx = k_max(mx, load_raw(x + i, c));
    my = k_max(my, load_raw(y + i, c));
  });
  kd::raise_maxima<double>(a, std::max<double>(a.mx, hmax(mx)), std::max<double>(a.my, hmax(my)), inv_t);
  const F8 ox = set1(static_cast<float>(kd::shift_origin(a.mx))), oy = set1(static_cast<float>(kd::shift_origin(a.my)));
  const F8 vinv_t = set1(inv_t), zero = set1(0.0f);
  F8 ss = zero, st = zero, pd = zero, qd = zero;
  for_vectors(0, n, [&](int64_t i, int64_t c) {
    const F8 ds = load_shifted(x + i, c, ox, vinv_t);
    const F8 dt = load_shifted(y + i, c, oy, vinv_t);
    const F8 es = k_exp(ds), et = k_exp(dt);
    ss = ss + es;
    st = st + et;
    pd = pd + mul_where_positive(et, dt - ds);
    if constexpr (kReverse) qd = qd + mul_where_positive(es, ds - dt);
  });
  a.ss += hsum(ss), a.st += hsum(st), a.pd += hsum(pd);
  if constexpr (kReverse) a.qd += hsum(qd);
}

template <bool kReverse>
Stats row_stats(const float* x, const float* y, int64_t vocab, float inv_t) {
  Stats a = kd::empty_stats<double>();
  for (int64_t j = 0; j < vocab; j += kBlock) stats_block<kReverse>(x + j, y + j, std::min(kBlock, vocab - j), inv_t, a);
  return a;
}

// The row constants the column passes use, as 8-lane vectors.
struct RowLanes {
  F8 mx, my, inv_t, log_ss, log_st;
  RowLanes(const Stats& a, const RowTerms& t, float inv_t)
      : mx(set1(static_cast<float>(a.mx))), my(set1(static_cast<float>(a.my))), inv_t(set1(inv_t)),
        log_ss(set1(static_cast<float>(t.log_ss))), log_st(set1(static_cast<float>(t.log_st))) {}
  F8 log_q(const float* x, int64_t n) const { return load_shifted(x, n, mx, inv_t) - log_ss; }
  F8 log_p(const float* y, int64_t n) const { return load_shifted(y, n, my, inv_t) - log_st; }
};

// ---- pass 2 (hard rows): hard = sum_j y_j (log y_j - log m_j) and R = sum_j r_j q_j ----------

struct HardSums {
  double loss = 0, R = 0;
};

// Columns j != g of a range, where log y_j = log lam + log p_j. r_j q_j goes to rq_out when the
// gradient needs it (the gradient pass then costs one exp per element); it is stored rather than
// r_j, which is unbounded for beta = 1 (m = q can underflow where y does not).
template <bool kStoreR>
void hard_range(const float* x, const float* y, int64_t n, const RowLanes& row, const kd::Constants<float>& c,
                float* rq_out, HardSums& sums) {
  const F8 log_lam = set1(c.log_lam), log_beta = set1(c.log_beta), log1m_beta = set1(c.log1m_beta);
  const F8 floor = set1(kd::log_floor<float>());
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    F8 loss = set1(0.0f), R = set1(0.0f);
    for_vectors(j0, std::min(n, j0 + kBlock), [&](int64_t j, int64_t cnt) {
      const F8 lq = k_max(row.log_q(x + j, cnt), floor);
      const F8 ly = k_max(log_lam + row.log_p(y + j, cnt), floor);
      F8 y_log_r, rq;
      kd::hard_column(lq, ly, log_beta, log1m_beta, y_log_r, rq);
      loss = loss + y_log_r;
      R = R + rq;
      if constexpr (kStoreR) store_partial(rq_out + j, cnt, rq);
    });
    sums.loss += hsum(loss);
    sums.R += hsum(R);
  }
}

template <bool kStoreR>
HardSums hard_pass(const float* x, const float* y, int64_t vocab, int64_t g, const RowLanes& row,
                   const RowTerms& t, const kd::Constants<double>& cd, const kd::Constants<float>& cf, float* rq) {
  HardSums sums;
  hard_range<kStoreR>(x, y, g, row, cf, rq, sums);
  hard_range<kStoreR>(x + g + 1, y + g + 1, vocab - g - 1, row, cf, kStoreR ? rq + g + 1 : nullptr, sums);
  double y_log_r, rq_g;
  kd::hard_label_column(t, cd, y_log_r, rq_g);
  sums.loss += y_log_r;
  sums.R += rq_g;
  if (kStoreR) rq[g] = static_cast<float>(rq_g);
  return sums;
}

// ---- pass 3: the gradient, in place over the student row ---------------------------------------
// Each writes scale * (gradient w.r.t. s) for columns < vocab, leaving out the -(1 - lam) [k = g]
// term of the easy / reverse gradients, which the caller adds at column g.

// easy, noevo, forward_kd: q_k - lam p_k
void grad_easy(float* x, const float* y, int64_t n, const RowLanes& row, float lam, float scale) {
  const F8 vlam = set1(lam), vscale = set1(scale);
  for_vectors(0, n, [&](int64_t j, int64_t c) {
    const F8 q = k_exp(row.log_q(x + j, c)), p = k_exp(row.log_p(y + j, c));
    store_partial(x + j, c, vscale * (q - vlam * p));
  });
}

// hard, skew: beta q_k (R - r_k) = beta (q_k R - r_k q_k), r_k q_k from the hard pass
void grad_hard(float* x, const float* rq, int64_t n, const RowLanes& row, float beta_scale, float R) {
  const F8 vR = set1(R), vscale = set1(beta_scale);
  for_vectors(0, n, [&](int64_t j, int64_t c) {
    const F8 q = k_exp(row.log_q(x + j, c));
    const F8 rqj = load_raw(rq + j, c);  // padding lanes are never stored
    store_partial(x + j, c, vscale * (q * vR - rqj));
  });
}

// reverse_kd: (1 - lam) q_k + lam q_k (log q_k - log p_k - KL(q || p)); the logs are floored so
// that a column without mass in either distribution gives 0 (not 0 * (-inf + inf)).
void grad_reverse(float* x, const float* y, int64_t n, const RowLanes& row, float kl_qp, float lam, float scale) {
  const F8 kl = set1(kl_qp), a = set1((1 - lam) * scale), b = set1(lam * scale);
  const F8 floor = set1(kd::log_floor<float>());
  for_vectors(0, n, [&](int64_t j, int64_t c) {
    const F8 log_q = k_max(row.log_q(x + j, c), floor);
    const F8 log_p = k_max(row.log_p(y + j, c), floor);
    store_partial(x + j, c, k_exp(log_q) * fma(b, log_q - log_p - kl, a));
  });
}

// ---- one row -------------------------------------------------------------------------------

struct RowConstants {
  kd::Constants<double> d;
  kd::Constants<float> f;
};

void process_row(const Problem& p, const Params& prm, const RowConstants& c, const Outputs& out, int64_t i,
                 std::vector<float>& scratch) {
  float* x = p.student + i * p.student_cols;
  const float* y = p.teacher + i * p.teacher_cols;
  const int64_t g = p.labels[i];
  if (g == prm.ignore_index) {
    out.loss[i] = 0.0f, out.d[i] = 0.0f, out.is_hard[i] = false;
    if (prm.compute_grad) std::fill(x, x + p.student_cols, 0.0f);
    return;
  }
  const float inv_t = c.f.inv_t;
  const bool reverse = prm.mode == Mode::kReverseKD;
  const Stats stats = reverse ? row_stats<true>(x, y, p.vocab, inv_t) : row_stats<false>(x, y, p.vocab, inv_t);
  const RowTerms t = kd::row_terms<double>(stats, x[g], y[g], c.d);
  if (!t.has_distribution) {  // NaN loss, d and gradient (common/kd_row.h)
    out.loss[i] = out.d[i] = std::numeric_limits<float>::quiet_NaN();
    out.is_hard[i] = false;
    if (prm.compute_grad) std::fill(x, x + p.student_cols, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  const RowLanes row(stats, t, inv_t);
  const bool is_hard = kd::row_is_hard(prm.mode, p.hard, i, t.d, prm.gamma);
  const bool use_hard = is_hard && kd::uses_hard_loss(prm.mode);

  double loss = kd::plain_loss(prm.mode, t);
  HardSums hard;
  if (use_hard) {
    if (prm.compute_grad) scratch.resize(static_cast<size_t>(p.vocab));
    hard = prm.compute_grad ? hard_pass<true>(x, y, p.vocab, g, row, t, c.d, c.f, scratch.data())
                            : hard_pass<false>(x, y, p.vocab, g, row, t, c.d, c.f, nullptr);
    loss = hard.loss;
  }
  out.loss[i] = static_cast<float>(loss);
  out.d[i] = static_cast<float>(t.d);
  out.is_hard[i] = is_hard;
  if (!prm.compute_grad) return;

  // d(grad_scale * loss) / d(raw logit) = grad_scale / T * d loss / d s
  const float scale = static_cast<float>(p.grad_scale[i] * c.d.inv_t);
  const float lam = c.f.lam;
  if (use_hard) {
    grad_hard(x, scratch.data(), p.vocab, row, c.f.beta * scale, static_cast<float>(hard.R));
  } else {
    if (reverse) grad_reverse(x, y, p.vocab, row, static_cast<float>(t.kl_qp), lam, scale);
    else grad_easy(x, y, p.vocab, row, lam, scale);
    x[g] -= (1 - lam) * scale;  // the -(1 - lam) onehot(g) term
  }
  std::fill(x + p.vocab, x + p.student_cols, 0.0f);
}

}  // namespace

void rows(const Problem& p, const Params& prm, const Outputs& out, const Executor& ex) {
  const RowConstants c{kd::make_constants<double>(prm.lam, prm.beta, prm.gamma, prm.temperature),
                       kd::make_constants<float>(prm.lam, prm.beta, prm.gamma, prm.temperature)};
  ex.parallel_for(p.rows, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;  // r_j q_j of the current hard row; one per task, reused across rows
    for (int64_t i = begin; i < end; ++i) process_row(p, prm, c, out, i, scratch);
  });
}

}  // namespace kd
}  // namespace mtk
