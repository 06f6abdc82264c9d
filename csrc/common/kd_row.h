// The per-row math of the self-evolution KD row kernel (docs/kd.md), one definition for the CPU
// kernel (csrc/cpu/self_evolution_kd.cpp, T = double for row scalars, 8-float vectors per column)
// and the CUDA kernel (csrc/cuda/self_evolution_kd.cu, T = float), so that the CPU tests exercise
// the formulas the GPU runs.
//
// Notation per row: x = raw student logits, y = raw teacher logits (not yet divided by τ);
// s = x / τ, t = y / τ; q = softmax(s), p = softmax(t); ỹ = (1 - λ) onehot(g) + λ p.
//
// Numerics. Logits are shifted by their raw row maximum *before* the division by τ:
// ds = (x - max x) · (1/τ). The subtraction is exact or nearly (the two are close where it matters)
// and the product has one rounding relative to the (small) difference, whereas x / τ - max(x / τ)
// loses |x / τ| · 2^-24 to the two roundings: 6e-5 at |x| = 10, τ = 0.1, and more than the
// whole difference at τ = 1e-7. Every exp argument is <= 0 or bounded. A product a · b whose first
// factor is exactly 0 is 0 whatever b (0 · log 0 = 0, masked -inf entries contribute nothing to the
// terms they carry no mass in), and log values that feed further exps are floored at kLogFloor, a
// finite stand-in for log 0, so that no -inf - (-inf) arises.
#pragma once

#include <math.h>

#include "common/host_device.h"

namespace mtk {
namespace kd {

// The loss modes; their order is the Python MODES tuple (a test checks the two agree).
enum class Mode : int {
  kSelfEvolution = 0,      // hard if d > gamma, else easy
  kSelfEvolutionTopk = 1,  // hard rows given by the caller
  kSkew = 2,               // every valid row hard
  kNoEvo = 3,              // every row easy
  kForwardKD = 4,          // (1 - lam) CE + lam KL(p || q)
  kReverseKD = 5,          // (1 - lam) CE + lam KL(q || p)
};
constexpr int kNumModes = 6;

// ---- scalar helpers, float and double ----------------------------------------------------------

MTK_HOST_DEVICE float k_exp(float x) { return expf(x); }
MTK_HOST_DEVICE double k_exp(double x) { return exp(x); }
MTK_HOST_DEVICE float k_log(float x) { return logf(x); }
MTK_HOST_DEVICE double k_log(double x) { return log(x); }
MTK_HOST_DEVICE float k_log1p(float x) { return log1pf(x); }
MTK_HOST_DEVICE double k_log1p(double x) { return log1p(x); }
MTK_HOST_DEVICE float k_max(float a, float b) { return fmaxf(a, b); }
MTK_HOST_DEVICE double k_max(double a, double b) { return fmax(a, b); }
MTK_HOST_DEVICE float k_min(float a, float b) { return fminf(a, b); }
MTK_HOST_DEVICE double k_min(double a, double b) { return fmin(a, b); }

template <class T>
MTK_HOST_DEVICE T neg_inf() {
  return -static_cast<T>(HUGE_VALF);
}

template <class T>
MTK_HOST_DEVICE T quiet_nan() {
  return static_cast<T>(NAN);
}

// Finite stand-in for log 0: exp of it (or of it plus any bounded value) is exactly 0.
template <class T>
MTK_HOST_DEVICE T log_floor() {
  return static_cast<T>(-1e30f);
}

// w · v, but 0 when the weight w is 0 (a term of weight 0 is absent even where v is infinite).
template <class T>
MTK_HOST_DEVICE T weighted(T w, T v) {
  return w == T(0) ? T(0) : w * v;
}

// a · log a given log a (0 log 0 = 0).
template <class T>
MTK_HOST_DEVICE T x_log_x(T a, T log_a) {
  return a > T(0) ? a * log_a : T(0);
}

// ---- per-column formulas, for any lane type V (float, double, or a CPU vector type) ------------
// They need V's + - * and k_exp / k_log1p / k_max / k_min overloads for V (found by lookup).

// log(e^a + e^b) for a finite a; b may be -inf (then the result is a).
template <class V>
MTK_HOST_DEVICE V log_add_exp(V a, V b) {
  const V hi = k_max(a, b);
  return hi + k_log1p(k_exp(k_min(a, b) - hi));
}

// The hard loss of one column: with lq = log q_j and ly = log ỹ_j (both floored at log_floor),
// log m_j = log(β q_j + (1 - β) ỹ_j) and log r_j = ly - log m_j; returns ỹ_j log r_j (the column's
// share of KL(ỹ || m)) and r_j q_j = exp(lq + log r_j) <= 1 / β, which the gradient needs.
// log1m_beta = log(1 - β) is -inf for β = 1 (m = q).
template <class V>
MTK_HOST_DEVICE void hard_column(V lq, V ly, V log_beta, V log1m_beta, V& y_log_r, V& rq) {
  const V log_r = ly - log_add_exp(log_beta + lq, log1m_beta + ly);
  y_log_r = k_exp(ly) * log_r;
  rq = k_exp(lq + log_r);
}

// ---- parameters derived once per call ---------------------------------------------------------

template <class T>
struct Constants {
  T lam, beta, gamma;
  T inv_t;        // 1 / τ
  T log_lam;      // log λ, -inf for λ = 0
  T log1m_lam;    // log(1 - λ), -inf for λ = 1
  T lam_log_lam;  // λ log λ, 0 for λ = 0
  T log_beta;     // log β
  T log1m_beta;   // log(1 - β), -inf for β = 1
};

// Computed in double on the host, then rounded to T.
template <class T>
inline Constants<T> make_constants(double lam, double beta, double gamma, double temperature) {
  const double ninf = -static_cast<double>(HUGE_VALF);
  Constants<T> c;
  c.lam = static_cast<T>(lam);
  c.beta = static_cast<T>(beta);
  c.gamma = static_cast<T>(gamma);
  c.inv_t = static_cast<T>(1.0 / temperature);
  c.log_lam = static_cast<T>(lam > 0 ? log(lam) : ninf);
  c.log1m_lam = static_cast<T>(lam < 1 ? log1p(-lam) : ninf);
  c.lam_log_lam = static_cast<T>(lam > 0 ? lam * log(lam) : 0.0);
  c.log_beta = static_cast<T>(log(beta));
  c.log1m_beta = static_cast<T>(beta < 1 ? log1p(-beta) : ninf);
  return c;
}

// ---- pass 1: streaming statistics --------------------------------------------------------------

// Sums over a set of columns, relative to raw maxima mx, my of x and y over that set:
//   ds = (x - mx) / τ, dt = (y - my) / τ,
//   ss = Σ e^ds, st = Σ e^dt, pd = Σ e^dt (dt - ds), qd = Σ e^ds (ds - dt)   (e = 0 terms are 0),
// so KL(p || q) = pd / st - log st + log ss and KL(q || p) = qd / ss - log ss + log st. Keeping
// differences of shifted logits makes the sums O(range of the logits), not O(their magnitude).
// A max of -inf means "no finite column yet" on that side: its sums are 0 and its columns' d* are
// -inf (see shift_origin), which the raise below handles.
template <class T>
struct Stats {
  T mx, my;
  T ss, st, pd, qd;
};

template <class T>
MTK_HOST_DEVICE Stats<T> empty_stats() {
  return Stats<T>{neg_inf<T>(), neg_inf<T>(), T(0), T(0), T(0), T(0)};
}

// The value columns are shifted by: the running max, or 0 while it is -inf (then every column seen
// is -inf and its shifted value stays -inf instead of -inf - (-inf)).
template <class T>
MTK_HOST_DEVICE T shift_origin(T m) {
  return m == neg_inf<T>() ? T(0) : m;
}

// Re-expresses the sums relative to new maxima new_mx >= mx, new_my >= my. Each e^ds gains the
// factor e^(ox - new_mx)/τ and each ds the offset (ox - new_mx)/τ, ox the old shift origin; a side
// that had no finite column keeps its zero sums (factor 0, offset 0).
template <class T>
MTK_HOST_DEVICE void raise_maxima(Stats<T>& a, T new_mx, T new_my, T inv_t) {
  const bool move_x = new_mx != a.mx, move_y = new_my != a.my;
  if (!move_x && !move_y) return;
  const bool had_x = a.mx != neg_inf<T>(), had_y = a.my != neg_inf<T>();
  const T off_x = move_x && had_x ? (a.mx - new_mx) * inv_t : T(0);
  const T off_y = move_y && had_y ? (a.my - new_my) * inv_t : T(0);
  const T fx = !move_x ? T(1) : had_x ? k_exp(off_x) : T(0);
  const T fy = !move_y ? T(1) : had_y ? k_exp(off_y) : T(0);
  a.pd = weighted(fy, a.pd + (off_y - off_x) * a.st);
  a.qd = weighted(fx, a.qd + (off_x - off_y) * a.ss);
  a.ss *= fx;
  a.st *= fy;
  a.mx = new_mx;
  a.my = new_my;
}

// The statistics of the union of two disjoint column sets.
template <class T>
MTK_HOST_DEVICE Stats<T> merge_stats(Stats<T> a, Stats<T> b, T inv_t) {
  const T mx = k_max(a.mx, b.mx), my = k_max(a.my, b.my);
  raise_maxima(a, mx, my, inv_t);
  raise_maxima(b, mx, my, inv_t);
  return Stats<T>{mx, my, a.ss + b.ss, a.st + b.st, a.pd + b.pd, a.qd + b.qd};
}

// ---- per-row scalars from the statistics -----------------------------------------------------

template <class T>
struct RowTerms {
  bool has_distribution;  // false when the student or the teacher row is -inf everywhere (or NaN)
  T log_ss, log_st;  // log q_j = ds_j - log_ss, log p_j = dt_j - log_st
  T log_q_g;         // log q_g
  T log_y_g;         // log ỹ_g
  T kl_pq, kl_qp;    // KL(p || q), KL(q || p)
  T d;               // KL(ỹ || q): the difficulty, and the easy loss
  T forward_kd, reverse_kd;
};

// x_g, y_g: the raw label logits. With Σ ỹ log ỹ = λ log λ (1 - p_g) + λ (Σ p log p - p_g log p_g)
// + ỹ_g log ỹ_g and Σ ỹ log q = (1 - λ) log q_g + λ Σ p log q:
//   d = λ log λ (1 - p_g) + λ (KL(p || q) - p_g log p_g) + ỹ_g log ỹ_g + (1 - λ) CE,  CE = -log q_g.
// A row without a distribution (every student or teacher logit -inf) gets NaN terms: its loss, d
// and gradient are NaN, never a number that looks valid.
template <class T>
MTK_HOST_DEVICE RowTerms<T> row_terms(const Stats<T>& a, T x_g, T y_g, const Constants<T>& c) {
  RowTerms<T> r;
  r.has_distribution = a.mx > neg_inf<T>() && a.my > neg_inf<T>() && a.ss > T(0) && a.st > T(0);
  if (!r.has_distribution) {
    const T nan = quiet_nan<T>();
    r.log_ss = r.log_st = r.log_q_g = r.log_y_g = r.kl_pq = r.kl_qp = nan;
    r.d = r.forward_kd = r.reverse_kd = nan;
    return r;
  }
  r.log_ss = k_log(a.ss);
  r.log_st = k_log(a.st);
  r.log_q_g = (x_g - a.mx) * c.inv_t - r.log_ss;
  const T log_p_g = (y_g - a.my) * c.inv_t - r.log_st;
  const T p_g = k_exp(log_p_g);
  // ỹ_g = (1 - λ) + λ p_g in log space; exact for λ = 1 even where p_g underflows
  r.log_y_g = c.lam < T(1) ? log_add_exp(c.log1m_lam, c.log_lam + log_p_g) : log_p_g;
  r.kl_pq = a.pd / a.st - r.log_st + r.log_ss;
  r.kl_qp = a.qd / a.ss - r.log_ss + r.log_st;
  const T ce = -r.log_q_g;
  r.d = c.lam_log_lam * (T(1) - p_g) + weighted(c.lam, r.kl_pq - x_log_x(p_g, log_p_g)) +
        x_log_x(k_exp(r.log_y_g), r.log_y_g) + weighted(T(1) - c.lam, ce);
  r.forward_kd = weighted(T(1) - c.lam, ce) + weighted(c.lam, r.kl_pq);
  r.reverse_kd = weighted(T(1) - c.lam, ce) + weighted(c.lam, r.kl_qp);
  return r;
}

// Whether a valid row takes the hard loss: the caller's mask when given, else by mode.
MTK_HOST_DEVICE bool row_is_hard(Mode mode, const bool* hard, long long row, double d, double gamma) {
  if (hard != nullptr) return hard[row];
  if (mode == Mode::kSelfEvolution) return d > gamma;
  return mode == Mode::kSkew;
}

// The loss modes whose hard rows use KL(ỹ || m) (forward / reverse KD have no hard loss).
MTK_HOST_DEVICE bool uses_hard_loss(Mode mode) { return mode != Mode::kForwardKD && mode != Mode::kReverseKD; }

// The loss of a row that does not take the hard loss.
template <class T>
MTK_HOST_DEVICE T plain_loss(Mode mode, const RowTerms<T>& r) {
  if (mode == Mode::kForwardKD) return r.forward_kd;
  if (mode == Mode::kReverseKD) return r.reverse_kd;
  return r.d;
}

// ---- pass 2: the label column of the hard loss -------------------------------------------------

// ỹ_g log r_g and r_g q_g of the label column (ỹ_g has its own log), in T.
template <class T>
MTK_HOST_DEVICE void hard_label_column(const RowTerms<T>& r, const Constants<T>& c, T& y_log_r, T& rq) {
  if (r.log_y_g == neg_inf<T>()) {  // λ = 1 and p_g = 0: ỹ_g = 0, no term
    y_log_r = T(0), rq = T(0);
    return;
  }
  hard_column(k_max(r.log_q_g, log_floor<T>()), r.log_y_g, c.log_beta, c.log1m_beta, y_log_r, rq);
}

}  // namespace kd
}  // namespace mtk
