// MuMo verification row kernel on raw pointers (no torch types here; csrc/cpu/mumo_bindings.cpp
// wraps it). The contract is the `lse_pick` primitive of docs/mumo_verify.md:
//
//   for i < n, r = rows ? rows[i] : i:
//     lse[i]    = log sum_j exp(x[r, j])      (float32 out; sums carried in double per row)
//     picked[i] = x[r, ids[i]]                (when ids is given)
//
// One streaming read of each selected row: L1-sized blocks, a max sweep then an exp-sum sweep of
// the block while it is in cache, the running sum rescaled when the row maximum moves. Rows run in
// parallel through the executor; nothing but the outputs is written.
#pragma once

#include <cstdint>

#include "cpu/collab.h"  // DType, Executor

namespace mtk {
namespace mumo {

using collab::DType;
using Executor = collab::Executor;

struct LsePickProblem {
  const void* logits;    // element (r, j) at logits + r * row_stride + j
  int64_t row_stride;    // in elements
  DType dtype;
  int64_t vocab;         // V >= 1
  const int64_t* rows;   // (n,) row indices, or nullptr for rows 0..n-1
  const int64_t* ids;    // (n,) in [0, V), or nullptr (picked not written)
  int64_t n;
};

void lse_pick(const LsePickProblem& p, float* lse, float* picked, const Executor& ex);

}  // namespace mumo
}  // namespace mtk
