// The four collab kernel primitives (see collab.h), built on ZComputer (collab_z.h): each task
// computes z for its (row, vocabulary slice) one L1-sized block at a time and folds the block
// into small per-task state; a per-row merge then combines the slices.
#include "cpu/collab.h"

#include <algorithm>
#include <atomic>
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
// One collector serves all the tasks of a thread (reset() keeps its buffer): O(k) memory per thread.
class TopkCollector {
 public:
  explicit TopkCollector(int64_t k) : k_(k), cap_(std::max<int64_t>(2 * k, k + 256)) {
    keys_.reserve(static_cast<size_t>(cap_ + kBlock));  // a whole block may enter before a compaction
  }

  void reset() {
    keys_.clear();
    threshold_ = kNegInf;
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

  // The best min(k, count) keys, unordered; valid until the next reset().
  std::vector<uint64_t>& best() {
    compact();
    return keys_;
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

// ---- keep sets: (theta, cut) keeps z > theta, and z == theta for ids <= cut ---------------------
// Over a run of columns that lie on one side of the cut this is a single test z >= t, with
// t = theta (ids <= cut) or t = the next float above theta (ids > cut: z > theta).

float next_up(float theta) {
  if (std::isnan(theta) || theta == std::numeric_limits<float>::infinity()) return std::numeric_limits<float>::quiet_NaN();
  return std::nextafter(theta, std::numeric_limits<float>::infinity());
}

// The cut clamped to [-1, vocab - 1], so that it fits the int32 lane arithmetic.
int32_t clamp_cut(int64_t cut, int64_t vocab) {
  return static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(cut, -1), vocab - 1));
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

// Folds columns [j0, j0 + n) of a block into `best` for the keep set (theta, cut): the columns up to
// the cut compete if z >= theta, the others if z >= next_up(theta) (i.e. z > theta). Ids stay in
// ascending order, which argmax_add_block's tie rule needs.
void argmax_add_keep_set(ArgmaxState& best, int64_t j0, int n, const float* z, float theta, float theta_up,
                         int64_t cut, uint32_t key, uint32_t mixed_key) {
  const int below = static_cast<int>(std::min<int64_t>(std::max<int64_t>(cut - j0 + 1, 0), n));  // ids <= cut
  if (below > 0) argmax_add_block(best, j0, below, z, theta, key, mixed_key);
  if (below < n) argmax_add_block(best, j0 + below, n - below, z + below, theta_up, key, mixed_key);
}

// One row's thresholds as the mass loop uses them.
struct RowThresholds {
  int64_t T;
  float theta[kMaxThresholds];
  float theta_up[kMaxThresholds];
  int32_t cut[kMaxThresholds];
  float lowest;  // min over theta: columns below it are in no keep set (NaN-free: +inf if all NaN)
  bool empty;    // every theta is NaN: nothing to add

  RowThresholds(const float* thresholds, const int64_t* cuts, int64_t num, int64_t vocab) : T(num) {
    lowest = std::numeric_limits<float>::infinity();
    empty = true;
    for (int64_t t = 0; t < T; ++t) {
      theta[t] = thresholds[t];
      theta_up[t] = next_up(theta[t]);
      cut[t] = clamp_cut(cuts == nullptr ? vocab - 1 : cuts[t], vocab);
      if (!std::isnan(theta[t])) {
        empty = false;
        lowest = std::min(lowest, theta[t]);
      }
    }
  }
};

// Per-task partial sums of threshold_mass.
struct MassSums {
  double mass[kMaxThresholds] = {};
  int64_t count[kMaxThresholds] = {};
};

// Adds, for each threshold t, exp(z - lse) and 1 over the block's columns in t's keep set. Lanes
// below every threshold (most of the vocabulary: thresholds sit in the upper tail) skip the exp.
void mass_add_block(MassSums& sums, int64_t j0, int n, const float* z, const RowThresholds& th, float lse) {
  const int64_t T = th.T;
  // Per threshold, one test for the whole block unless its cut falls inside the block.
  alignas(32) float uniform[kMaxThresholds];
  bool mixed = false;
  for (int64_t t = 0; t < T; ++t) {
    if (th.cut[t] >= j0 + n - 1) {
      uniform[t] = th.theta[t];
    } else if (th.cut[t] < j0) {
      uniform[t] = th.theta_up[t];
    } else {
      uniform[t] = th.theta[t];
      mixed = true;
    }
  }
  int i = 0;
#if MTK_AVX2
  __m256 acc[kMaxThresholds];
  __m256i cnt[kMaxThresholds];
  for (int64_t t = 0; t < T; ++t) {
    acc[t] = _mm256_setzero_ps();
    cnt[t] = _mm256_setzero_si256();
  }
  const __m256 vlse = _mm256_set1_ps(lse);
  const __m256 vlowest = _mm256_set1_ps(th.lowest);
  const __m256i lane_ids = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (; i + 8 <= n; i += 8) {
    const __m256 vz = _mm256_loadu_ps(z + i);
    if (!_mm256_movemask_ps(_mm256_cmp_ps(vz, vlowest, _CMP_GE_OQ))) continue;
    const __m256 e = exp8_clamped(_mm256_sub_ps(vz, vlse));
    if (!mixed) {
      for (int64_t t = 0; t < T; ++t) {
        const __m256 keep = _mm256_cmp_ps(vz, _mm256_set1_ps(uniform[t]), _CMP_GE_OQ);
        acc[t] = _mm256_add_ps(acc[t], _mm256_and_ps(keep, e));
        cnt[t] = _mm256_sub_epi32(cnt[t], _mm256_castps_si256(keep));  // a true lane is -1
      }
    } else {
      const __m256i ids = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j0 + i)), lane_ids);
      for (int64_t t = 0; t < T; ++t) {
        const __m256 at_or_below = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(th.cut[t] + 1), ids));
        const __m256 thr = _mm256_blendv_ps(_mm256_set1_ps(th.theta_up[t]), _mm256_set1_ps(th.theta[t]), at_or_below);
        const __m256 keep = _mm256_cmp_ps(vz, thr, _CMP_GE_OQ);
        acc[t] = _mm256_add_ps(acc[t], _mm256_and_ps(keep, e));
        cnt[t] = _mm256_sub_epi32(cnt[t], _mm256_castps_si256(keep));
      }
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    sums.mass[t] += hsum8(acc[t]);
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), cnt[t]);
    for (int l = 0; l < 8; ++l) sums.count[t] += lanes[l];
  }
#endif
  for (; i < n; ++i) {
    if (!(z[i] >= th.lowest)) continue;
    const float e = exp_scalar(z[i] - lse);
    for (int64_t t = 0; t < T; ++t) {
      if (z[i] >= (j0 + i <= th.cut[t] ? th.theta[t] : th.theta_up[t])) {
        sums.mass[t] += e;
        ++sums.count[t];
      }
    }
  }
}

// True if some column of the block has z = +-inf although every model's input there is finite
// (called only for blocks with an unmasked infinite z, so the scalar rescan is rare).
bool overflowed(const Problem& p, int64_t b, int64_t j0, int n, const float* z) {
  for (int i = 0; i < n; ++i) {
    if (!std::isinf(z[i])) continue;
    bool finite = true;
    for (const ModelInput& in : p.models) {
      const char* row = static_cast<const char*>(in.data) + b * in.row_stride * element_size(in.dtype);
      finite = finite && std::isfinite(load_one(in.dtype, row, j0 + i));
    }
    if (finite) return true;
  }
  return false;
}

}  // namespace

// ---- the primitives ---------------------------------------------------------------------------
// With one slice per row (large batches) each task writes its row's result directly; with several
// (small batches, so few tasks) the tasks leave small partials that a per-row merge combines.

void topk(const Problem& p, int64_t k, float* values, int64_t* ids, float* lse, const Executor& ex) {
  const ZComputer zc(p);
  const Slicing s = plan_slices(p.batch, p.vocab, ex.num_threads);
  const bool direct = s.per_row == 1;
  const int64_t tasks = direct ? 0 : s.tasks(p.batch);
  std::vector<uint64_t> slice_keys(static_cast<size_t>(tasks * k));  // each task's best min(k, found)
  std::vector<int64_t> slice_found(static_cast<size_t>(tasks));
  std::vector<LseState> slice_lse(static_cast<size_t>(tasks));
  run_tasks(p, s, ex, [k] { return TopkCollector(k); },
            [&](TopkCollector& collector, int64_t b, int64_t lo, int64_t hi, int64_t t) {
              collector.reset();
              LseState st;
              zc.for_each_block(b, lo, hi, [&](int64_t j0, int n, const float* z, float zmax) {
                if (lse_rescale(st, z, n, zmax)) {
                  st.sum += collector.add_block<true>(j0, n, z, st.max);
                } else {
                  collector.add_block<false>(j0, n, z);
                }
              });
              std::vector<uint64_t>& keys = collector.best();
              if (direct) {
                write_topk_row(keys, k, values + b * k, ids + b * k);
                lse[b] = st.value();
              } else {
                std::copy(keys.begin(), keys.end(), slice_keys.begin() + t * k);
                slice_found[t] = static_cast<int64_t>(keys.size());
                slice_lse[t] = st;
              }
            });
  if (direct) return;
  ex.parallel_for(p.batch, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> keys;  // reused across the rows of this chunk
    for (int64_t b = begin; b < end; ++b) {
      keys.clear();
      for (int64_t t = b * s.per_row; t < (b + 1) * s.per_row; ++t)
        keys.insert(keys.end(), slice_keys.begin() + t * k, slice_keys.begin() + t * k + slice_found[t]);
      write_topk_row(keys, k, values + b * k, ids + b * k);
      lse[b] = lse_merge(&slice_lse[b * s.per_row], s.per_row).value();
    }
  });
}

int64_t logits(const Problem& p, float* z, const Executor& ex) {
  const ZComputer zc(p);
  const Slicing s = plan_slices(p.batch, p.vocab, ex.num_threads);
  std::atomic<int64_t> first_overflow{p.batch};
  run_tasks(p, s, ex, [&](int64_t b, int64_t lo, int64_t hi, int64_t) {
    bool overflow = false;
    for (int64_t j0 = lo; j0 < hi; j0 += kBlock) {  // straight into the output row
      const int n = static_cast<int>(std::min<int64_t>(kBlock, hi - j0));
      float* out = z + b * p.vocab + j0;
      bool any_inf = false;
      zc.block<true>(b, j0, n, out, &any_inf);
      overflow = overflow || (any_inf && overflowed(p, b, j0, n, out));
    }
    if (overflow) {
      int64_t seen = first_overflow.load();
      while (b < seen && !first_overflow.compare_exchange_weak(seen, b)) {
      }
    }
  });
  return first_overflow.load() == p.batch ? -1 : first_overflow.load();
}

void threshold_mass(const Problem& p, const float* thresholds, const int64_t* id_cuts, int64_t T, const float* lse,
                    float* mass, int64_t* count, const Executor& ex) {
  const ZComputer zc(p);
  const Slicing s = plan_slices(p.batch, p.vocab, ex.num_threads);
  const bool direct = s.per_row == 1;
  std::vector<MassSums> slice_sums(static_cast<size_t>(direct ? 0 : s.tasks(p.batch)));
  run_tasks(p, s, ex, [&](int64_t b, int64_t lo, int64_t hi, int64_t t) {
    const RowThresholds th(thresholds + b * T, id_cuts == nullptr ? nullptr : id_cuts + b * T, T, p.vocab);
    MassSums sums;
    if (!th.empty) {
      zc.for_each_block(b, lo, hi, [&](int64_t j0, int n, const float* z, float) {
        mass_add_block(sums, j0, n, z, th, lse[b]);
      });
    }
    if (direct) {
      for (int64_t i = 0; i < T; ++i) {
        mass[b * T + i] = static_cast<float>(sums.mass[i]);
        count[b * T + i] = sums.count[i];
      }
    } else {
      slice_sums[t] = sums;
    }
  });
  if (direct) return;
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t i = 0; i < T; ++i) {
      double total = 0.0;
      int64_t n = 0;
      for (int64_t t = b * s.per_row; t < (b + 1) * s.per_row; ++t) {
        total += slice_sums[t].mass[i];
        n += slice_sums[t].count[i];
      }
      mass[b * T + i] = static_cast<float>(total);
      count[b * T + i] = n;
    }
  }
}

void gumbel_argmax(const Problem& p, const float* threshold, const int64_t* id_cut, const int64_t* keys, int64_t* ids,
                   float* zs, const Executor& ex) {
  const ZComputer zc(p);
  const Slicing s = plan_slices(p.batch, p.vocab, ex.num_threads);
  const bool direct = s.per_row == 1;
  std::vector<ArgmaxState> parts(static_cast<size_t>(direct ? 0 : s.tasks(p.batch)));
  run_tasks(p, s, ex, [&](int64_t b, int64_t lo, int64_t hi, int64_t t) {
    const uint32_t key = static_cast<uint32_t>(keys[b]);
    const uint32_t mixed_key = fmix32(key);
    const float theta = threshold[b];
    const float theta_up = next_up(theta);
    const int64_t cut = id_cut == nullptr ? p.vocab - 1 : id_cut[b];
    ArgmaxState best;
    zc.for_each_block(b, lo, hi, [&](int64_t j0, int n, const float* z, float) {
      argmax_add_keep_set(best, j0, n, z, theta, theta_up, cut, key, mixed_key);
    });
    if (direct) {
      ids[b] = best.id < 0 ? 0 : best.id;  // empty only for an invalid row (an empty keep set)
      zs[b] = best.z;
    } else {
      parts[t] = best;
    }
  });
  if (direct) return;
  for (int64_t b = 0; b < p.batch; ++b) {
    ArgmaxState best;
    for (int64_t t = b * s.per_row; t < (b + 1) * s.per_row; ++t)
      if (parts[t].beats(best)) best = parts[t];
    ids[b] = best.id < 0 ? 0 : best.id;
    zs[b] = best.z;
  }
}

}  // namespace collab
}  // namespace mtk
