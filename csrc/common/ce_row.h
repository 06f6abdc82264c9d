// The per-row math of the cross-entropy row kernel of the MuMo head loss (docs/mumo_head.md), one
// definition for the CPU kernel (csrc/cpu/mumo_head.cpp, T = double for row scalars) and the CUDA
// kernel (csrc/cuda/mumo_head.cu, T = float).
//
// Per row, logits x (raw, float32) and target g: loss = lse(x) − x_g, and the gradient of
// scale · loss is scale · (softmax(x) − onehot(g)). The log-sum-exp is streamed: a raw running
// maximum m and s = Σ e^(x_j − m), rescaled when m moves, so that no exp sees a positive argument;
// x_g − lse is formed as (x_g − m) − log s, which keeps the small difference exact at any magnitude
// of the logits. A row that is -inf everywhere (or NaN) has no distribution: NaN loss and gradient.
#pragma once

#include "common/host_device.h"
#include "common/kd_row.h"  // k_exp, k_log, k_max, neg_inf, quiet_nan, shift_origin

namespace mtk {
namespace ce {

using kd::k_exp;
using kd::k_log;
using kd::k_max;
using kd::neg_inf;
using kd::quiet_nan;
using kd::shift_origin;

// s = Σ e^(x_j − m) over the columns seen so far, m their raw maximum (-inf: none finite yet, s = 0).
template <class T>
struct LseStats {
  T m;
  T s;
};

template <class T>
MTK_HOST_DEVICE LseStats<T> empty_stats() {
  return LseStats<T>{neg_inf<T>(), T(0)};
}

// Re-expresses s relative to a new maximum new_m >= m (a side without a finite column keeps s = 0).
template <class T>
MTK_HOST_DEVICE void raise_max(LseStats<T>& a, T new_m) {
  if (new_m == a.m) return;
  a.s = a.m == neg_inf<T>() ? T(0) : a.s * k_exp(a.m - new_m);
  a.m = new_m;
}

// The statistics of the union of two disjoint column sets.
template <class T>
MTK_HOST_DEVICE LseStats<T> merge_stats(LseStats<T> a, LseStats<T> b) {
  const T m = k_max(a.m, b.m);
  raise_max(a, m);
  raise_max(b, m);
  return LseStats<T>{m, a.s + b.s};
}

template <class T>
struct RowResult {
  bool has_distribution;
  T log_s;  // log softmax_j = (x_j − m) − log_s
  T loss;   // lse − x_g
};

template <class T>
MTK_HOST_DEVICE RowResult<T> row_result(const LseStats<T>& a, T x_g) {
  RowResult<T> r;
  r.has_distribution = a.m > neg_inf<T>() && a.s > T(0);
  if (!r.has_distribution) {
    r.log_s = r.loss = quiet_nan<T>();
    return r;
  }
  r.log_s = k_log(a.s);
  r.loss = r.log_s - (x_g - a.m);
  return r;
}

// scale · (softmax_j − [j = g]) from a raw logit.
template <class T>
MTK_HOST_DEVICE T grad_column(T x, T m, T log_s, bool is_target, T scale) {
  return (k_exp((x - m) - log_s) - (is_target ? T(1) : T(0))) * scale;
}

}  // namespace ce
}  // namespace mtk
