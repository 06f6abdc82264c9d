// Launcher of the CUDA self-evolution knowledge-distillation row kernel (docs/kd.md): plain C++
// types only, so the torch binding (kd_bindings.cpp) and any other host code can call it without
// CUDA device code. The per-row formulas are shared with the CPU kernel (common/kd_row.h).
//
// Per row i with label g (s = student[i, :vocab] / T, t = teacher[i, :vocab] / T, q = softmax(s),
// p = softmax(t), y = (1 - lam) onehot(g) + lam p):
//   d[i]       = KL(y || q)                                  (0 on ignored rows)
//   is_hard[i] = hard[i] if hard is given, else by mode: self_evolution d > gamma, skew every
//                valid row, the others none (always false on ignored rows)
//   loss[i]    = KL(y || m), m = beta q + (1 - beta) y on hard rows, else d (modes 0..3);
//                (1 - lam) CE + lam KL(p || q) (mode 4); (1 - lam) CE + lam KL(q || p) (mode 5)
//   student[i, :] <- d(grad_scale[i] * loss[i]) / d student[i, :]   if compute_grad
//                   (0 past vocab and on ignored rows; untouched if not compute_grad)
// Nothing of size rows x vocab is allocated: one block per row, all state in registers.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/kd_row.h"  // kd::Mode

namespace mtk {
namespace cuda {

struct KdRowsArgs {
  float* student;  // (rows, student_stride) f32, element (i, j) at student[i * student_stride + j]
  int64_t student_cols;  // V_s: columns of the student row (all of them get the gradient)
  int64_t student_stride;  // >= student_cols
  const float* teacher;  // (rows, teacher_stride) f32, read only; must not overlap student
  int64_t teacher_stride;
  const int64_t* labels;  // (rows,): ignore_index or in [0, vocab)
  const bool* hard;  // (rows,) or nullptr (then the mode decides)
  const float* grad_scale;  // (rows,)
  int64_t rows;  // >= 0
  int64_t vocab;  // in [1, min(V_s, V_t)] and < 2^31
  int64_t ignore_index;
  int mode;  // kd::Mode
  float lam;  // [0, 1]
  float beta;  // (0, 1]
  float gamma;  // >= 0
  float temperature;  // > 0
  bool compute_grad;
  // outputs, (rows,) each
  float* loss;
  float* d;
  bool* is_hard;
};

// Launches on `stream`; returns the launch error (cudaSuccess also for rows == 0: nothing to do).
cudaError_t kd_rows(const KdRowsArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace mtk
