// torch registration of the CUDA collab kernels: torch.ops.mtkernels_cuda.collab_{topk, logits,
// threshold_mass, gumbel_argmax}. Checks the preconditions, allocates outputs and the small split
// workspaces with torch (the caching allocator, current stream), and calls the launchers of
// collab.cuh with raw pointers and strides. No host sync anywhere.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "common/op_schemas.h"
#include "cuda/collab.cuh"

namespace {

using at::Tensor;
namespace kc = mtk::cuda;

// The inputs, plus contiguous copies of any logits without unit stride along the vocabulary (the
// op layer never passes such, but a copy beats a wrong answer); they must outlive the launch.
struct Inputs {
  kc::CollabInputs raw{};
  Tensor weights, temperature;
  std::vector<Tensor> keep_alive;
};

int dtype_code(const Tensor& x, size_t m) {
  switch (x.scalar_type()) {
    case at::kFloat: return kc::kFloat32;
    case at::kBFloat16: return kc::kBFloat16;
    case at::kHalf: return kc::kFloat16;
    default: TORCH_CHECK(false, "logits[", m, "]: dtype must be float32, bfloat16 or float16, got ", x.scalar_type());
  }
}

Inputs make_inputs(at::TensorList logits, const Tensor& weights, const Tensor& temperature, int64_t vocab_size) {
  TORCH_CHECK(!logits.empty(), "logits: need at least one model's logits (M >= 1)");
  TORCH_CHECK(logits.size() <= static_cast<size_t>(kc::kMaxInputs), "logits: at most ", kc::kMaxInputs,
              " models per call, got ", logits.size());
  TORCH_CHECK(vocab_size >= 1 && vocab_size <= std::numeric_limits<int32_t>::max(),
              "vocab_size must be in [1, 2^31), got ", vocab_size);
  const Tensor& first = logits[0];
  TORCH_CHECK(first.is_cuda(), "logits[0]: expected a CUDA tensor, got one on ", first.device());
  TORCH_CHECK(first.dim() == 2, "logits[0]: expected shape (B, V_m), got ", first.sizes());
  const int64_t batch = first.size(0);
  Inputs in;
  in.raw.num_inputs = static_cast<int>(logits.size());
  in.raw.batch = batch;
  in.raw.vocab = vocab_size;
  for (size_t m = 0; m < logits.size(); ++m) {
    Tensor x = logits[m];
    TORCH_CHECK(x.device() == first.device(), "logits[", m, "]: on ", x.device(), ", but logits[0] is on ",
                first.device());
    TORCH_CHECK(x.dim() == 2, "logits[", m, "]: expected shape (B, V_m), got ", x.sizes());
    TORCH_CHECK(x.size(0) == batch, "logits[", m, "]: batch size ", x.size(0), " differs from logits[0]'s ", batch);
    TORCH_CHECK(x.size(1) >= vocab_size, "logits[", m, "]: has ", x.size(1), " columns, fewer than vocab_size ",
                vocab_size);
    in.raw.dtype[m] = dtype_code(x, m);
    if (x.stride(1) != 1 && x.size(1) != 1) {
      x = x.narrow(1, 0, vocab_size).contiguous();
      in.keep_alive.push_back(x);
    }
    in.raw.data[m] = x.data_ptr();
    in.raw.row_stride[m] = x.stride(0);
  }
  TORCH_CHECK(weights.device() == first.device() && weights.scalar_type() == at::kFloat, "weights: expected a float32 tensor on ",
              first.device(), ", got ", weights.scalar_type(), " on ", weights.device());
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == batch && weights.size(1) == static_cast<int64_t>(logits.size()),
              "weights: expected shape (", batch, ", ", logits.size(), "), got ", weights.sizes());
  TORCH_CHECK(temperature.device() == first.device() && temperature.scalar_type() == at::kFloat,
              "temperature: expected a float32 tensor on ", first.device(), ", got ", temperature.scalar_type(), " on ",
              temperature.device());
  TORCH_CHECK(temperature.dim() == 1 && temperature.size(0) == batch, "temperature: expected shape (", batch, ",), got ",
              temperature.sizes());
  in.weights = weights.contiguous();
  in.temperature = temperature.contiguous();
  in.raw.weights = in.weights.data_ptr<float>();
  in.raw.temperature = in.temperature.data_ptr<float>();
  return in;
}

// A small per-row tensor argument, made contiguous (a copy of B or B * T values at most).
Tensor rows_arg(const Tensor& t, const char* name, at::ScalarType dtype, int64_t batch, int64_t dim,
                const Tensor& like) {
  TORCH_CHECK(t.device() == like.device() && t.scalar_type() == dtype, name, ": expected a ", dtype, " tensor on ",
              like.device(), ", got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.dim() == dim && t.size(0) == batch, name, ": expected ", dim, "-D with ", batch, " rows, got ",
              t.sizes());
  return t.contiguous();
}

int num_sms(int device) {
  static int cache[64] = {};  // per device; an attribute query is cheap, but there is no need to repeat it
  if (device >= 0 && device < 64 && cache[device] > 0) return cache[device];
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < 64) cache[device] = n;
  return n;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "mtkernels_cuda.", op, ": kernel launch failed: ", cudaGetErrorString(err));
}

std::tuple<Tensor, Tensor, Tensor> topk_op(at::TensorList logits, const Tensor& weights, const Tensor& temperature,
                                           int64_t vocab_size, int64_t k) {
  const Inputs in = make_inputs(logits, weights, temperature, vocab_size);
  TORCH_CHECK(k >= 1 && k <= vocab_size && k <= kc::kMaxTopK, "k must be in [1, min(vocab_size = ", vocab_size, ", ",
              kc::kMaxTopK, ")], got ", k);
  const c10::cuda::CUDAGuard guard(logits[0].device());
  const auto opts = logits[0].options();
  const int64_t batch = in.raw.batch;
  Tensor values = at::empty({batch, k}, opts.dtype(at::kFloat));
  Tensor ids = at::empty({batch, k}, opts.dtype(at::kLong));
  Tensor lse = at::empty({batch}, opts.dtype(at::kFloat));
  if (batch == 0) return {values, ids, lse};
  const int sms = num_sms(logits[0].get_device());
  const int splits = kc::topk_splits(batch, vocab_size, static_cast<int>(k), sms);
  Tensor cand = at::empty({batch * splits * k}, opts.dtype(at::kLong));  // uint64 keys
  Tensor stats = at::empty({batch * splits * 2}, opts.dtype(at::kFloat));
  check_launch(kc::collab_topk(in.raw, static_cast<int>(k), splits, reinterpret_cast<uint64_t*>(cand.data_ptr<int64_t>()),
                               stats.data_ptr<float>(), values.data_ptr<float>(), ids.data_ptr<int64_t>(),
                               lse.data_ptr<float>(), sms, c10::cuda::getCurrentCUDAStream()),
               "collab_topk");
  return {values, ids, lse};
}

Tensor logits_op(at::TensorList logits, const Tensor& weights, const Tensor& temperature, int64_t vocab_size) {
  const Inputs in = make_inputs(logits, weights, temperature, vocab_size);
  const c10::cuda::CUDAGuard guard(logits[0].device());
  Tensor z = at::empty({in.raw.batch, vocab_size}, logits[0].options().dtype(at::kFloat));
  if (in.raw.batch == 0) return z;
  check_launch(kc::collab_logits(in.raw, z.data_ptr<float>(), num_sms(logits[0].get_device()),
                                 c10::cuda::getCurrentCUDAStream()),
               "collab_logits");
  return z;
}

// The keep sets' id cuts, shaped like the thresholds (absent: every tie kept); null pointer if absent.
const int64_t* id_cuts_arg(const std::optional<Tensor>& id_cuts, Tensor& keep, const char* name, const Tensor& thresholds,
                           const Tensor& like) {
  if (!id_cuts.has_value()) return nullptr;
  keep = rows_arg(*id_cuts, name, at::kLong, thresholds.size(0), thresholds.dim(), like);
  TORCH_CHECK(keep.sizes() == thresholds.sizes(), name, ": expected the thresholds' shape ", thresholds.sizes(), ", got ",
              keep.sizes());
  return keep.data_ptr<int64_t>();
}

std::tuple<Tensor, Tensor> threshold_mass_op(at::TensorList logits, const Tensor& weights, const Tensor& temperature,
                                             int64_t vocab_size, const Tensor& thresholds,
                                             const std::optional<Tensor>& id_cuts, const Tensor& lse) {
  const Inputs in = make_inputs(logits, weights, temperature, vocab_size);
  const int64_t batch = in.raw.batch;
  const Tensor th = rows_arg(thresholds, "thresholds", at::kFloat, batch, 2, logits[0]);
  Tensor cuts;
  const int64_t* cut_ptr = id_cuts_arg(id_cuts, cuts, "id_cuts", th, logits[0]);
  const Tensor l = rows_arg(lse, "lse", at::kFloat, batch, 1, logits[0]);
  const int64_t t = th.size(1);
  TORCH_CHECK(t <= kc::kMaxThresholds, "thresholds: at most ", kc::kMaxThresholds, " per row, got ", t);
  const c10::cuda::CUDAGuard guard(logits[0].device());
  Tensor mass = at::zeros({batch, t}, l.options());
  Tensor count = at::zeros({batch, t}, l.options().dtype(at::kLong));
  if (batch == 0 || t == 0) return {mass, count};
  const int splits = kc::reduce_splits(batch, vocab_size, num_sms(logits[0].get_device()));
  Tensor ws = at::empty({batch * splits * t}, l.options());
  Tensor count_ws = at::empty({batch * splits * t}, l.options().dtype(at::kInt));
  check_launch(kc::collab_threshold_mass(in.raw, th.data_ptr<float>(), cut_ptr, static_cast<int>(t), l.data_ptr<float>(),
                                         splits, ws.data_ptr<float>(), count_ws.data_ptr<int>(), mass.data_ptr<float>(),
                                         count.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream()),
               "collab_threshold_mass");
  return {mass, count};
}

std::tuple<Tensor, Tensor> gumbel_argmax_op(at::TensorList logits, const Tensor& weights, const Tensor& temperature,
                                            int64_t vocab_size, const Tensor& threshold,
                                            const std::optional<Tensor>& id_cut, const Tensor& keys) {
  const Inputs in = make_inputs(logits, weights, temperature, vocab_size);
  const int64_t batch = in.raw.batch;
  const Tensor th = rows_arg(threshold, "threshold", at::kFloat, batch, 1, logits[0]);
  Tensor cut;
  const int64_t* cut_ptr = id_cuts_arg(id_cut, cut, "id_cut", th, logits[0]);
  const Tensor ks = rows_arg(keys, "keys", at::kLong, batch, 1, logits[0]);
  const c10::cuda::CUDAGuard guard(logits[0].device());
  Tensor ids = at::empty({batch}, ks.options());
  Tensor zs = at::empty({batch}, th.options());
  if (batch == 0) return {ids, zs};
  const int splits = kc::reduce_splits(batch, vocab_size, num_sms(logits[0].get_device()));
  Tensor ws = at::empty({batch * splits * 2}, ks.options());  // (uint64 key, z bits) per split
  check_launch(kc::collab_gumbel_argmax(in.raw, th.data_ptr<float>(), cut_ptr, ks.data_ptr<int64_t>(), splits,
                                        reinterpret_cast<uint64_t*>(ws.data_ptr<int64_t>()), ids.data_ptr<int64_t>(),
                                        zs.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
               "collab_gumbel_argmax");
  return {ids, zs};
}

}  // namespace

TORCH_LIBRARY(mtkernels_cuda, m) {
  m.def(mtk::schema::kCollabTopk);
  m.def(mtk::schema::kCollabLogits);
  m.def(mtk::schema::kCollabThresholdMass);
  m.def(mtk::schema::kCollabGumbelArgmax);
}

TORCH_LIBRARY_IMPL(mtkernels_cuda, CUDA, m) {
  m.impl("collab_topk", &topk_op);
  m.impl("collab_logits", &logits_op);
  m.impl("collab_threshold_mass", &threshold_mass_op);
  m.impl("collab_gumbel_argmax", &gumbel_argmax_op);
}

// `from mtkernels import _C_cuda` loads this library, which runs the registrations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "mtkernels CUDA kernels (torch.ops.mtkernels_cuda)"; }
