// torch registration of the CUDA MuMo kernels: torch.ops.mtkernels_cuda.mumo_lse_pick (the verification
// row kernel, docs/mumo_verify.md) and torch.ops.mtkernels_cuda.mumo_ce_rows (the head loss's row kernel,
// docs/mumo_head.md). Each checks its preconditions, turns tensors into raw pointers and calls
// the launchers (mumo_verify.cuh, mumo_head.cuh) on the current stream. The library itself is
// defined in bindings.cpp; this file adds a fragment. One file for both keeps the number of
// torch translation units (the slow part of a build) down.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <limits>
#include <optional>
#include <tuple>

#include "common/op_schemas.h"
#include "cuda/mumo_head.cuh"
#include "cuda/mumo_verify.cuh"

// --- verification: lse_pick ----------------------------------------------------------------------

namespace {

using at::Tensor;

Tensor index_arg(const Tensor& t, const char* name, int64_t n, const Tensor& like) {
  TORCH_CHECK(t.device() == like.device() && t.scalar_type() == at::kLong && t.dim() == 1 && t.size(0) == n,
              "mumo_lse_pick: ", name, ": expected a (", n, ",) int64 tensor on ", like.device(), ", got ",
              t.scalar_type(), " ", t.sizes(), " on ", t.device());
  return t.contiguous();
}

std::tuple<Tensor, Tensor> lse_pick_op(const Tensor& logits, const std::optional<Tensor>& rows,
                                       const std::optional<Tensor>& ids) {
  TORCH_CHECK(logits.is_cuda() && logits.dim() == 2, "mumo_lse_pick: logits: expected a 2-D CUDA tensor (R, V), got ",
              logits.sizes(), " on ", logits.device());
  int dtype;
  switch (logits.scalar_type()) {
    case at::kFloat: dtype = 0; break;
    case at::kBFloat16: dtype = 1; break;
    case at::kHalf: dtype = 2; break;
    default: TORCH_CHECK(false, "mumo_lse_pick: logits must be float32, bfloat16 or float16, got ", logits.scalar_type());
  }
  TORCH_CHECK(logits.size(1) >= 1 && logits.size(1) <= std::numeric_limits<int32_t>::max(),
              "mumo_lse_pick: logits: expected 1 <= V < 2^31 columns, got ", logits.size(1));
  TORCH_CHECK(logits.stride(1) == 1 || logits.size(1) == 1, "mumo_lse_pick: logits: expected unit column stride");
  const int64_t n = rows.has_value() ? rows->numel() : logits.size(0);
  Tensor r, id;
  if (rows.has_value()) r = index_arg(*rows, "rows", n, logits);
  if (ids.has_value()) id = index_arg(*ids, "ids", n, logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto opts = logits.options().dtype(at::kFloat);
  Tensor lse = at::empty({n}, opts);
  Tensor picked = at::empty({ids.has_value() ? n : 0}, opts);
  mtk::cuda::LsePickArgs args{logits.data_ptr(), logits.stride(0), dtype, logits.size(1),
                              rows.has_value() ? r.data_ptr<int64_t>() : nullptr,
                              ids.has_value() ? id.data_ptr<int64_t>() : nullptr, n, lse.data_ptr<float>(),
                              ids.has_value() ? picked.data_ptr<float>() : nullptr};
  const cudaError_t err = mtk::cuda::mumo_lse_pick(args, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "mtkernels_cuda.mumo_lse_pick: kernel launch failed: ", cudaGetErrorString(err));
  return {lse, picked};
}

}  // namespace

// --- head loss: ce_rows ---------------------------------------------------------------------------

namespace {

using at::Tensor;

constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();  // the kernel indexes columns and rows with int

Tensor row_arg(const Tensor& t, const char* name, at::ScalarType dtype, int64_t rows, const Tensor& like) {
  TORCH_CHECK(t.device() == like.device() && t.scalar_type() == dtype, "mumo_ce_rows: ", name, ": expected a ", dtype,
              " tensor on ", like.device(), ", got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == rows, "mumo_ce_rows: ", name, ": expected shape (", rows, "), got ",
              t.sizes());
  return t.contiguous();
}

Tensor mumo_ce_rows_op(const Tensor& logits, const Tensor& targets, const Tensor& grad_scale, int64_t ignore_index,
                       bool compute_grad) {
  TORCH_CHECK(logits.is_cuda() && logits.scalar_type() == at::kFloat && logits.dim() == 2,
              "mumo_ce_rows: logits: expected a 2-D float32 CUDA tensor, got ", logits.scalar_type(), " ",
              logits.sizes(), " on ", logits.device());
  // the gradient is written in place row by row: the rows must be distinct, dense memory
  TORCH_CHECK(logits.stride(1) == 1 && logits.stride(0) >= logits.size(1),
              "mumo_ce_rows: logits: expected unit column stride and non-overlapping rows");
  const int64_t rows = logits.size(0), cols = logits.size(1);
  TORCH_CHECK(cols >= 1 && cols <= kMaxIndex, "mumo_ce_rows: logits: expected 1 to 2^31 - 1 columns, got ", cols);
  TORCH_CHECK(rows <= kMaxIndex, "mumo_ce_rows: at most 2^31 - 1 rows per call, got ", rows);
  const Tensor tgt = row_arg(targets, "targets", at::kLong, rows, logits);
  const Tensor scale = row_arg(grad_scale, "grad_scale", at::kFloat, rows, logits);

  const c10::cuda::CUDAGuard guard(logits.device());
  Tensor loss = at::empty({rows}, logits.options());
  if (rows == 0) return loss;
  mtk::cuda::CeRowsArgs args{};
  args.logits = logits.data_ptr<float>();
  args.cols = cols;
  args.stride = logits.stride(0);
  args.targets = tgt.data_ptr<int64_t>();
  args.grad_scale = scale.data_ptr<float>();
  args.rows = rows;
  args.ignore_index = ignore_index;
  args.compute_grad = compute_grad;
  args.loss = loss.data_ptr<float>();
  const cudaError_t err = mtk::cuda::ce_rows(args, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "mtkernels_cuda.mumo_ce_rows: kernel launch failed: ", cudaGetErrorString(err));
  return loss;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mtkernels_cuda, m) {
  m.def(mtk::schema::kMumoLsePick);
  m.def(mtk::schema::kMumoCeRows);
}

TORCH_LIBRARY_IMPL(mtkernels_cuda, CUDA, m) {
  m.impl("mumo_lse_pick", &lse_pick_op);
  m.impl("mumo_ce_rows", &mumo_ce_rows_op);
}
