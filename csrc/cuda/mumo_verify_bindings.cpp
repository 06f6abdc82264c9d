// torch registration of the CUDA MuMo verification row kernel: torch.ops.mtkernels_cuda.mumo_lse_pick
// (docs/mumo_verify.md). Checks the preconditions that need no device sync, allocates the outputs
// with torch (caching allocator, current stream) and calls the launcher of mumo_verify.cuh. The
// library itself is defined in bindings.cpp; this file adds a fragment.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <limits>
#include <optional>
#include <tuple>

#include "common/op_schemas.h"
#include "cuda/mumo_verify.cuh"

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

TORCH_LIBRARY_FRAGMENT(mtkernels_cuda, m) {
  m.def(mtk::schema::kMumoLsePick);
}

TORCH_LIBRARY_IMPL(mtkernels_cuda, CUDA, m) { m.impl("mumo_lse_pick", &lse_pick_op); }
