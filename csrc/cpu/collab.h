// Collab kernel primitives on raw pointers (no torch types here; csrc/cpu/bindings.cpp wraps them).
//
//   z[b, j] = float32( (sum_m w[b, m] * double(x_m[b, j])) / double(tau[b]) )   for j < vocab,
//             the sum in double in model order from 0 (each product exact), -inf if any
//             x_m[b, j] == -inf (masked whatever the weight's sign); NaN propagates.
//
// That is the reference's float64 value rounded once, so z is bit-identical to float32(reference z).
// Every primitive makes one pass over the inputs, computing z block by block (one shared function,
// so z is bit-identical across the four), and splits rows into vocabulary slices when the batch is
// too small to keep every thread busy; the per-slice partials are merged per row at the end.
//
// Keep sets (threshold_mass, gumbel_argmax): threshold (theta, cut) keeps token j iff z_j > theta,
// or z_j == theta and j <= cut. That is a prefix of the vocabulary sorted by (z descending, id
// ascending), so top-k, top-p and min-p survivors are all of this form. A NaN theta keeps nothing.
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
  const float* weights;            // (batch, M) contiguous
  const float* temperature;        // (batch,), > 0
  int64_t batch;
  int64_t vocab;  // only columns j < vocab are read; vocab < 2^31
};

// How to run independent tasks [0, n): the caller supplies a thread pool (at::parallel_for).
struct Executor {
  int num_threads;
  std::function<void(int64_t n, const std::function<void(int64_t begin, int64_t end)>&)> parallel_for;
};

constexpr int64_t kMaxThresholds = 16;  // T of threshold_mass

// values/ids (batch, k) row-major: the k largest z descending, ties lowest id first, padded with
// -inf entries (lowest ids) when fewer than k are finite. lse (batch,): log sum exp z.
void topk(const Problem& p, int64_t k, float* values, int64_t* ids, float* lse, const Executor& ex);

// z (batch, vocab) row-major. Returns the lowest row in which a finite z overflowed float32 although
// every input of that column was finite (a temperature too small or weights too large), or -1.
int64_t logits(const Problem& p, float* z, const Executor& ex);

// For each row b and t < T (T <= kMaxThresholds): mass[b, t] = sum of exp(z_j - lse[b]) and
// count[b, t] = number of tokens over the keep set of (thresholds[b, t], id_cuts[b, t]).
// A row whose thresholds are all NaN is not read (mass 0, count 0).
void threshold_mass(const Problem& p, const float* thresholds, const int64_t* id_cuts, int64_t num_thresholds,
                    const float* lse, float* mass, int64_t* count, const Executor& ex);

// ids/zs (batch,): argmax of z_j + G(keys[b], j) over the keep set of (threshold[b], id_cut[b])
// (ties lowest id), and that token's z.
void gumbel_argmax(const Problem& p, const float* threshold, const int64_t* id_cut, const int64_t* keys, int64_t* ids,
                   float* zs, const Executor& ex);

}  // namespace collab
}  // namespace mtk
