// Self-evolution knowledge distillation row kernel on raw pointers (no torch types here;
// csrc/cpu/kd_bindings.cpp wraps it). The contract and the math are in docs/kd.md; the per-row
// formulas are shared with the CUDA kernel (csrc/common/kd_row.h).
//
// Per valid row i (labels[i] != ignore_index), s = student[i, :vocab] / T, t = teacher[i, :vocab] / T,
// q = softmax(s), p = softmax(t), y = (1 - lam) onehot(g) + lam p:
//   d = KL(y || q);  easy = d;  hard = KL(y || m), m = beta q + (1 - beta) y;
//   forward_kd = (1 - lam) CE(q, g) + lam KL(p || q);  reverse_kd = (1 - lam) CE(q, g) + lam KL(q || p).
// With compute_grad the student row is overwritten with d(grad_scale[i] * loss_i) / d student[i, :],
// zero in columns >= vocab and on ignored rows.
//
// Work per row: one streaming statistics pass (online max-rescaled sums over s and t), then for hard
// rows a pass for the hard loss and R = sum_j r_j q_j, then the gradient pass. Rows are independent
// and run in parallel through the executor; nothing of size rows x vocab is allocated (hard rows with
// compute_grad use one vocab-sized scratch vector per task).
#pragma once

#include <cstdint>

#include "common/kd_row.h"  // Mode
#include "cpu/collab.h"     // Executor

namespace mtk {
namespace kd {

using Executor = collab::Executor;

struct Params {
  Mode mode;
  double lam;          // [0, 1]
  double beta;         // (0, 1]
  double gamma;        // >= 0
  double temperature;  // > 0
  int64_t ignore_index;
  bool compute_grad;
};

struct Problem {
  float* student;            // (rows, student_cols) row-major; overwritten if compute_grad
  int64_t student_cols;      // >= vocab
  const float* teacher;      // (rows, teacher_cols) row-major
  int64_t teacher_cols;      // >= vocab
  const int64_t* labels;     // (rows,): ignore_index or in [0, vocab)
  const bool* hard;          // (rows,) or nullptr: which rows use the hard loss (see Mode)
  const float* grad_scale;   // (rows,)
  int64_t rows;
  int64_t vocab;
};

struct Outputs {
  float* loss;    // (rows,)
  float* d;       // (rows,)
  bool* is_hard;  // (rows,)
};

void rows(const Problem& p, const Params& params, const Outputs& out, const Executor& ex);

}  // namespace kd
}  // namespace mtk
