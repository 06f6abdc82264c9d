// Collab kernel primitives on raw pointers (no torch types here; csrc/cpu/bindings.cpp wraps them).
//
//   z[b, j] = sum_m sw[b, m] * float(x_m[b, j])   for j < vocab, fp32 accumulation in model order;
//             -inf if any x_m[b, j] == -inf (masked whatever the weight's sign); NaN propagates.
//
// Every primitive makes one pass over the inputs, computing z block by block (one shared function,
// so z is bit-identical across the four), and splits rows into vocabulary slices when the batch is
// too small to keep every thread busy; the per-slice partials are merged per row at the end.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace mtk {
namespace collab {

enum class DType : int { kFloat32, kBFloat16, kFloat16 };

struct ModelInput {
  const void* data;    // row b starts at data + b * row_stride elements; unit column stride
  int64_t row_stride;  // in elements
  DType dtype;
};

struct Problem {
  std::vector<ModelInput> models;  // M >= 1
  const float* sw;                 // (batch, M) contiguous: weights / temperature
  int64_t batch;
  int64_t vocab;  // only columns j < vocab are read; vocab < 2^31
};

// How to run independent tasks [0, n): the caller supplies a thread pool (at::parallel_for).
struct Executor {
  int num_threads;
  std::function<void(int64_t n, const std::function<void(int64_t begin, int64_t end)>&)> parallel_for;
};

// values/ids (batch, k) row-major: the k largest z descending, ties lowest id first, padded with
// -inf entries (lowest ids) when fewer than k are finite. lse (batch,): log sum exp z.
void topk(const Problem& p, int64_t k, float* values, int64_t* ids, float* lse, const Executor& ex);

// z (batch, vocab) row-major.
void logits(const Problem& p, float* z, const Executor& ex);

// mass (batch, T) = sum over {j : z_j >= thresholds[b, t]} of exp(z_j - lse[b]).
void threshold_mass(const Problem& p, const float* thresholds, int64_t num_thresholds, const float* lse,
                    float* mass, const Executor& ex);

// ids/zs (batch,): argmax over {j : z_j >= threshold[b]} of z_j + G(keys[b], j) (ties lowest id).
void gumbel_argmax(const Problem& p, const float* threshold, const int64_t* keys, int64_t* ids, float* zs,
                   const Executor& ex);

}  // namespace collab
}  // namespace mtk
