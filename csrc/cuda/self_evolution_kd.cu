// CUDA self-evolution KD row kernel (SPEC §2, /work/notes/kd_contract.md; see self_evolution_kd.cuh).
//
// One block per row; rows are long (32k-150k columns), so a block has plenty of columns to stream
// and no cross-block merging or workspace is needed. Up to three sweeps over the row:
//   1. streaming statistics with online max-rescaling (every valid row): lse_s, lse_t,
//      KL(p || q) and KL(q || p), which give d, the easy, forward_kd and reverse_kd losses;
//   2. hard rows only (lse now known): the hard loss sum_j y_j (log y_j - log m_j) and
//      R = sum_j r_j q_j, evaluated in log space;
//   3. if compute_grad: the gradient, written in place over the student row.
// All accumulation is float32. Every exponent is <= 0 (values are shifted by a running maximum),
// so logits of magnitude 1e4 neither overflow nor lose the small differences to cancellation.
#include "cuda/self_evolution_kd.cuh"

#include <cmath>
#include <limits>

#include <cub/block/block_reduce.cuh>

namespace mtk {
namespace cuda {
namespace {

constexpr int kThreads = 512;  // a block per row: many loads in flight even when a chunk has few rows
// 3 resident blocks per SM (1536 threads on sm_80 / sm_90) caps the kernel at 40 registers, which
// it fits without spilling (test_cuda_compile); unbounded it takes 46-50, i.e. 2 blocks per SM.
constexpr int kMinBlocksPerSm = 3;
constexpr int kIlp = 4;  // columns per thread per round, loaded before any is used
constexpr int kTile = kThreads * kIlp;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// log(exp(a) + exp(b)) without overflow; -inf when both are -inf (e.g. log(1 - beta) = -inf).
__device__ __forceinline__ float log_add_exp(float a, float b) {
  const float hi = fmaxf(a, b), lo = fminf(a, b);
  if (hi == neg_inf()) return hi;
  return hi + log1pf(expf(lo - hi));  // lo - hi <= 0: no overflow; -inf - hi gives exp = 0
}

// Parameters derived once on the host (in double, then rounded): the kernel never takes log of a
// parameter, and the -inf of log(0) is explicit.
struct Derived {
  float inv_t;  // 1 / temperature
  float log_lam;  // log(lam), -inf for lam = 0
  float log1m_lam;  // log(1 - lam), -inf for lam = 1
  float log_beta;  // log(beta)
  float log1m_beta;  // log(1 - beta), -inf for beta = 1 (then m = q)
};

// ---- sweep 1: streaming statistics ----------------------------------------------------------------

// Shifted sums over a set of columns, with ds_j = s_j - ms, dt_j = t_j - mt (ms, mt: the set's maxima):
//   ss = sum exp(ds),  st = sum exp(dt),
//   pd = sum exp(dt) (dt - ds)   ->  KL(p || q) = pd / st - log st + log ss
//   qd = sum exp(ds) (ds - dt)   ->  KL(q || p) = qd / ss - log ss + log st
// Differences of shifted logits keep the sums O(range of the logits), not O(their magnitude).
// The empty set has ms = mt = -inf and zero sums.
struct Stats {
  float ms, ss, mt, st, pd, qd;
};

__device__ __forceinline__ Stats empty_stats() { return Stats{neg_inf(), 0.f, neg_inf(), 0.f, 0.f, 0.f}; }

// Re-expresses non-empty sums relative to new maxima ms' >= ms, mt' >= mt: each exp(ds) gains the
// factor exp(ms - ms') and each ds the offset (ms - ms'); likewise for t.
__device__ __forceinline__ void rescale(Stats& a, float new_ms, float new_mt) {
  const float dms = a.ms - new_ms, dmt = a.mt - new_mt;  // <= 0
  const float cs = expf(dms), ct = expf(dmt);
  a.pd = ct * (a.pd + (dmt - dms) * a.st);
  a.qd = cs * (a.qd + (dms - dmt) * a.ss);
  a.ss *= cs;
  a.st *= ct;
  a.ms = new_ms;
  a.mt = new_mt;
}

struct MergeStats {
  __device__ __forceinline__ Stats operator()(Stats a, Stats b) const {
    if (a.ms == neg_inf()) return b;  // an empty side (a thread without columns) has no offsets to apply
    if (b.ms == neg_inf()) return a;
    const float ms = fmaxf(a.ms, b.ms), mt = fmaxf(a.mt, b.mt);
    rescale(a, ms, mt);
    rescale(b, ms, mt);
    return Stats{ms, a.ss + b.ss, mt, a.st + b.st, a.pd + b.pd, a.qd + b.qd};
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
};

// Row scalars, computed by thread 0 and shared with the block.
struct RowInfo {
  float ms, log_ss;  // lse_s = ms + log_ss
  float mt, log_st;  // lse_t = mt + log_st
  float log_yg;  // log y_g
  float kl_qp;  // KL(q || p)
  float r_sum;  // R (hard rows)
  int kind;  // GradKind
};

// log q_j, log p_j from the logits already divided by T: (x - max) - log(sum) keeps the small
// difference exact instead of subtracting two numbers of magnitude 1e4.
__device__ __forceinline__ float log_prob(float x, float m, float log_sum) { return (x - m) - log_sum; }

// y_j > 0 terms of the hard loss: log y_j and log r_j = log y_j - log m_j,
// log m_j = logaddexp(log beta + log q_j, log(1 - beta) + log y_j).
__device__ __forceinline__ float log_ratio(float lq, float ly, const Derived& c) {
  return ly - log_add_exp(c.log_beta + lq, c.log1m_beta + ly);
}

// kIlp columns per thread (base, base + kThreads, ...) of both rows, divided by T; `pad` past vocab.
__device__ __forceinline__ void load_scaled(const float* srow, const float* trow, int base, int vocab, float inv_t,
                                            float pad, float (&s)[kIlp], float (&t)[kIlp]) {
#pragma unroll
  for (int e = 0; e < kIlp; ++e) {
    const int j = base + e * kThreads;
    s[e] = j < vocab ? srow[j] * inv_t : pad;
    t[e] = j < vocab ? trow[j] * inv_t : pad;
  }
}

// Calls body(j, s_j, t_j) (logits divided by T, 0 past vocab) for this thread's columns j < limit;
// each round loads kIlp columns of both rows before any is used.
template <class Body>
__device__ __forceinline__ void for_each_column(const float* srow, const float* trow, int limit, int vocab,
                                                float inv_t, Body body) {
  for (int base = threadIdx.x; base < limit; base += kTile) {
    float s[kIlp], t[kIlp];
    load_scaled(srow, trow, base, vocab, inv_t, 0.f, s, t);
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      const int j = base + e * kThreads;
      if (j < limit) body(j, s[e], t[e]);
    }
  }
}

__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) kd_rows_kernel(const KdRowsArgs a, const Derived c) {
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
  Stats acc = empty_stats();
  for (int base = tid; base < vocab; base += kTile) {
    float s[kIlp], t[kIlp];
    load_scaled(srow, trow, base, vocab, c.inv_t, neg_inf(), s, t);
    float round_ms = neg_inf(), round_mt = neg_inf();
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      round_ms = fmaxf(round_ms, s[e]);
      round_mt = fmaxf(round_mt, t[e]);
    }
    if (acc.ms == neg_inf()) {  // first round: the sums are 0, nothing to rescale
      acc.ms = round_ms;
      acc.mt = round_mt;
    } else if (round_ms > acc.ms || round_mt > acc.mt) {
      rescale(acc, fmaxf(acc.ms, round_ms), fmaxf(acc.mt, round_mt));
    }
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      if (base + e * kThreads < vocab) {  // not s = -inf: that would give 0 * inf below
        const float ds = s[e] - acc.ms, dt = t[e] - acc.mt;
        const float es = expf(ds), et = expf(dt);
        acc.ss += es;
        acc.st += et;
        acc.pd += et * (dt - ds);
        acc.qd += es * (ds - dt);
      }
    }
  }
  acc = cub::BlockReduce<Stats, kThreads>(tmp.stats).Reduce(acc, MergeStats());

  if (tid == 0) {
    // d = KL(y || q) from the statistics (contract):
    //   sum y log y = lam log lam (1 - p_g) + lam (sum p log p - p_g log p_g) + y_g log y_g
    //   sum y log q = (1 - lam) log q_g + lam sum p log q
    // so d = lam log lam (1 - p_g) + lam (KL(p || q) - p_g log p_g) + y_g log y_g + (1 - lam) CE.
    const float lam = a.lam;
    const float log_ss = logf(acc.ss), log_st = logf(acc.st);
    const float log_qg = log_prob(srow[g] * c.inv_t, acc.ms, log_ss);
    const float log_pg = log_prob(trow[g] * c.inv_t, acc.mt, log_st);
    const float p_g = expf(log_pg);  // may underflow to 0; p_g log p_g is then 0, as it should be
    const float ce = -log_qg;
    const float kl_pq = acc.pd / acc.st - log_st + log_ss;
    const float kl_qp = acc.qd / acc.ss - log_ss + log_st;
    // y_g = (1 - lam) + lam p_g in log space: exact for lam = 1 even when p_g underflows.
    const float log_yg = log_add_exp(c.log1m_lam, c.log_lam + log_pg);
    const float y_g = expf(log_yg);
    const float lam_log_lam = lam > 0.f ? lam * c.log_lam : 0.f;  // 0 log 0 = 0
    const float d = lam_log_lam * (1.f - p_g) + lam * (kl_pq - p_g * log_pg) + y_g * log_yg + (1.f - lam) * ce;

    bool hard;
    if (a.hard != nullptr) {
      hard = a.hard[row];
    } else {
      hard = (a.mode == kKdSelfEvolution && d > a.gamma) || a.mode == kKdSkew;
    }
    int kind = kGradEasy;
    float loss = d;  // easy loss = d
    if (a.mode == kKdForward) {
      loss = (1.f - lam) * ce + lam * kl_pq;
    } else if (a.mode == kKdReverse) {
      loss = (1.f - lam) * ce + lam * kl_qp;
      kind = kGradReverse;
    } else if (hard) {
      kind = kGradHard;  // the loss comes from sweep 2
    }
    a.d[row] = d;
    a.is_hard[row] = hard;
    if (kind != kGradHard) a.loss[row] = loss;
    info = RowInfo{acc.ms, log_ss, acc.mt, log_st, log_yg, kl_qp, 0.f, kind};
  }
  __syncthreads();
  const float ms = info.ms, log_ss = info.log_ss, mt = info.mt, log_st = info.log_st;
  const float log_yg = info.log_yg;
  const int kind = info.kind;
  const bool lam_zero = a.lam == 0.f;  // then y_j = 0 off the label: those terms are skipped

  // ---- sweep 2 (hard rows): sum_j y_j log r_j and R = sum_j r_j q_j over the columns with y_j > 0.
  if (kind == kGradHard) {
    float2 part = make_float2(0.f, 0.f);
    for_each_column(srow, trow, vocab, vocab, c.inv_t, [&](int j, float s, float t) {
      if (j != g && lam_zero) return;
      const float lq = log_prob(s, ms, log_ss);
      const float ly = j == g ? log_yg : c.log_lam + log_prob(t, mt, log_st);
      const float lr = log_ratio(lq, ly, c);
      part.x += expf(ly) * lr;
      part.y += expf(lq + lr);  // r_j q_j <= y_j / beta: no overflow even where q_j underflows
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
  const float lam = a.lam, beta = a.beta, kl_qp = info.kl_qp;
  for_each_column(srow, trow, cols, vocab, c.inv_t, [&](int j, float s, float t) {
    float grad = 0.f;  // columns past the shared vocabulary do not enter the loss
    if (j < vocab) {
      const float lq = log_prob(s, ms, log_ss), lp = log_prob(t, mt, log_st);
      const float q = expf(lq);
      const float onehot = j == g ? 1.f : 0.f;
      if (kind == kGradEasy) {
        grad = q - (lam * expf(lp) + (1.f - lam) * onehot);
      } else if (kind == kGradHard) {
        // beta (q_k R - q_k r_k), with q_k r_k = exp(log q_k + log r_k) (0 where y_k = 0)
        float qr = 0.f;
        if (j == g || !lam_zero) qr = expf(lq + log_ratio(lq, j == g ? log_yg : c.log_lam + lp, c));
        grad = beta * (q * r_sum - qr);
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
      args.vocab > args.student_cols || args.student_cols > std::numeric_limits<int>::max() ||
      args.mode < kKdSelfEvolution || args.mode > kKdReverse) {
    return cudaErrorInvalidValue;
  }
  const double inf = std::numeric_limits<double>::infinity();
  const double lam = args.lam, beta = args.beta;
  Derived c;
  c.inv_t = static_cast<float>(1.0 / static_cast<double>(args.temperature));
  c.log_lam = static_cast<float>(lam > 0 ? std::log(lam) : -inf);
  c.log1m_lam = static_cast<float>(lam < 1 ? std::log1p(-lam) : -inf);
  c.log_beta = static_cast<float>(std::log(beta));
  c.log1m_beta = static_cast<float>(beta < 1 ? std::log1p(-beta) : -inf);
  kd_rows_kernel<<<static_cast<unsigned>(args.rows), kThreads, 0, stream>>>(args, c);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mtk
