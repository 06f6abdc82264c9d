// torch registration of the CUDA cross-entropy row kernel of the MuMo head loss:
// torch.ops.mtkernels_cuda.mumo_ce_rows (docs/mumo_head.md). Checks the preconditions that need no
// device sync, allocates the per-row loss with torch (caching allocator, current stream) and calls
// the launcher of mumo_head.cuh. The library itself is defined in bindings.cpp; this adds a fragment.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <limits>

#include "common/op_schemas.h"
#include "cuda/mumo_head.cuh"

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
  m.def(mtk::schema::kMumoCeRows);
}

TORCH_LIBRARY_IMPL(mtkernels_cuda, CUDA, m) { m.impl("mumo_ce_rows", &mumo_ce_rows_op); }
