// The four collab kernel primitives (see collab.h), built on ZComputer (collab_z.h): each task
// computes z for its (row, vocabulary slice) one L1-sized block at a time and folds the block
// into small per-task state; a per-row merge then combines the slices.
#include "cpu/collab.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/collab_z.h"
#include "cpu/vec_math.h"

namespace mtk {
namespace collab {
namespace {

// ---- log-sum-exp with online max rescaling --------------------------------------------------

struct LseState {
  float max = kNegInf;
  double sum = 0.0;  // sum of exp(z - max)
  bool nan = false;  // a NaN seen where no exp would have carried it into `sum`

  float value() const {
    if (nan || std::isnan(sum)) return std::numeric_limits<float>::quiet_NaN();
    if (max == kNegInf) return kNegInf;
    return static_cast<float>(max + std::log(sum));  // +inf max gives NaN through sum
  }
};

bool has_nan(const float* z, int n) {
  for (int i = 0; i < n; ++i)
    if (std::isnan(z[i])) return true;
  return false;
}

// Moves the running max up to the block's max m (rescaling the sum). Returns false when no term of
// the block can contribute (everything so far is -inf); a NaN there is recorded, since no exp
// would carry it into the sum.
bool lse_rescale(LseState& st, const float* z, int n, float m) {
  if (m > st.max) {
    st.sum *= std::exp(static_cast<double>(st.max) - m);  // 0 when st.max was -inf
    st.max = m;
  }
  if (!(st.max > kNegInf)) {
    st.nan = st.nan || has_nan(z, n);
    return false;
  }
  return true;
}

LseState lse_merge(const LseState* parts, int64_t count) {
  LseState out;
  for (int64_t i = 0; i < count; ++i) out.max = std::max(out.max, parts[i].max);
  for (int64_t i = 0; i < count; ++i) {
    const LseState& p = parts[i];
    out.nan = out.nan || p.nan;
    if (p.max == out.max) {
      out.sum += p.sum;  // also the all -inf (or all +inf) case, where max - max is NaN
    } else {
      out.sum += p.sum * std::exp(static_cast<double>(p.max) - out.max);
    }
  }
  return out;
}

// ---- top-k candidates as packed uint64 sort keys ---------------------------------------------
// High half: the float's order-preserving uint32, inverted, so ascending keys = descending values;
// low half: the id, so equal values sort lowest id first. Plain integer sorts do the rest.

uint64_t sort_key(float v, int64_t id) {
  v += 0.0f;  // -0 -> +0: equal floats must get equal keys so the id decides
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const uint32_t order = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(~order) << 32) | static_cast<uint32_t>(id);
}

float key_value(uint64_t key) {
  const uint32_t order = ~static_cast<uint32_t>(key >> 32);
  const uint32_t bits = (order & 0x80000000u) ? (order & 0x7FFFFFFFu) : ~order;
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

int64_t key_id(uint64_t key) { return static_cast<int64_t>(static_cast<uint32_t>(key)); }

// Keeps the k best (value, id) of one task. Values enter only if they beat the current k-th best
// (a vector compare that rarely fires once the buffer is warm); ids arrive in ascending order, so a
// value equal to the k-th best always loses its tie. At ~2k entries the buffer is cut back to k.
class TopkCollector {
 public:
  explicit TopkCollector(int64_t k) : k_(k), cap_(std::max<int64_t>(2 * k, k + 256)) {
    keys_.reserve(static_cast<size_t>(cap_ + kBlock));  // a whole block may enter before a compaction
  }

  // Offers a block's values to the candidates. With kSumExp, the same sweep also returns the
  // block's sum of exp(z - shift) (-inf terms are exactly 0; a NaN makes it NaN), which saves the
  // top-k kernel a second pass over z.
  template <bool kSumExp>
  float add_block(int64_t j0, int n, const float* z, float shift = 0.0f) {
    int i = 0;
    float sum = 0.0f;
#if MTK_AVX2
    const __m256 thr = _mm256_set1_ps(threshold_);
    const __m256 vshift = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
      const __m256 vz = _mm256_loadu_ps(z + i);
      if (kSumExp) acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(vz, vshift)));
      unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(vz, thr, _CMP_GT_OQ)));
      while (bits) {
        const int lane = __builtin_ctz(bits);
        keys_.push_back(sort_key(z[i + lane], j0 + i + lane));
        bits &= bits - 1;
      }
    }
    sum = hsum8(acc);
#endif
    for (; i < n; ++i) {
      if (kSumExp) sum += exp_scalar(z[i] - shift);
      if (z[i] > threshold_) keys_.push_back(sort_key(z[i], j0 + i));
    }
    if (static_cast<int64_t>(keys_.size()) >= cap_) compact();
    return sum;
  }

  // The best min(k, count) keys, unordered.
  std::vector<uint64_t> take() {
    compact();
    return std::move(keys_);
  }

 private:
  void compact() {
    if (static_cast<int64_t>(keys_.size()) <= k_) return;
    std::nth_element(keys_.begin(), keys_.begin() + (k_ - 1), keys_.end());
    keys_.resize(static_cast<size_t>(k_));
    threshold_ = key_value(keys_[k_ - 1]);  // nth_element put the largest key of the k there
  }

  int64_t k_;
  int64_t cap_;
  float threshold_ = kNegInf;  // -inf never enters: missing slots are filled with -inf at the end
  std::vector<uint64_t> keys_;
};

// Sorts the best k of `keys` into values/ids; fewer than k finite tokens: append -inf entries
// for the lowest ids not already listed.
void write_topk_row(std::vector<uint64_t>& keys, int64_t k, float* values, int64_t* ids) {
  if (static_cast<int64_t>(keys.size()) > k) {
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end());
    keys.resize(static_cast<size_t>(k));
  }
  std::sort(keys.begin(), keys.end());
  const int64_t found = static_cast<int64_t>(keys.size());
  for (int64_t i = 0; i < found; ++i) {
    values[i] = key_value(keys[i]);
    ids[i] = key_id(keys[i]);
  }
  if (found == k) return;
  std::vector<int64_t> taken(ids, ids + found);
  std::sort(taken.begin(), taken.end());
  int64_t next = 0;
  size_t t = 0;
  for (int64_t i = found; i < k; ++i, ++next) {
    while (t < taken.size() && taken[t] == next) ++t, ++next;
    values[i] = kNegInf;
    ids[i] = next;
  }
}

// ---- Gumbel-max: G(key, j) = -log(-log(u)), u from a counter-based hash (mtkernels/gumbel.py) --

float gumbel_uniform(uint32_t x) { return (static_cast<float>(x >> 9) + 0.5f) * 0x1p-23f; }

float gumbel_noise(uint32_t key, uint32_t mixed_key, uint32_t j) {
  const uint32_t x = fmix32(fmix32(j ^ mixed_key) + key);
  return -std::log(-std::log(gumbel_uniform(x)));
}

struct ArgmaxState {
  float perturbed = kNegInf;
  int64_t id = -1;  // -1: nothing passed the threshold yet
  float z = std::numeric_limits<float>::quiet_NaN();

  void offer(float p, int64_t j, float zj) {
    if (id < 0 || p > perturbed) *this = ArgmaxState{p, j, zj};  // ids ascend: ties keep the first
  }
  bool beats(const ArgmaxState& o) const {
    return o.id < 0 || (id >= 0 && (perturbed > o.perturbed || (perturbed == o.perturbed && id < o.id)));
  }
};

// Folds one block into `best`. The log evaluations are the cost, so lanes are first pruned with a
// vector bound: z + G(u) can exceed `best` only if u >= c = exp(-exp(z - best)) (G is increasing in
// u). The bound uses the fast exp, so it is loosened (a slack on best, a relative margin on c)
// well beyond its error; survivors are then evaluated exactly as the reference does.
void argmax_add_block(ArgmaxState& best, int64_t j0, int n, const float* z, float threshold, uint32_t key,
                      uint32_t mixed_key) {
  int i = 0;
#if MTK_AVX2
  const __m256 thr = _mm256_set1_ps(threshold);
  const __m256i lane_ids = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (; i + 8 <= n; i += 8) {
    const __m256 vz = _mm256_loadu_ps(z + i);
    unsigned pass = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(vz, thr, _CMP_GE_OQ)));
    if (!pass) continue;
    const float slack = 1e-4f * (1.0f + std::fabs(best.perturbed));
    const __m256 inner = exp8_clamped(_mm256_sub_ps(vz, _mm256_set1_ps(best.perturbed - slack)));  // NaN: best = -inf
    const __m256 c = _mm256_mul_ps(exp8(_mm256_sub_ps(_mm256_setzero_ps(), inner)), _mm256_set1_ps(1.0f - 1e-5f));
    const __m256i j = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j0 + i)), lane_ids);
    const __m256i x = fmix32x8(_mm256_add_epi32(fmix32x8(_mm256_xor_si256(j, _mm256_set1_epi32(static_cast<int>(mixed_key)))),
                                                _mm256_set1_epi32(static_cast<int>(key))));
    const __m256 u = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 9)), _mm256_set1_ps(0.5f)),
                                   _mm256_set1_ps(0x1p-23f));
    pass &= static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(u, c, _CMP_NLT_UQ)));  // NaN c: keep
    while (pass) {
      const int lane = __builtin_ctz(pass);
      const int64_t jj = j0 + i + lane;
      best.offer(z[i + lane] + gumbel_noise(key, mixed_key, static_cast<uint32_t>(jj)), jj, z[i + lane]);
      pass &= pass - 1;
    }
  }
#endif
  for (; i < n; ++i) {
    if (!(z[i] >= threshold)) continue;
    const int64_t jj = j0 + i;
    best.offer(z[i] + gumbel_noise(key, mixed_key, static_cast<uint32_t>(jj)), jj, z[i]);
  }
}

// Adds, for each threshold t, exp(z - lse) over the z >= thresholds[t] of one block into sums[t].
void mass_add_block(double* sums, const float* z, int n, const float* thresholds, int64_t T, float lse) {
  int i = 0;
#if MTK_AVX2
  __m256 acc[16];  // T <= 16 (checked by the binding)
  for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  const __m256 vlse = _mm256_set1_ps(lse);
  for (; i + 8 <= n; i += 8) {
    const __m256 vz = _mm256_loadu_ps(z + i);
    const __m256 e = exp8_clamped(_mm256_sub_ps(vz, vlse));
    for (int64_t t = 0; t < T; ++t) {
      const __m256 keep = _mm256_cmp_ps(vz, _mm256_set1_ps(thresholds[t]), _CMP_GE_OQ);
      acc[t] = _mm256_add_ps(acc[t], _mm256_and_ps(keep, e));
    }
  }
  for (int64_t t = 0; t < T; ++t) sums[t] += hsum8(acc[t]);
#endif
  for (; i < n; ++i) {
    const float e = exp_scalar(z[i] - lse);
    for (int64_t t = 0; t < T; ++t)
      if (z[i] >= thresholds[t]) sums[t] += e;
  }
}

}  // namespace

// ---- the primitives ---------------------------------------------------------------------------

void topk(const Problem& p, int64_t k, float* values, int64_t* ids, float* lse, const Executor& ex) {
  const ZComputer zc(p);
  const Slicing s = plan_slices(p.batch, p.vocab, ex.num_threads);
  std::vector<std::vector<uint64_t>> cands(static_cast<size_t>(s.tasks(p.batch)));
  std::vector<LseState> sums(static_cast<size_t>(s.tasks(p.batch)));
  run_tasks(p, s, ex, [&](int64_t b, int64_t lo, int64_t hi, int64_t t) {
    TopkCollector collector(k);
    LseState st;
    zc.for_each_block(b, lo, hi, [&](int64_t j0, int n, const float* z, float zmax) {
      if (lse_rescale(st, z, n, zmax)) {
        st.sum += collector.add_block<true>(j0, n, z, st.max);
      } else {
        collector.add_block<false>(j0, n, z);
      }
    });
    cands[t] = collector.take();
    sums[t] = st;
  });
  ex.parallel_for(p.batch, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      std::vector<uint64_t> keys;
      for (int64_t t = b * s.per_row; t < (b + 1) * s.per_row; ++t) keys.insert(keys.end(), cands[t].begin(), cands[t].end());
      write_topk_row(keys, k, values + b * k, ids + b * k);
      lse[b] = lse_merge(&sums[b * s.per_row], s.per_row).value();
    }
  });
}

void logits(const Problem& p, float* z, const Executor& ex) {
  const ZComputer zc(p);
  const Slicing s = plan_slices(p.batch, p.vocab, ex.num_threads);
  run_tasks(p, s, ex, [&](int64_t b, int64_t lo, int64_t hi, int64_t) {
    for (int64_t j0 = lo; j0 < hi; j0 += kBlock) {  // straight into the output row
      zc.block(b, j0, static_cast<int>(std::min<int64_t>(kBlock, hi - j0)), z + b * p.vocab + j0);
    }
  });
}

void threshold_mass(const Problem& p, const float* thresholds, int64_t T, const float* lse, float* mass,
                    const Executor& ex) {
  const ZComputer zc(p);
  const Slicing s = plan_slices(p.batch, p.vocab, ex.num_threads);
  std::vector<double> sums(static_cast<size_t>(s.tasks(p.batch) * T), 0.0);
  run_tasks(p, s, ex, [&](int64_t b, int64_t lo, int64_t hi, int64_t t) {
    zc.for_each_block(b, lo, hi, [&](int64_t, int n, const float* z, float) {
      mass_add_block(&sums[t * T], z, n, thresholds + b * T, T, lse[b]);
    });
  });
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t i = 0; i < T; ++i) {
      double total = 0.0;
      for (int64_t t = b * s.per_row; t < (b + 1) * s.per_row; ++t) total += sums[t * T + i];
      mass[b * T + i] = static_cast<float>(total);
    }
  }
}

void gumbel_argmax(const Problem& p, const float* threshold, const int64_t* keys, int64_t* ids, float* zs,
                   const Executor& ex) {
  const ZComputer zc(p);
  const Slicing s = plan_slices(p.batch, p.vocab, ex.num_threads);
  std::vector<ArgmaxState> parts(static_cast<size_t>(s.tasks(p.batch)));
  run_tasks(p, s, ex, [&](int64_t b, int64_t lo, int64_t hi, int64_t t) {
    const uint32_t key = static_cast<uint32_t>(keys[b]);
    const uint32_t mixed_key = fmix32(key);
    ArgmaxState best;
    zc.for_each_block(b, lo, hi, [&](int64_t j0, int n, const float* z, float) {
      argmax_add_block(best, j0, n, z, threshold[b], key, mixed_key);
    });
    parts[t] = best;
  });
  for (int64_t b = 0; b < p.batch; ++b) {
    ArgmaxState best;
    for (int64_t t = b * s.per_row; t < (b + 1) * s.per_row; ++t)
      if (parts[t].beats(best)) best = parts[t];
    ids[b] = best.id < 0 ? 0 : best.id;  // empty only for an invalid row (no z >= threshold)
    zs[b] = best.z;
  }
}

}  // namespace collab
}  // namespace mtk
