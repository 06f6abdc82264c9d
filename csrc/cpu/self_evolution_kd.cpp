// Self-evolution KD row kernel (see self_evolution_kd.h). Each row is swept over the vocabulary
// with 8-float vectors (F8 below: AVX2, or a plain-array twin); sums are taken per L1-sized block in
// float and carried per row in double, which keeps 150k-long rows accurate at no cost.
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
// Stands in for log 0 (lam = 0) and fills the lanes past a row's end: finite, so 0 * x and x - y
// stay NaN-free, and so negative that exp of anything near it is exactly 0.
constexpr float kVeryNegative = -1e30f;
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
inline F8 max(F8 a, F8 b) { return {_mm256_max_ps(a.v, b.v)}; }
inline F8 min(F8 a, F8 b) { return {_mm256_min_ps(a.v, b.v)}; }
inline F8 exp(F8 a) { return {exp8(a.v)}; }  // arguments here are <= ~0 (or bounded, see r)
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
inline F8 max(F8 a, F8 b) { return map([&](int k) { return std::max(a.v[k], b.v[k]); }); }
inline F8 min(F8 a, F8 b) { return map([&](int k) { return std::min(a.v[k], b.v[k]); }); }
inline F8 exp(F8 a) { return map([&](int k) { return exp_scalar(std::min(a.v[k], kExpHi)); }); }
inline float hsum(F8 a) {
  float s = 0.0f;
  for (float x : a.v) s += x;
  return s;
}
inline float hmax(F8 a) { return *std::max_element(a.v, a.v + 8); }
#endif

// log(1 + u) for u in [0, 1] from arithmetic only: log(1 + u) = 2 atanh(z), z = u / (2 + u) <= 1/3,
// and the atanh series z (1 + w/3 + w^2/5 + ...), w = z^2 <= 1/9, cut after w^6 (error < 2e-8).
inline F8 log1p_unit(F8 u) {
  const F8 z = u / (set1(2.0f) + u);
  const F8 w = z * z;
  F8 poly = set1(1.0f / 13);
  for (float c : {1.0f / 11, 1.0f / 9, 1.0f / 7, 1.0f / 5, 1.0f / 3, 1.0f}) poly = fma(poly, w, set1(c));
  return set1(2.0f) * z * poly;
}

// log(exp(a) + exp(b)); a or b may be -inf (not both), then exp(-inf) = 0 adds nothing.
inline F8 logaddexp(F8 a, F8 b) {
  const F8 hi = max(a, b);
  return hi + log1p_unit(exp(min(a, b) - hi));
}

// x[0:8] * scale, or for a row's last n < 8 elements, those with the other lanes kVeryNegative:
// every pass below turns such a lane into an exactly-zero contribution.
inline F8 load_scaled(const float* x, int64_t n, float scale) {
  if (n >= 8) return loadu(x) * set1(scale);
  float buf[8];
  for (int k = 0; k < 8; ++k) buf[k] = k < n ? x[k] * scale : kVeryNegative;
  return loadu(buf);
}

inline void store_partial(float* x, int64_t n, F8 a) {
  if (n >= 8) return storeu(x, a);
  float buf[8];
  storeu(buf, a);
  std::copy(buf, buf + n, x);
}

// Calls body(j, count) for the 8-wide steps of [begin, end): count is the constant 8 in the main
// loop, so the tail branches of load_scaled / store_partial fold away there; then once for the rest.
template <class Body>
inline void for_vectors(int64_t begin, int64_t end, Body&& body) {
  int64_t j = begin;
  for (; j + 8 <= end; j += 8) body(j, int64_t{8});
  if (j < end) body(j, end - j);
}

// ---- pass 1: streaming statistics --------------------------------------------------------------
// All sums are relative to the running maxima ms, mt (every exp argument is <= 0):
//   ss = sum e^(s-ms), st = sum e^(t-mt), pt = sum e^(t-mt) (t-mt), ps = sum e^(t-mt) (s-ms),
//   qs = sum e^(s-ms) (s-ms), qt = sum e^(s-ms) (t-mt)   (the last two for reverse_kd only).
// Keeping (s - ms) rather than s inside the sums avoids the cancellation of sum p t - lse_t when
// logits are large (1e4): that difference becomes pt / st - log st.
struct Stats {
  float ms = -kInf, mt = -kInf;
  double ss = 0, st = 0, pt = 0, ps = 0, qs = 0, qt = 0;

  void raise_student_max(float m) { raise_max(m, ms, ss, qs, qt, ps, st); }
  void raise_teacher_max(float m) { raise_max(m, mt, st, pt, ps, qt, ss); }

 private:
  // A new max m > mx of one side (x: student or teacher, w: the other): rescale every sum that
  // depends on mx. sx = sum e^(x-mx); self = sum e^(x-mx) (x-mx); own_cross = sum e^(x-mx) (w-mw);
  // other_cross = sum e^(w-mw) (x-mx); sw = sum e^(w-mw).
  static void raise_max(float m, float& mx, double& sx, double& self, double& own_cross, double& other_cross,
                        double sw) {
    if (!(m > mx)) return;
    if (mx == -kInf) {  // first block: nothing accumulated yet
      mx = m;
      return;
    }
    const double delta = static_cast<double>(mx) - m, f = std::exp(delta);
    self = f * (self + delta * sx);
    sx *= f;
    own_cross *= f;
    other_cross += delta * sw;
    mx = m;
  }
};

// Folds one block: a cheap max sweep first (so the running maxima only move once per block, and
// the sums below never see a positive exp argument), then the sums, taken in float and added in double.
template <bool kReverse>
void stats_block(const float* x, const float* y, int64_t n, float inv_t, Stats& a) {
  F8 mx = set1(-kInf), my = set1(-kInf);
  for_vectors(0, n, [&](int64_t i, int64_t c) {
    mx = max(mx, load_scaled(x + i, c, inv_t));
    my = max(my, load_scaled(y + i, c, inv_t));
  });
  a.raise_student_max(hmax(mx));
  a.raise_teacher_max(hmax(my));
  const F8 ms = set1(a.ms), mt = set1(a.mt), zero = set1(0.0f);
  F8 ss = zero, st = zero, pt = zero, ps = zero, qs = zero, qt = zero;
  for_vectors(0, n, [&](int64_t i, int64_t c) {
    const F8 ds = load_scaled(x + i, c, inv_t) - ms;
    const F8 dt = load_scaled(y + i, c, inv_t) - mt;
    const F8 es = exp(ds), et = exp(dt);
    ss = ss + es;
    st = st + et;
    pt = fma(et, dt, pt);
    ps = fma(et, ds, ps);
    if constexpr (kReverse) {
      qs = fma(es, ds, qs);
      qt = fma(es, dt, qt);
    }
  });
  a.ss += hsum(ss), a.st += hsum(st), a.pt += hsum(pt), a.ps += hsum(ps);
  if constexpr (kReverse) a.qs += hsum(qs), a.qt += hsum(qt);
}

template <bool kReverse>
Stats row_stats(const float* x, const float* y, int64_t vocab, float inv_t) {
  Stats a;
  for (int64_t j = 0; j < vocab; j += kBlock) stats_block<kReverse>(x + j, y + j, std::min(kBlock, vocab - j), inv_t, a);
  return a;
}

// ---- per-row scalars from the statistics (double) -------------------------------------------

double xlogx(double v) { return v > 0 ? v * std::log(v) : 0.0; }

struct RowTerms {
  double lse_s, lse_t;
  double log_q_g;  // s_g - lse_s
  double y_g;      // 1 - lam + lam p_g
  double kl_qp;    // KL(q || p)
  double d, forward_kd, reverse_kd;
};

RowTerms row_terms(const Stats& a, float s_g, float t_g, double lam) {
  RowTerms r;
  const double log_ss = std::log(a.ss), log_st = std::log(a.st);
  r.lse_s = a.ms + log_ss;
  r.lse_t = a.mt + log_st;
  r.log_q_g = s_g - r.lse_s;
  const double log_p_g = t_g - r.lse_t, p_g = std::exp(log_p_g);
  r.y_g = 1 - lam + lam * p_g;
  const double p_log_p = a.pt / a.st - log_st;  // sum p log p
  const double p_log_q = a.ps / a.st - log_ss;  // sum p log q
  const double y_log_y = xlogx(lam) * (1 - p_g) + lam * (p_log_p - p_g * log_p_g) + xlogx(r.y_g);
  const double y_log_q = (1 - lam) * r.log_q_g + lam * p_log_q;
  r.d = y_log_y - y_log_q;
  r.forward_kd = -(1 - lam) * r.log_q_g + lam * (p_log_p - p_log_q);
  r.kl_qp = (a.qs - a.qt) / a.ss - log_ss + log_st;  // sum q log q - sum q log p
  r.reverse_kd = -(1 - lam) * r.log_q_g + lam * r.kl_qp;
  return r;
}

// ---- pass 2 (hard rows): hard = sum_j y_j (log y_j - log m_j) and R = sum_j r_j q_j ----------

struct HardConsts {
  float lse_s, lse_t;
  float log_lam;   // kVeryNegative for lam = 0 (then y_j = 0 off the label)
  float log_beta;
  float log_1mb;   // log(1 - beta); -inf for beta = 1 (m = q), which logaddexp handles
};

struct HardSums {
  double loss = 0, R = 0;
};

// Columns j != g of a range, where log y_j = log lam + log p_j. r_j q_j goes to rq_out when the
// gradient needs it (the gradient pass then costs one exp per element). r_j q_j <= 1 / beta is
// stored rather than r_j, which is unbounded for beta = 1 (m = q can underflow where y does not).
template <bool kStoreR>
void hard_range(const float* x, const float* y, int64_t n, float inv_t, const HardConsts& c, float* rq_out,
                HardSums& sums) {
  const F8 lse_s = set1(c.lse_s), lse_t = set1(c.lse_t), log_lam = set1(c.log_lam);
  const F8 log_beta = set1(c.log_beta), log_1mb = set1(c.log_1mb);
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    F8 loss = set1(0.0f), R = set1(0.0f);
    for_vectors(j0, std::min(n, j0 + kBlock), [&](int64_t j, int64_t cnt) {
      const F8 log_q = load_scaled(x + j, cnt, inv_t) - lse_s;
      const F8 log_y = log_lam + (load_scaled(y + j, cnt, inv_t) - lse_t);
      const F8 log_m = logaddexp(log_beta + log_q, log_1mb + log_y);
      const F8 log_r = log_y - log_m;
      const F8 rq = exp(log_r + log_q);
      loss = fma(exp(log_y), log_r, loss);  // y = 0 (lam = 0, padding): 0 * finite
      R = R + rq;
      if constexpr (kStoreR) store_partial(rq_out + j, cnt, rq);
    });
    sums.loss += hsum(loss);
    sums.R += hsum(R);
  }
}

// The label column (y_g has its own log), in double.
void hard_label_term(const RowTerms& t, double beta, HardSums& sums, float* rq_g) {
  if (!(t.y_g > 0)) {  // lam = 1 and p_g = 0: the term is skipped, r_g = 0
    if (rq_g) *rq_g = 0.0f;
    return;
  }
  const double log_y = std::log(t.y_g), a = std::log(beta) + t.log_q_g;
  const double b = beta < 1 ? std::log1p(-beta) + log_y : -std::numeric_limits<double>::infinity();
  const double hi = std::max(a, b), log_m = hi + std::log1p(std::exp(std::min(a, b) - hi));
  sums.loss += t.y_g * (log_y - log_m);
  const double rq = std::exp(log_y - log_m + t.log_q_g);
  sums.R += rq;
  if (rq_g) *rq_g = static_cast<float>(rq);
}

template <bool kStoreR>
HardSums hard_pass(const float* x, const float* y, int64_t vocab, int64_t g, float inv_t, const RowTerms& t,
                   const Params& prm, float* rq) {
  const HardConsts c{static_cast<float>(t.lse_s), static_cast<float>(t.lse_t),
                     prm.lam > 0 ? static_cast<float>(std::log(prm.lam)) : kVeryNegative,
                     static_cast<float>(std::log(prm.beta)),
                     prm.beta < 1 ? static_cast<float>(std::log1p(-prm.beta)) : -kInf};
  HardSums sums;
  hard_range<kStoreR>(x, y, g, inv_t, c, rq, sums);
  hard_range<kStoreR>(x + g + 1, y + g + 1, vocab - g - 1, inv_t, c, kStoreR ? rq + g + 1 : nullptr, sums);
  hard_label_term(t, prm.beta, sums, kStoreR ? rq + g : nullptr);
  return sums;
}

// ---- pass 3: the gradient, in place over the student row ---------------------------------------
// Each writes scale * (gradient w.r.t. s) for columns < vocab, leaving out the -(1 - lam) [k = g]
// term of the easy / reverse gradients, which the caller adds at column g.

// easy, noevo, forward_kd: q_k - lam p_k
void grad_easy(float* x, const float* y, int64_t n, float inv_t, const RowTerms& t, float lam, float scale) {
  const F8 lse_s = set1(static_cast<float>(t.lse_s)), lse_t = set1(static_cast<float>(t.lse_t));
  const F8 vlam = set1(lam), vscale = set1(scale);
  for_vectors(0, n, [&](int64_t j, int64_t c) {
    const F8 q = exp(load_scaled(x + j, c, inv_t) - lse_s);
    const F8 p = exp(load_scaled(y + j, c, inv_t) - lse_t);
    store_partial(x + j, c, vscale * (q - vlam * p));
  });
}

// hard, skew: beta q_k (R - r_k) = beta (q_k R - r_k q_k), r_k q_k from the hard pass
void grad_hard(float* x, const float* rq, int64_t n, float inv_t, const RowTerms& t, float beta_scale, float R) {
  const F8 lse_s = set1(static_cast<float>(t.lse_s)), vR = set1(R), vscale = set1(beta_scale);
  for_vectors(0, n, [&](int64_t j, int64_t c) {
    const F8 q = exp(load_scaled(x + j, c, inv_t) - lse_s);
    const F8 rqj = load_scaled(rq + j, c, 1.0f);  // padding lanes are never stored
    store_partial(x + j, c, vscale * (q * vR - rqj));
  });
}

// reverse_kd: (1 - lam) q_k + lam q_k (log q_k - log p_k - KL(q || p))
void grad_reverse(float* x, const float* y, int64_t n, float inv_t, const RowTerms& t, float lam, float scale) {
  const F8 lse_s = set1(static_cast<float>(t.lse_s)), lse_t = set1(static_cast<float>(t.lse_t));
  const F8 kl = set1(static_cast<float>(t.kl_qp)), a = set1((1 - lam) * scale), b = set1(lam * scale);
  for_vectors(0, n, [&](int64_t j, int64_t c) {
    const F8 log_q = load_scaled(x + j, c, inv_t) - lse_s;
    const F8 log_p = load_scaled(y + j, c, inv_t) - lse_t;
    const F8 q = exp(log_q);
    store_partial(x + j, c, q * fma(b, log_q - log_p - kl, a));
  });
}

// ---- one row -------------------------------------------------------------------------------

bool row_is_hard(const Problem& p, const Params& prm, int64_t i, double d) {
  if (p.hard) return p.hard[i];
  if (prm.mode == Mode::kSelfEvolution) return d > prm.gamma;
  return prm.mode == Mode::kSkew;
}

void process_row(const Problem& p, const Params& prm, const Outputs& out, int64_t i, std::vector<float>& scratch) {
  float* x = p.student + i * p.student_cols;
  const float* y = p.teacher + i * p.teacher_cols;
  const int64_t g = p.labels[i];
  if (g == prm.ignore_index) {
    out.loss[i] = 0.0f, out.d[i] = 0.0f, out.is_hard[i] = false;
    if (prm.compute_grad) std::fill(x, x + p.student_cols, 0.0f);
    return;
  }
  const float inv_t = static_cast<float>(1.0 / prm.temperature);
  const bool reverse = prm.mode == Mode::kReverseKD;
  const Stats stats = reverse ? row_stats<true>(x, y, p.vocab, inv_t) : row_stats<false>(x, y, p.vocab, inv_t);
  const RowTerms t = row_terms(stats, x[g] * inv_t, y[g] * inv_t, prm.lam);
  const bool is_hard = row_is_hard(p, prm, i, t.d);
  const bool use_hard = is_hard && !reverse && prm.mode != Mode::kForwardKD;

  double loss = t.d;
  if (prm.mode == Mode::kForwardKD) loss = t.forward_kd;
  if (reverse) loss = t.reverse_kd;
  HardSums hard;
  if (use_hard) {
    if (prm.compute_grad) scratch.resize(static_cast<size_t>(p.vocab));
    hard = prm.compute_grad ? hard_pass<true>(x, y, p.vocab, g, inv_t, t, prm, scratch.data())
                            : hard_pass<false>(x, y, p.vocab, g, inv_t, t, prm, nullptr);
    loss = hard.loss;
  }
  out.loss[i] = static_cast<float>(loss);
  out.d[i] = static_cast<float>(t.d);
  out.is_hard[i] = is_hard;
  if (!prm.compute_grad) return;

  // d(grad_scale * loss) / d(raw logit) = grad_scale / T * d loss / d s
  const float scale = static_cast<float>(p.grad_scale[i] / prm.temperature);
  const float lam = static_cast<float>(prm.lam);
  if (use_hard) {
    grad_hard(x, scratch.data(), p.vocab, inv_t, t, static_cast<float>(prm.beta) * scale, static_cast<float>(hard.R));
  } else {
    if (reverse) grad_reverse(x, y, p.vocab, inv_t, t, lam, scale);
    else grad_easy(x, y, p.vocab, inv_t, t, lam, scale);
    x[g] -= (1 - lam) * scale;  // the -(1 - lam) onehot(g) term
  }
  std::fill(x + p.vocab, x + p.student_cols, 0.0f);
}

}  // namespace

void rows(const Problem& p, const Params& prm, const Outputs& out, const Executor& ex) {
  ex.parallel_for(p.rows, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;  // r_j q_j of the current hard row; one per task, reused across rows
    for (int64_t i = begin; i < end; ++i) process_row(p, prm, out, i, scratch);
  });
}

}  // namespace kd
}  // namespace mtk
