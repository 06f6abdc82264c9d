// torch registration of the CPU self-evolution KD row kernel: torch.ops.mtkernels_cpu.kd_rows.
// Checks the preconditions (the contract: docs/kd.md), turns tensors into raw
// pointers (self_evolution_kd.h) and supplies at::parallel_for as the thread pool.
#include <torch/extension.h>

#include <optional>
#include <tuple>

#include "common/op_schemas.h"
#include "cpu/self_evolution_kd.h"

namespace {

using at::Tensor;
namespace kd = mtk::kd;

void check_tensor(const Tensor& t, const char* name, at::ScalarType dtype, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, name, ": expected a ", dim, "-D tensor, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor");
}

void check_rows(const Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK(t.size(0) == n, name, ": expected ", n, " rows (student's), got ", t.size(0));
}

kd::Params make_params(int64_t mode, double lam, double beta, double gamma, double temperature,
                       int64_t ignore_index, bool compute_grad) {
  TORCH_CHECK(mode >= 0 && mode < kd::kNumModes, "mode must be in [0, ", kd::kNumModes - 1, "], got ", mode);
  TORCH_CHECK(lam >= 0 && lam <= 1, "lam must be in [0, 1], got ", lam);
  TORCH_CHECK(beta > 0 && beta <= 1, "beta must be in (0, 1], got ", beta);
  TORCH_CHECK(gamma >= 0, "gamma must be >= 0, got ", gamma);
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature), "temperature must be positive and finite, got ",
              temperature);
  return {static_cast<kd::Mode>(mode), lam, beta, gamma, temperature, ignore_index, compute_grad};
}

kd::Executor executor() {
  return {at::get_num_threads(), [](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
            at::parallel_for(0, n, 1, fn);
          }};
}

std::tuple<Tensor, Tensor, Tensor> kd_rows_op(const Tensor& student, const Tensor& teacher, const Tensor& labels,
                                              const std::optional<Tensor>& hard, const Tensor& grad_scale,
                                              int64_t mode, double lam, double beta, double gamma,
                                              double temperature, int64_t ignore_index, int64_t vocab,
                                              bool compute_grad) {
  check_tensor(student, "student", at::kFloat, 2);
  const int64_t n = student.size(0);
  check_tensor(teacher, "teacher", at::kFloat, 2);
  check_rows(teacher, "teacher", n);
  check_tensor(labels, "labels", at::kLong, 1);
  check_rows(labels, "labels", n);
  check_tensor(grad_scale, "grad_scale", at::kFloat, 1);
  check_rows(grad_scale, "grad_scale", n);
  if (hard.has_value()) {
    check_tensor(*hard, "hard", at::kBool, 1);
    check_rows(*hard, "hard", n);
  }
  TORCH_CHECK(vocab >= 1 && vocab <= student.size(1) && vocab <= teacher.size(1), "vocab must be in [1, min(V_s, V_t) = ",
              std::min(student.size(1), teacher.size(1)), "], got ", vocab);
  const kd::Params params = make_params(mode, lam, beta, gamma, temperature, ignore_index, compute_grad);
  // The kernel indexes the rows by label: an out-of-range one would read out of bounds.
  const Tensor bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab));
  TORCH_CHECK(!bad.any().item<bool>(), "labels must be ignore_index (", ignore_index, ") or in [0, ", vocab, ")");

  const auto opts = student.options();
  Tensor loss = at::empty({n}, opts);
  Tensor d = at::empty({n}, opts);
  Tensor is_hard = at::empty({n}, opts.dtype(at::kBool));
  const kd::Problem p{student.data_ptr<float>(), student.size(1), teacher.data_ptr<float>(), teacher.size(1),
                      labels.data_ptr<int64_t>(), hard.has_value() ? hard->data_ptr<bool>() : nullptr,
                      grad_scale.data_ptr<float>(), n, vocab};
  if (n > 0) kd::rows(p, params, {loss.data_ptr<float>(), d.data_ptr<float>(), is_hard.data_ptr<bool>()}, executor());
  return {loss, d, is_hard};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mtkernels_cpu, m) {
  m.def(mtk::schema::kKdRows);
}

TORCH_LIBRARY_IMPL(mtkernels_cpu, CPU, m) { m.impl("kd_rows", &kd_rows_op); }
