// The cross-entropy row kernel of the MuMo head loss on raw pointers (no torch types here;
// csrc/cpu/mumo_bindings.cpp wraps it). Contract: docs/mumo_head.md; the per-row formulas are
// shared with the CUDA kernel (csrc/common/ce_row.h).
//
// Per row i with target g = targets[i]: loss[i] = lse(logits[i, :]) − logits[i, g] (0 when
// g == ignore_index, NaN on a row that is -inf everywhere). With compute_grad the row is
// overwritten with grad_scale[i] · (softmax − onehot(g)) (zeros on ignored rows). One streaming
// pass per row (block-wise max, then the block's sums from L1), one more to write the gradient;
// rows run in parallel through the executor and nothing is allocated.
#pragma once

#include <cstdint>

#include "cpu/collab.h"  // Executor

namespace mtk {
namespace mumo {

using Executor = collab::Executor;

struct CeProblem {
  float* logits;             // (rows, cols) row-major, row stride `stride`; overwritten if compute_grad
  int64_t cols;              // >= 1
  int64_t stride;            // >= cols
  const int64_t* targets;    // (rows,): ignore_index or in [0, cols)
  const float* grad_scale;   // (rows,)
  int64_t rows;
  int64_t ignore_index;
  bool compute_grad;
};

void ce_rows(const CeProblem& p, float* loss, const Executor& ex);

}  // namespace mumo
}  // namespace mtk
