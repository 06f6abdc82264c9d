// CUDA self-evolution KD row kernel (docs/kd.md; see self_evolution_kd.cuh).
//
// One block per row; rows are long (32k-150k columns), so a block has plenty of columns to stream
// and no cross-block merging or workspace is needed. Up to three sweeps over the row:
//   1. streaming statistics with online max-rescaling (every valid row): the log-normalisers,
//      KL(p || q) and KL(q || p), which give d, the easy, forward_kd and reverse_kd losses;
//   2. hard rows only (normalisers now known): the hard loss sum_j y_j (log y_j - log m_j) and
//      R = sum_j r_j q_j, evaluated in log space;
//   3. if compute_grad: the gradient, written in place over the student row.
// All accumulation is float32. The formulas (statistics, their merge, the row terms, the hard-loss
// column) are common/kd_row.h's, which the CPU kernel shares: logits are shifted by their raw row
// maximum before the division by T, products with a zero mass factor are 0, and logs feeding
// further exps are floored, so large logits, small temperatures and -inf (masked) entries neither
// lose precision to cancellation nor produce NaN.
#include "cuda/self_evolution_kd.cuh"

#include <cmath>
#include <limits>

#include <cub/block/block_reduce.cuh>

namespace mtk {
namespace cuda {
namespace {

using kd::Mode;
using Stats = kd::Stats<float>;
using Constants = kd::Constants<float>;

constexpr int kThreads = 512;  // a block per row: many loads in flight even when a chunk has few rows
// 3 resident blocks per SM (1536 threads on sm_80 / sm_90) caps the kernel at 40 registers, which
// it fits without spilling (test_cuda_compile); unbounded it takes 46-50, i.e. 2 blocks per SM.
constexpr int kMinBlocksPerSm = 3;
constexpr int kIlp = 4;  // columns per thread per round, loaded before any is used
constexpr int kTile = kThreads * kIlp;

struct MergeStats {
  float inv_t;
  __device__ __forceinline__ Stats operator()(const Stats& a, const Stats& b) const {
    return kd::merge_stats(a, b, inv_t);
  }
};

struct Sum2 {
  __device__ __forceinline__ float2 operator()(float2 a, float2 b) const { return make_float2(a.x + b.x, a.y + b.y); }
};

// What sweep 3 computes (block-uniform).
enum GradKind : int {
  kGradEasy = 0,  // easy, noevo, forward_kd: q_k - y_k
  kGradHard = 1,  // hard, skew: beta q_k (R - r_k)
  kGradReverse = 2,  // reverse_kd
  kGradUndefined = 3,  // a row without a distribution: NaN
};

// Row scalars, computed by thread 0 and shared with the block.
struct RowInfo {
  float mx, log_ss;  // log q_j = (x_j - mx) / T - log_ss
  float my, log_st;  // log p_j = (y_j - my) / T - log_st
  float log_yg;  // log y_g
  float kl_qp;  // KL(q || p)
  float r_sum;  // R (hard rows)
  int kind;  // GradKind
};

// log q_j (or log p_j) from a raw logit, floored: (x - max) / T - log(sum) keeps the small
// difference exact instead of subtracting two numbers of magnitude x / T.
__device__ __forceinline__ float log_prob(float x, float m, float inv_t, float log_sum) {
  return fmaxf((x - m) * inv_t - log_sum, kd::log_floor<float>());
}

// kIlp columns per thread (base, base + kThreads, ...) of both rows, raw; `pad` past vocab.
__device__ __forceinline__ void load_raw(const float* srow, const float* trow, int base, int vocab, float pad,
                                         float (&s)[kIlp], float (&t)[kIlp]) {
#pragma unroll
  for (int e = 0; e < kIlp; ++e) {
    const int j = base + e * kThreads;
    s[e] = j < vocab ? srow[j] : pad;
    t[e] = j < vocab ? trow[j] : pad;
  }
}

// Calls body(j, x_j, y_j) (raw logits, 0 past vocab) for this thread's columns j < limit; each
// round loads kIlp columns of both rows before any is used.
template <class Body>
__device__ __forceinline__ void for_each_column(const float* srow, const float* trow, int limit, int vocab,
                                                Body body) {
  for (int base = threadIdx.x; base < limit; base += kTile) {
    float s[kIlp], t[kIlp];
    load_raw(srow, trow, base, vocab, 0.f, s, t);
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      const int j = base + e * kThreads;
      if (j < limit) body(j, s[e], t[e]);
    }
  }
}

// log ỹ_j of a column: log ỹ_g on the label, else log λ + log p_j (floored: λ = 0 gives the floor).
__device__ __forceinline__ float log_target(int j, int g, float lp, float log_yg, const Constants& c) {
  return j == g ? fmaxf(log_yg, kd::log_floor<float>()) : fmaxf(c.log_lam + lp, kd::log_floor<float>());
}

__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) kd_rows_kernel(const KdRowsArgs a, const Constants c) {
  __shared__ union {
    typename cub::BlockReduce<Stats, kThreads>::TempStorage stats;
    typename cub::BlockReduce<float2, kThreads>::TempStorage pair;
  } tmp;
  __shared__ RowInfo info;

  const int64_t row = blockIdx.x;
  float* __restrict__ srow = a.student + row * a.student_stride;
  const float* __restrict__ trow = a.teacher + row * a.teacher_stride;
  const int vocab = static_cast<int>(a.vocab);
  const int cols = static_cast<int>(a.student_cols);
  const int tid = threadIdx.x;
  const int64_t label = a.labels[row];
  const Mode mode = static_cast<Mode>(a.mode);

  // Ignored rows (and, defensively, labels outside the vocabulary, which the caller rules out: NaN
  // makes such a bug visible instead of reading out of bounds) contribute nothing.
  const bool ignored = label == a.ignore_index;
  if (ignored || label < 0 || label >= vocab) {
    if (tid == 0) {
      const float value = ignored ? 0.f : __int_as_float(0x7fffffff);
      a.loss[row] = value;
      a.d[row] = value;
      a.is_hard[row] = false;
    }
    if (a.compute_grad) {
      for (int j = tid; j < cols; j += kThreads) srow[j] = 0.f;
    }
    return;
  }
  const int g = static_cast<int>(label);

  // ---- sweep 1: statistics. kIlp columns per thread are loaded first, the running maxima raised
  // once per round (rarely more than a few times per row), then the shifted terms accumulated.
  Stats acc = kd::empty_stats<float>();
  for (int base = tid; base < vocab; base += kTile) {
    float s[kIlp], t[kIlp];
    load_raw(srow, trow, base, vocab, kd::neg_inf<float>(), s, t);
    float round_mx = acc.mx, round_my = acc.my;
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      round_mx = fmaxf(round_mx, s[e]);
      round_my = fmaxf(round_my, t[e]);
    }
    kd::raise_maxima(acc, round_mx, round_my, c.inv_t);
    const float ox = kd::shift_origin(acc.mx), oy = kd::shift_origin(acc.my);
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      const float ds = (s[e] - ox) * c.inv_t, dt = (t[e] - oy) * c.inv_t;  // -inf past vocab
      const float es = expf(ds), et = expf(dt);
      acc.ss += es;
      acc.st += et;
      if (et > 0.f) acc.pd += et * (dt - ds);
      if (es > 0.f) acc.qd += es * (ds - dt);
    }
  }
  acc = cub::BlockReduce<Stats, kThreads>(tmp.stats).Reduce(acc, MergeStats{c.inv_t});

  if (tid == 0) {
    const kd::RowTerms<float> r = kd::row_terms(acc, srow[g], trow[g], c);
    const bool hard = r.has_distribution && kd::row_is_hard(mode, a.hard, row, r.d, a.gamma);
    int kind = kGradEasy;
    if (!r.has_distribution) {
      kind = kGradUndefined;
    } else if (mode == Mode::kReverseKD) {
      kind = kGradReverse;
    } else if (hard && kd::uses_hard_loss(mode)) {
      kind = kGradHard;  // the loss comes from sweep 2
    }
    a.d[row] = r.d;
    a.is_hard[row] = hard;
    if (kind != kGradHard) a.loss[row] = kd::plain_loss(mode, r);
    info = RowInfo{acc.mx, r.log_ss, acc.my, r.log_st, r.log_y_g, r.kl_qp, 0.f, kind};
  }
  __syncthreads();
  const float mx = info.mx, log_ss = info.log_ss, my = info.my, log_st = info.log_st;
  const float log_yg = info.log_yg;
  const int kind = info.kind;

  // ---- sweep 2 (hard rows): sum_j y_j log r_j and R = sum_j r_j q_j.
  if (kind == kGradHard) {
    float2 part = make_float2(0.f, 0.f);
    for_each_column(srow, trow, vocab, vocab, [&](int j, float s, float t) {
      const float lq = log_prob(s, mx, c.inv_t, log_ss);
      const float ly = log_target(j, g, log_prob(t, my, c.inv_t, log_st), log_yg, c);
      float y_log_r, rq;
      kd::hard_column(lq, ly, c.log_beta, c.log1m_beta, y_log_r, rq);
      part.x += y_log_r;
      part.y += rq;  // r_j q_j <= y_j / beta: no overflow even where q_j underflows
    });
    part = cub::BlockReduce<float2, kThreads>(tmp.pair).Reduce(part, Sum2());
    if (tid == 0) {
      a.loss[row] = part.x;
      info.r_sum = part.y;
    }
    __syncthreads();
  }
  if (!a.compute_grad) return;

  // ---- sweep 3: gradient with respect to the raw logits, in place. Every read of the row above
  // finished before the barrier inside the last block reduction, so overwriting is safe.
  const float scale = a.grad_scale[row] * c.inv_t;  // d s / d logits = 1 / T
  const float r_sum = info.r_sum;
  const float lam = c.lam, beta = c.beta, kl_qp = info.kl_qp;
  for_each_column(srow, trow, cols, vocab, [&](int j, float s, float t) {
    float grad = 0.f;  // columns past the shared vocabulary do not enter the loss
    if (j < vocab) {
      const float lq = log_prob(s, mx, c.inv_t, log_ss), lp = log_prob(t, my, c.inv_t, log_st);
      const float q = expf(lq);
      const float onehot = j == g ? 1.f : 0.f;
      if (kind == kGradEasy) {
        grad = q - (lam * expf(lp) + (1.f - lam) * onehot);
      } else if (kind == kGradUndefined) {
        grad = kd::quiet_nan<float>();
      } else if (kind == kGradHard) {
        // beta (q_k R - q_k r_k), q_k r_k from the same column formula as sweep 2
        float y_log_r, rq;
        kd::hard_column(lq, log_target(j, g, lp, log_yg, c), c.log_beta, c.log1m_beta, y_log_r, rq);
        grad = beta * (q * r_sum - rq);
      } else {
        grad = (1.f - lam) * (q - onehot) + lam * q * (lq - lp - kl_qp);
      }
    }
    srow[j] = grad * scale;
  });
}

}  // namespace

cudaError_t kd_rows(const KdRowsArgs& args, cudaStream_t stream) {
  if (args.rows == 0) return cudaSuccess;
  if (args.rows < 0 || args.rows > std::numeric_limits<int>::max() || args.vocab < 1 ||
      args.vocab > args.student_cols || args.student_cols > std::numeric_limits<int>::max() || args.mode < 0 ||
      args.mode >= kd::kNumModes) {
    return cudaErrorInvalidValue;
  }
  const Constants c = kd::make_constants<float>(args.lam, args.beta, args.gamma, args.temperature);
  kd_rows_kernel<<<static_cast<unsigned>(args.rows), kThreads, 0, stream>>>(args, c);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mtk
