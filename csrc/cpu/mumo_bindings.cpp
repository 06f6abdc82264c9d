// torch registration of the CPU MuMo kernels: torch.ops.mtkernels_cpu.mumo_lse_pick (the verification
// row kernel, docs/mumo_verify.md) and torch.ops.mtkernels_cpu.mumo_ce_rows (the head loss's row kernel,
// docs/mumo_head.md). Each checks its preconditions, turns tensors into raw pointers and calls
// the plain C++ kernels with at::parallel_for as the thread pool. One file for both keeps the
// number of torch translation units (the slow part of a build) down.
#include <torch/extension.h>

#include <optional>
#include <tuple>

#include "common/op_schemas.h"
#include "cpu/mumo_head.h"
#include "cpu/mumo_verify.h"

// --- verification: lse_pick ----------------------------------------------------------------------

namespace {

using at::Tensor;
namespace mumo = mtk::mumo;

mumo::DType dtype_code(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return mumo::DType::kFloat32;
    case at::kBFloat16: return mumo::DType::kBFloat16;
    case at::kHalf: return mumo::DType::kFloat16;
    default: TORCH_CHECK(false, "mumo_lse_pick: logits must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

Tensor index_arg(const Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.dim() == 1 && t.size(0) == n,
              "mumo_lse_pick: ", name, ": expected a (", n, ",) int64 CPU tensor, got ", t.scalar_type(), " ",
              t.sizes(), " on ", t.device());
  return t.contiguous();
}

mumo::Executor executor() {
  return {at::get_num_threads(), [](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
            at::parallel_for(0, n, 1, fn);
          }};
}

std::tuple<Tensor, Tensor> lse_pick_op(const Tensor& logits, const std::optional<Tensor>& rows,
                                       const std::optional<Tensor>& ids) {
  TORCH_CHECK(logits.device().is_cpu() && logits.dim() == 2, "mumo_lse_pick: logits: expected a 2-D CPU tensor (R, V), ",
              "got ", logits.sizes(), " on ", logits.device());
  const mumo::DType dtype = dtype_code(logits);
  TORCH_CHECK(logits.size(1) >= 1, "mumo_lse_pick: logits: expected V >= 1 columns");
  TORCH_CHECK(logits.stride(1) == 1 || logits.size(1) == 1, "mumo_lse_pick: logits: expected unit column stride");
  const int64_t total = logits.size(0), vocab = logits.size(1);
  Tensor r, id;
  int64_t n = total;
  if (rows.has_value()) {
    n = rows->numel();
    r = index_arg(*rows, "rows", n);
    TORCH_CHECK(n == 0 || (r.min().item<int64_t>() >= 0 && r.max().item<int64_t>() < total),
                "mumo_lse_pick: rows must be in [0, ", total, ")");
  }
  if (ids.has_value()) {
    id = index_arg(*ids, "ids", n);
    TORCH_CHECK(n == 0 || (id.min().item<int64_t>() >= 0 && id.max().item<int64_t>() < vocab),
                "mumo_lse_pick: ids must be in [0, ", vocab, ")");
  }
  const auto opts = logits.options().dtype(at::kFloat);
  Tensor lse = at::empty({n}, opts);
  Tensor picked = at::empty({ids.has_value() ? n : 0}, opts);
  const mumo::LsePickProblem p{logits.data_ptr(), logits.stride(0), dtype, vocab,
                               rows.has_value() ? r.data_ptr<int64_t>() : nullptr,
                               ids.has_value() ? id.data_ptr<int64_t>() : nullptr, n};
  if (n > 0) mumo::lse_pick(p, lse.data_ptr<float>(), ids.has_value() ? picked.data_ptr<float>() : nullptr, executor());
  return {lse, picked};
}

}  // namespace

// --- head loss: ce_rows ---------------------------------------------------------------------------

namespace {

using at::Tensor;

void check_vector(const Tensor& t, const char* name, at::ScalarType dtype, int64_t n) {
  TORCH_CHECK(t.device().is_cpu(), "mumo_ce_rows: ", name, ": expected a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "mumo_ce_rows: ", name, ": expected dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "mumo_ce_rows: ", name, ": expected shape (", n, "), got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "mumo_ce_rows: ", name, ": expected a contiguous tensor");
}

Tensor mumo_ce_rows_op(const Tensor& logits, const Tensor& targets, const Tensor& grad_scale, int64_t ignore_index,
                       bool compute_grad) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == at::kFloat && logits.dim() == 2,
              "mumo_ce_rows: logits: expected a 2-D float32 CPU tensor, got ", logits.scalar_type(), " ",
              logits.sizes(), " on ", logits.device());
  // overwritten with the gradient in place: rows must be dense
  TORCH_CHECK(logits.stride(1) == 1 && logits.stride(0) >= logits.size(1),
              "mumo_ce_rows: logits: expected unit column stride and non-overlapping rows");
  const int64_t n = logits.size(0), cols = logits.size(1);
  TORCH_CHECK(cols >= 1, "mumo_ce_rows: logits: expected at least one column");
  check_vector(targets, "targets", at::kLong, n);
  check_vector(grad_scale, "grad_scale", at::kFloat, n);
  // the kernel indexes the row by target: an out-of-range one would read out of bounds
  const Tensor bad = (targets != ignore_index) & ((targets < 0) | (targets >= cols));
  TORCH_CHECK(!bad.any().item<bool>(), "mumo_ce_rows: targets must be ignore_index (", ignore_index, ") or in [0, ",
              cols, ")");
  Tensor loss = at::empty({n}, logits.options());
  const mtk::mumo::CeProblem p{logits.data_ptr<float>(), cols, logits.stride(0), targets.data_ptr<int64_t>(),
                               grad_scale.data_ptr<float>(), n, ignore_index, compute_grad};
  const mtk::mumo::Executor ex{at::get_num_threads(), [](int64_t rows, const std::function<void(int64_t, int64_t)>& fn) {
                                 at::parallel_for(0, rows, 1, fn);
                               }};
  if (n > 0) mtk::mumo::ce_rows(p, loss.data_ptr<float>(), ex);
  return loss;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mtkernels_cpu, m) {
  m.def(mtk::schema::kMumoLsePick);
  m.def(mtk::schema::kMumoCeRows);
}

TORCH_LIBRARY_IMPL(mtkernels_cpu, CPU, m) {
  m.impl("mumo_lse_pick", &lse_pick_op);
  m.impl("mumo_ce_rows", &mumo_ce_rows_op);
}
