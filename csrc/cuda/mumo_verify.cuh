// Launcher of the CUDA MuMo verification row kernel (the `lse_pick` primitive of docs/mumo_verify.md):
// plain C++ types only, so the torch binding (mumo_bindings.cpp) and other host code can
// call it without CUDA device code.
//
//   for i < n, r = rows ? rows[i] : i:
//     lse[i] = log sum_j exp(x[r, j])   (float32, one streaming read of the row)
//     picked[i] = x[r, ids[i]]          (when ids is given)
//
// One block per selected row; each thread keeps a running maximum and rescaled sum over its
// columns, merged across the block at the end. No workspace.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace mtk {
namespace cuda {

struct LsePickArgs {
  const void* logits;   // element (r, j) at logits + r * row_stride + j
  int64_t row_stride;   // in elements
  int dtype;            // DType of collab.cuh: 0 float32, 1 bfloat16, 2 float16
  int64_t vocab;        // V in [1, 2^31)
  const int64_t* rows;  // (n,) or nullptr for rows 0..n-1
  const int64_t* ids;   // (n,) in [0, V), or nullptr
  int64_t n;
  float* lse;           // (n,)
  float* picked;        // (n,), unused when ids is nullptr
};

cudaError_t mumo_lse_pick(const LsePickArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace mtk
