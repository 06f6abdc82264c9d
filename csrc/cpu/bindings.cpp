// torch registration of the CPU collab kernels: torch.ops.mtkernels_cpu.collab_{topk, logits,
// threshold_mass, gumbel_argmax} (semantics: collab.h). Checks the preconditions, turns tensors into raw pointers and
// strides (collab.h), and supplies at::parallel_for as the thread pool.
#include <torch/extension.h>

#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "common/op_schemas.h"
#include "cpu/collab.h"

namespace {

using at::Tensor;
namespace collab = mtk::collab;

collab::DType dtype_of(const Tensor& x, size_t m) {
  switch (x.scalar_type()) {
    case at::kFloat: return collab::DType::kFloat32;
    case at::kBFloat16: return collab::DType::kBFloat16;
    case at::kHalf: return collab::DType::kFloat16;
    default: TORCH_CHECK(false, "logits[", m, "]: dtype must be float32, bfloat16 or float16, got ", x.scalar_type());
  }
}

collab::Problem make_problem(at::TensorList logits, const Tensor& weights, const Tensor& temperature,
                             int64_t vocab_size) {
  TORCH_CHECK(!logits.empty(), "logits: need at least one model's logits (M >= 1)");
  const int64_t batch = logits[0].dim() == 2 ? logits[0].size(0) : -1;
  TORCH_CHECK(vocab_size >= 1 && vocab_size <= std::numeric_limits<int32_t>::max(),
              "vocab_size must be in [1, 2^31), got ", vocab_size);
  collab::Problem p;
  p.batch = batch;
  p.vocab = vocab_size;
  for (size_t m = 0; m < logits.size(); ++m) {
    const Tensor& x = logits[m];
    TORCH_CHECK(x.device().is_cpu(), "logits[", m, "]: expected a CPU tensor, got one on ", x.device());
    TORCH_CHECK(x.dim() == 2, "logits[", m, "]: expected shape (B, V_m), got ", x.sizes());
    TORCH_CHECK(x.size(0) == batch, "logits[", m, "]: batch size ", x.size(0), " differs from logits[0]'s ", batch);
    TORCH_CHECK(x.size(1) >= vocab_size, "logits[", m, "]: has ", x.size(1), " columns, fewer than vocab_size ",
                vocab_size);
    TORCH_CHECK(x.stride(1) == 1 || x.size(1) == 1, "logits[", m, "]: needs unit stride along the vocabulary, got ",
                x.strides());
    p.models.push_back({x.data_ptr(), x.stride(0), dtype_of(x, m)});
  }
  TORCH_CHECK(weights.device().is_cpu() && weights.scalar_type() == at::kFloat && weights.is_contiguous(),
              "weights: expected a contiguous float32 CPU tensor");
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == batch && weights.size(1) == static_cast<int64_t>(logits.size()),
              "weights: expected shape (", batch, ", ", logits.size(), "), got ", weights.sizes());
  TORCH_CHECK(temperature.device().is_cpu() && temperature.scalar_type() == at::kFloat && temperature.is_contiguous(),
              "temperature: expected a contiguous float32 CPU tensor");
  TORCH_CHECK(temperature.dim() == 1 && temperature.size(0) == batch, "temperature: expected shape (", batch,
              ",), got ", temperature.sizes());
  p.weights = weights.data_ptr<float>();
  p.temperature = temperature.data_ptr<float>();
  return p;
}

void check_rows(const Tensor& t, const char* name, at::ScalarType dtype, int64_t batch, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous(), name,
              ": expected a contiguous ", dtype, " CPU tensor");
  TORCH_CHECK(t.dim() == dim && t.size(0) == batch, name, ": expected ", dim, "-D with ", batch, " rows, got ",
              t.sizes());
}

collab::Executor executor() {
  return {at::get_num_threads(), [](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
            at::parallel_for(0, n, 1, fn);
          }};
}

std::tuple<Tensor, Tensor, Tensor> topk_op(at::TensorList logits, const Tensor& weights, const Tensor& temperature,
                                           int64_t vocab_size, int64_t k) {
  const collab::Problem p = make_problem(logits, weights, temperature, vocab_size);
  TORCH_CHECK(k >= 1 && k <= vocab_size, "k must be in [1, vocab_size = ", vocab_size, "], got ", k);
  const auto opts = logits[0].options();
  Tensor values = at::empty({p.batch, k}, opts.dtype(at::kFloat));
  Tensor ids = at::empty({p.batch, k}, opts.dtype(at::kLong));
  Tensor lse = at::empty({p.batch}, opts.dtype(at::kFloat));
  if (p.batch > 0)
    collab::topk(p, k, values.data_ptr<float>(), ids.data_ptr<int64_t>(), lse.data_ptr<float>(), executor());
  return {values, ids, lse};
}

Tensor logits_op(at::TensorList logits, const Tensor& weights, const Tensor& temperature, int64_t vocab_size) {
  const collab::Problem p = make_problem(logits, weights, temperature, vocab_size);
  Tensor z = at::empty({p.batch, vocab_size}, logits[0].options().dtype(at::kFloat));
  if (p.batch == 0) return z;
  const int64_t row = collab::logits(p, z.data_ptr<float>(), executor());
  TORCH_CHECK_VALUE(row < 0, "temperature / weights: the combined logits of row ", row,
                    " overflow float32 although the inputs are finite (|sum_m w_m * x_m / temperature| > 3.4e38): "
                    "use a larger temperature or smaller weights");
  return z;
}

// id_cuts: the keep sets' id cuts, like thresholds; absent: every tie at a threshold is kept.
std::optional<Tensor> id_cuts_arg(const std::optional<Tensor>& id_cuts, const char* name, int64_t batch, int64_t dim,
                                  const Tensor& thresholds) {
  if (!id_cuts.has_value()) return std::nullopt;
  check_rows(*id_cuts, name, at::kLong, batch, dim);
  TORCH_CHECK(id_cuts->sizes() == thresholds.sizes(), name, ": expected the thresholds' shape ", thresholds.sizes(),
              ", got ", id_cuts->sizes());
  return id_cuts;
}

std::tuple<Tensor, Tensor> threshold_mass_op(at::TensorList logits, const Tensor& weights, const Tensor& temperature,
                                             int64_t vocab_size, const Tensor& thresholds,
                                             const std::optional<Tensor>& id_cuts, const Tensor& lse) {
  const collab::Problem p = make_problem(logits, weights, temperature, vocab_size);
  check_rows(thresholds, "thresholds", at::kFloat, p.batch, 2);
  const auto cuts = id_cuts_arg(id_cuts, "id_cuts", p.batch, 2, thresholds);
  check_rows(lse, "lse", at::kFloat, p.batch, 1);
  const int64_t T = thresholds.size(1);
  TORCH_CHECK(T <= collab::kMaxThresholds, "thresholds: at most ", collab::kMaxThresholds, " per row, got ", T);
  Tensor mass = at::zeros({p.batch, T}, lse.options());
  Tensor count = at::zeros({p.batch, T}, lse.options().dtype(at::kLong));
  if (p.batch > 0 && T > 0)
    collab::threshold_mass(p, thresholds.data_ptr<float>(), cuts ? cuts->data_ptr<int64_t>() : nullptr, T,
                           lse.data_ptr<float>(), mass.data_ptr<float>(), count.data_ptr<int64_t>(), executor());
  return {mass, count};
}

std::tuple<Tensor, Tensor> gumbel_argmax_op(at::TensorList logits, const Tensor& weights, const Tensor& temperature,
                                            int64_t vocab_size, const Tensor& threshold,
                                            const std::optional<Tensor>& id_cut, const Tensor& keys) {
  const collab::Problem p = make_problem(logits, weights, temperature, vocab_size);
  check_rows(threshold, "threshold", at::kFloat, p.batch, 1);
  const auto cut = id_cuts_arg(id_cut, "id_cut", p.batch, 1, threshold);
  check_rows(keys, "keys", at::kLong, p.batch, 1);
  Tensor ids = at::empty({p.batch}, keys.options());
  Tensor zs = at::empty({p.batch}, threshold.options());
  if (p.batch > 0)
    collab::gumbel_argmax(p, threshold.data_ptr<float>(), cut ? cut->data_ptr<int64_t>() : nullptr,
                          keys.data_ptr<int64_t>(), ids.data_ptr<int64_t>(), zs.data_ptr<float>(), executor());
  return {ids, zs};
}

}  // namespace

TORCH_LIBRARY(mtkernels_cpu, m) {
  m.def(mtk::schema::kCollabTopk);
  m.def(mtk::schema::kCollabLogits);
  m.def(mtk::schema::kCollabThresholdMass);
  m.def(mtk::schema::kCollabGumbelArgmax);
}

TORCH_LIBRARY_IMPL(mtkernels_cpu, CPU, m) {
  m.impl("collab_topk", &topk_op);
  m.impl("collab_logits", &logits_op);
  m.impl("collab_threshold_mass", &threshold_mass_op);
  m.impl("collab_gumbel_argmax", &gumbel_argmax_op);
}

// `from mtkernels import _C` loads this library, which runs the registrations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "mtkernels CPU kernels (torch.ops.mtkernels_cpu)"; }
