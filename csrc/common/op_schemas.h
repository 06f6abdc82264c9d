// The torch schemas of the kernel primitives, one definition for the cpu library
// (torch.ops.mtkernels_cpu) and the cuda library (torch.ops.mtkernels_cuda): the Python side calls
// both the same way, so their signatures must not drift apart.
#pragma once

namespace mtk {
namespace schema {

constexpr const char* kCollabTopk =
    "collab_topk(Tensor[] logits, Tensor weights, Tensor temperature, int vocab_size, int k)"
    " -> (Tensor, Tensor, Tensor)";
constexpr const char* kCollabLogits =
    "collab_logits(Tensor[] logits, Tensor weights, Tensor temperature, int vocab_size) -> Tensor";
constexpr const char* kCollabThresholdMass =
    "collab_threshold_mass(Tensor[] logits, Tensor weights, Tensor temperature, int vocab_size, Tensor thresholds,"
    " Tensor? id_cuts, Tensor lse) -> (Tensor, Tensor)";
constexpr const char* kCollabGumbelArgmax =
    "collab_gumbel_argmax(Tensor[] logits, Tensor weights, Tensor temperature, int vocab_size, Tensor threshold,"
    " Tensor? id_cut, Tensor keys) -> (Tensor, Tensor)";
constexpr const char* kKdRows =
    "kd_rows(Tensor(a!) student, Tensor teacher, Tensor labels, Tensor? hard, Tensor grad_scale, int mode,"
    " float lam, float beta, float gamma, float temperature, int ignore_index, int vocab, bool compute_grad)"
    " -> (Tensor, Tensor, Tensor)";
constexpr const char* kMumoCeRows =
    "mumo_ce_rows(Tensor(a!) logits, Tensor targets, Tensor grad_scale, int ignore_index, bool compute_grad)"
    " -> Tensor";

}  // namespace schema
}  // namespace mtk
