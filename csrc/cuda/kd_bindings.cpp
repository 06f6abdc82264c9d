// torch registration of the CUDA self-evolution KD row kernel: torch.ops.mtkernels_cuda.kd_rows
// (docs/kd.md). Checks the preconditions that need no device sync, allocates the
// per-row outputs with torch (caching allocator, current stream) and calls the launcher of
// self_evolution_kd.cuh. The library itself is defined in bindings.cpp; this file adds a fragment.
#include <torch/extension.h>

#include <ATen/MemoryOverlap.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "common/op_schemas.h"
#include "cuda/self_evolution_kd.cuh"

namespace {

using at::Tensor;
namespace kc = mtk::cuda;

constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();  // the kernel indexes columns and rows with int

// A per-row argument of shape (n,): right device and dtype, made contiguous (n elements at most).
Tensor row_arg(const Tensor& t, const char* name, at::ScalarType dtype, int64_t rows, const Tensor& like) {
  TORCH_CHECK(t.device() == like.device() && t.scalar_type() == dtype, "kd_rows: ", name, ": expected a ", dtype,
              " tensor on ", like.device(), ", got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == rows, "kd_rows: ", name, ": expected shape (", rows, "), got ", t.sizes());
  return t.contiguous();
}

std::tuple<Tensor, Tensor, Tensor> kd_rows_op(const Tensor& student, const Tensor& teacher, const Tensor& labels,
                                              const std::optional<Tensor>& hard, const Tensor& grad_scale,
                                              int64_t mode, double lam, double beta, double gamma, double temperature,
                                              int64_t ignore_index, int64_t vocab, bool compute_grad) {
  TORCH_CHECK(student.is_cuda() && student.scalar_type() == at::kFloat && student.dim() == 2,
              "kd_rows: student: expected a 2-D float32 CUDA tensor, got ", student.scalar_type(), " ",
              student.sizes(), " on ", student.device());
  // The gradient is written in place row by row: the rows must be distinct, dense memory.
  TORCH_CHECK(student.is_contiguous(), "kd_rows: student must be contiguous (it is overwritten with the gradient)");
  TORCH_CHECK(teacher.device() == student.device() && teacher.scalar_type() == at::kFloat && teacher.dim() == 2,
              "kd_rows: teacher: expected a 2-D float32 tensor on ", student.device(), ", got ",
              teacher.scalar_type(), " ", teacher.sizes(), " on ", teacher.device());
  const int64_t rows = student.size(0);
  TORCH_CHECK(teacher.size(0) == rows, "kd_rows: teacher has ", teacher.size(0), " rows, student ", rows);
  TORCH_CHECK(rows <= kMaxIndex, "kd_rows: at most 2^31 - 1 rows per call, got ", rows);
  TORCH_CHECK(student.size(1) <= kMaxIndex, "kd_rows: at most 2^31 - 1 student columns, got ", student.size(1));
  TORCH_CHECK(vocab >= 1 && vocab <= student.size(1) && vocab <= teacher.size(1), "kd_rows: vocab must be in [1, ",
              "min(V_s, V_t)] = [1, ", std::min(student.size(1), teacher.size(1)), "], got ", vocab);
  TORCH_CHECK(mode >= 0 && mode < mtk::kd::kNumModes, "kd_rows: mode must be in [0, ", mtk::kd::kNumModes - 1,
              "], got ", mode);
  TORCH_CHECK(lam >= 0.0 && lam <= 1.0, "kd_rows: lam must be in [0, 1], got ", lam);
  TORCH_CHECK(beta > 0.0 && beta <= 1.0, "kd_rows: beta must be in (0, 1], got ", beta);
  TORCH_CHECK(gamma >= 0.0, "kd_rows: gamma must be >= 0, got ", gamma);
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature), "kd_rows: temperature must be a positive finite number, got ",
              temperature);

  const Tensor lab = row_arg(labels, "labels", at::kLong, rows, student);
  const Tensor scale = row_arg(grad_scale, "grad_scale", at::kFloat, rows, student);
  Tensor hard_mask;
  if (hard.has_value()) hard_mask = row_arg(*hard, "hard", at::kBool, rows, student);
  // The teacher is only read: any row stride will do, but the columns must be adjacent.
  Tensor tea = teacher;
  if (tea.stride(1) != 1 && tea.size(1) != 1) tea = tea.narrow(1, 0, vocab).contiguous();
  if (compute_grad) at::assert_no_overlap(student, tea);  // in-place writes must not change the teacher

  const c10::cuda::CUDAGuard guard(student.device());
  const auto opts = student.options();
  Tensor loss = at::empty({rows}, opts);
  Tensor d = at::empty({rows}, opts);
  Tensor is_hard = at::empty({rows}, opts.dtype(at::kBool));
  if (rows == 0) return {loss, d, is_hard};

  kc::KdRowsArgs args{};
  args.student = student.data_ptr<float>();
  args.student_cols = student.size(1);
  args.student_stride = student.size(1);  // contiguous
  args.teacher = tea.data_ptr<float>();
  args.teacher_stride = tea.stride(0);
  args.labels = lab.data_ptr<int64_t>();
  args.hard = hard.has_value() ? hard_mask.data_ptr<bool>() : nullptr;
  args.grad_scale = scale.data_ptr<float>();
  args.rows = rows;
  args.vocab = vocab;
  args.ignore_index = ignore_index;
  args.mode = static_cast<int>(mode);
  args.lam = static_cast<float>(lam);
  args.beta = static_cast<float>(beta);
  args.gamma = static_cast<float>(gamma);
  args.temperature = static_cast<float>(temperature);
  args.compute_grad = compute_grad;
  args.loss = loss.data_ptr<float>();
  args.d = d.data_ptr<float>();
  args.is_hard = is_hard.data_ptr<bool>();
  const cudaError_t err = kc::kd_rows(args, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "mtkernels_cuda.kd_rows: kernel launch failed: ", cudaGetErrorString(err));
  return {loss, d, is_hard};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mtkernels_cuda, m) {
  m.def(mtk::schema::kKdRows);
}

TORCH_LIBRARY_IMPL(mtkernels_cuda, CUDA, m) { m.impl("kd_rows", &kd_rows_op); }
