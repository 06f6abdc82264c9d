// Launcher of the CUDA cross-entropy row kernel of the MuMo head loss (docs/mumo_head.md): plain
// C++ types only, so the torch binding (mumo_bindings.cpp) needs no device code. The per-row
// formulas are shared with the CPU kernel (common/ce_row.h).
//
// Per row i with target g = targets[i]:
//   loss[i]      = lse(logits[i, :]) − logits[i, g]   (0 on ignored rows, NaN on a row -inf everywhere)
//   logits[i, :] <- grad_scale[i] · (softmax − onehot(g))   if compute_grad (0 on ignored rows)
// One block per row, all state in registers; nothing is allocated.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace mtk {
namespace cuda {

struct CeRowsArgs {
  float* logits;             // (rows, stride) f32, element (i, j) at logits[i * stride + j]
  int64_t cols;              // in [1, 2^31)
  int64_t stride;            // >= cols
  const int64_t* targets;    // (rows,): ignore_index or in [0, cols)
  const float* grad_scale;   // (rows,)
  int64_t rows;              // >= 0
  int64_t ignore_index;
  bool compute_grad;
  float* loss;               // (rows,)
};

// Launches on `stream`; returns the launch error (cudaSuccess also for rows == 0).
cudaError_t ce_rows(const CeRowsArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace mtk
