// Launchers of the CUDA collab kernels (the collab primitives of mtkernels/ops/collab_sampling.py):
// plain C++ types only, so the torch binding (bindings.cpp) and any other host code can call them
// without CUDA device code.
//
// Every kernel computes the combined logits
//     z[b, j] = float( (sum_m w[b, m] * double(x_m[b, j])) / double(tau[b]) )   (m = 0..M-1 in order)
//     z[b, j] = -inf if any x_m[b, j] == -inf           (masked, whatever the weight's sign)
// with one shared device function, so z is bit-identical across the four kernels (and to float32 of
// the float64 reference).
//
// Keep sets: (theta, cut) keeps token j iff z_j > theta, or z_j == theta and j <= cut (ties at theta
// lowest id first); a NaN theta keeps nothing.
//
// Work split: a block per (row, vocabulary split). Kernels that reduce over the vocabulary write
// per-split partial results into a caller-allocated workspace (O(B * splits * k) at most, never
// O(B * V)) and a second small kernel merges them per row. The *_splits() functions say how many
// splits a call will use, so the caller can size the workspace; pass the same value to the launcher.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace mtk {
namespace cuda {

constexpr int kMaxInputs = 16;  // models per call (M); the kernel parameter block holds them all
constexpr int kMaxTopK = 1024;  // widest top-k of the fused kernels
constexpr int kMaxThresholds = 16;  // T of threshold_mass

// dtype codes of the logits tensors
enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

struct CollabInputs {
  const void* data[kMaxInputs];  // x_m, element (b, j) at data[m] + b * row_stride[m] + j (in elements)
  int64_t row_stride[kMaxInputs];
  int dtype[kMaxInputs];  // DType
  int num_inputs;  // M in [1, kMaxInputs]
  const float* weights;  // (B, M) float32 contiguous
  const float* temperature;  // (B,) float32, > 0
  int64_t batch;  // B >= 0
  int64_t vocab;  // V in [1, 2^31): only columns j < V are read
};

// Vocabulary splits per row for each kernel, from B, V (and k) and the device's SM count.
int topk_splits(int64_t batch, int64_t vocab, int k, int num_sms);
int reduce_splits(int64_t batch, int64_t vocab, int num_sms);  // threshold_mass and gumbel_argmax

// topk: values (B, k) f32 descending (equal values: lowest id first), ids (B, k) int64, lse (B,) f32.
// Workspace: cand_ws B * splits * k uint64, stat_ws B * splits * 2 floats. 1 <= k <= min(V, kMaxTopK).
cudaError_t collab_topk(const CollabInputs& in, int k, int splits, uint64_t* cand_ws, float* stat_ws,
                        float* values, int64_t* ids, float* lse, int num_sms, cudaStream_t stream);

// logits: z (B, V) f32 contiguous.
cudaError_t collab_logits(const CollabInputs& in, float* z, int num_sms, cudaStream_t stream);

// threshold_mass: mass (B, T) f32 = sum of exp(z_j - lse[b]) and count (B, T) int64 = number of tokens
// over the keep set of (thresholds[b, t], id_cuts[b, t]); thresholds (B, T) f32 and id_cuts (B, T) int64
// contiguous (id_cuts null: every tie kept), 1 <= T <= kMaxThresholds; lse (B,) f32. A row whose
// thresholds are all NaN is not read. Workspace: mass_ws B * splits * T floats, count_ws B * splits * T ints.
cudaError_t collab_threshold_mass(const CollabInputs& in, const float* thresholds, const int64_t* id_cuts,
                                  int num_thresholds, const float* lse, int splits, float* mass_ws, int* count_ws,
                                  float* mass, int64_t* count, cudaStream_t stream);

// gumbel_argmax: ids (B,) int64 = argmax over the keep set of (threshold[b], id_cut[b]) of z_j + G(keys[b], j)
// (ties: lowest id; id_cut null: every tie kept), z (B,) f32 its z. keys (B,) int64 in [0, 2^32).
// Workspace: best_ws B * splits * 2 uint64.
cudaError_t collab_gumbel_argmax(const CollabInputs& in, const float* threshold, const int64_t* id_cut,
                                 const int64_t* keys, int splits, uint64_t* best_ws, int64_t* ids, float* z,
                                 cudaStream_t stream);

}  // namespace cuda
}  // namespace mtk
