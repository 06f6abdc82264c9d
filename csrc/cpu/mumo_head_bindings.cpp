// torch registration of the CPU cross-entropy row kernel of the MuMo head loss:
// torch.ops.mtkernels_cpu.mumo_ce_rows. Checks the preconditions (docs/mumo_head.md), turns
// tensors into raw pointers (mumo_head.h) and supplies at::parallel_for as the thread pool.
#include <torch/extension.h>

#include "common/op_schemas.h"
#include "cpu/mumo_head.h"

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
  m.def(mtk::schema::kMumoCeRows);
}

TORCH_LIBRARY_IMPL(mtkernels_cpu, CPU, m) { m.impl("mumo_ce_rows", &mumo_ce_rows_op); }
