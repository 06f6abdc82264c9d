"""Triton row kernel of the self-evolution KD loss (docs/kd.md; contract: the reference ``kd_rows``).
Its launcher and launch configuration are in mtkernels/triton/self_evolution_kd.py.

One program per row walks the row's vocabulary in BLOCK-sized tiles, up to three times:

1. statistics: running maxes and shifted moments of student and teacher (online max-rescaling),
   from which d, the easy / forward_kd / reverse_kd losses and the hard/easy decision follow;
2. hard rows only: the hard loss KL(ỹ ‖ m) and R = Σ_j q_j r_j (log space, lse known);
3. compute_grad only: the gradient with respect to the raw logits, written over the student row
   (times grad_scale[i] / T; zeros past ``vocab`` and on ignored rows).

Moments are kept relative to the running maxes of the *raw* logits (``Σ e^{ds} ds`` with
``ds = (x - max x) / T`` rather than ``Σ p x``): the shift happens before the division by T, so
neither large logits nor small temperatures lose the small differences to cancellation, and no exp
ever sees a positive argument. Products whose first factor (a probability or target mass) is 0 are
0, and logs that feed further exps are floored at a finite stand-in for log 0, so masked (-inf)
logits give no NaN. Nothing of size n x V is allocated: the gradient reuses the student's storage.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..ops.kd_options import HardRule, LossKind

# The hard rule and loss kind are runtime int arguments (one compiled variant serves every mode);
# the kernel compares them against these, the contract's codes (mtkernels/ops/kd_options.py).
HARD_IF_DIFFICULT = tl.constexpr(int(HardRule.IF_DIFFICULT))
HARD_ALL_VALID = tl.constexpr(int(HardRule.ALL_VALID))
HARD_FROM_MASK = tl.constexpr(int(HardRule.FROM_MASK))
LOSS_SKEWED = tl.constexpr(int(LossKind.SKEWED))
LOSS_FORWARD_KD = tl.constexpr(int(LossKind.FORWARD_KD))
LOSS_REVERSE_KD = tl.constexpr(int(LossKind.REVERSE_KD))

# --- device helpers ------------------------------------------------------------------------------

LOG_FLOOR = tl.constexpr(-1e30)  # finite stand-in for log 0: exp of it is exactly 0


@triton.jit
def max_move(old_max, new_max, inv_temperature):
    """(factor, shift) re-expressing sums kept relative to the raw running max ``old_max`` relative
    to ``new_max``: e^{shift} and (old - new) / T; (1, 0) when the max did not move, (0, 0) while
    nothing finite had been seen (the factor then multiplies empty sums)."""
    moved = new_max != old_max
    had = old_max != float("-inf")
    shift = tl.where(moved & had, (old_max - new_max) * inv_temperature, 0.0)
    return tl.where(moved, tl.where(had, tl.exp(shift), 0.0), 1.0), shift


@triton.jit
def shift_origin(m):
    """What a tile is shifted by: the running max, or 0 while it is -inf (every value seen is -inf)."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def centered_tile(x, valid, new_max, inv_temperature):
    """((x - max) / T, its exp) of a raw tile; -inf and 0 where not valid or masked."""
    centered = tl.where(valid, (x - shift_origin(new_max)) * inv_temperature, float("-inf"))
    return centered, tl.exp(centered)


@triton.jit
def mass_times(e, v):
    """e · v, 0 where e = 0 (whatever v: a column without mass adds nothing; v is selected first, so
    no 0 · inf is ever formed)."""
    return e * tl.where(e > 0.0, v, 0.0)


@triton.jit
def weighted(w, v):
    """w · v, 0 where the weight w is 0 (even where v is infinite)."""
    return tl.where(w == 0.0, 0.0, w * v)


@triton.jit
def accumulate_moments(z, w_self, w_cross, scale, shift_self, shift_other, e, c_self, c_other):
    """One stream's moments z = Σ e^{x-m}, w_self = Σ e^{x-m}(x - m), w_cross = Σ e^{x-m}(v - m_v)
    (v the other stream) after its max moved by (scale, shift_self) and the other's by shift_other,
    plus one tile (e = e^{x - M}, c_* centered values)."""
    w_self = weighted(scale, w_self + shift_self * z) + tl.sum(mass_times(e, c_self), axis=0)
    w_cross = weighted(scale, w_cross + shift_other * z) + tl.sum(mass_times(e, c_other), axis=0)
    z = scale * z + tl.sum(e, axis=0)
    return z, w_self, w_cross


@triton.jit
def load_raw(ptr, cols, valid):
    """A tile of raw logits, -inf where not valid."""
    return tl.load(ptr + cols, mask=valid, other=float("-inf"))


@triton.jit
def log_prob_tile(ptr, cols, valid, row_max, log_z, inv_temperature):
    """log softmax of a raw tile given its row's raw max and log Σ e^{(x - max)/T}, floored at LOG_FLOOR."""
    return tl.maximum((load_raw(ptr, cols, valid) - row_max) * inv_temperature - log_z, LOG_FLOOR)


@triton.jit
def logaddexp(a, b):
    """log(e^a + e^b) for a finite a (b may be -inf)."""
    hi = tl.maximum(a, b)
    return hi + tl.log(1.0 + tl.exp(tl.minimum(a, b) - hi))


@triton.jit
def target_tile(log_p, is_label, lam, log_lam, y_g, log_y_g):
    """ỹ and log ỹ of a tile: λ p_j off the label, ỹ_g on it; log ỹ floored where ỹ = 0 (λ = 0)."""
    y = tl.where(is_label, y_g, lam * tl.exp(log_p))
    log_y = tl.maximum(tl.where(is_label, log_y_g, log_lam + log_p), LOG_FLOOR)
    return y, log_y


@triton.jit
def log_mixture(log_q, log_y, log_beta, log_1m_beta):
    """log m = log(β q + (1 - β) ỹ) in log space (log(1 - β) = -inf when β = 1: m = q)."""
    return logaddexp(log_beta + log_q, log_1m_beta + log_y)


@triton.jit
def self_kd_row_terms(lam, lam_log_lam, log_z_s, log_z_t, w_ss, w_st, w_tt, w_ts, z_s, z_t, log_q_g, log_p_g):
    """(d, forward_kd, reverse_kd, KL(q ‖ p), ỹ_g, log ỹ_g) of a row from its pass-1 statistics.
    Every Σ is relative to the maxes: Σ p log p = w_tt / z_t - log z_t, and so on."""
    kl_pq = (w_tt - w_ts) / z_t - log_z_t + log_z_s
    kl_qp = (w_ss - w_st) / z_s - log_z_s + log_z_t
    p_g = tl.exp(log_p_g)
    y_g = 1.0 - lam + lam * p_g
    # λ = 1 and p_g = 0: ỹ_g = 0, log ỹ_g = -inf, and 0 log 0 = 0
    log_y_g = tl.log(y_g)
    ce = -log_q_g
    # d = λ log λ (1 - p_g) + λ (KL(p ‖ q) - p_g log p_g) + ỹ_g log ỹ_g + (1 - λ) CE
    d = (lam_log_lam * (1.0 - p_g) + weighted(lam, kl_pq - mass_times(p_g, log_p_g)) + mass_times(y_g, log_y_g)
         + weighted(1.0 - lam, ce))
    forward_kd = weighted(1.0 - lam, ce) + weighted(lam, kl_pq)
    reverse_kd = weighted(1.0 - lam, ce) + weighted(lam, kl_qp)
    return d, forward_kd, reverse_kd, kl_qp, y_g, log_y_g


@triton.jit
def is_hard_row(rule, d, gamma, hard_ptr, row):
    """The hard/easy decision of a valid row; rule: a HardRule code (HARD_*), hard_ptr the
    caller's mask ``(n,)`` int8, read only for HARD_FROM_MASK. HardRule.NONE: never hard."""
    flag = tl.load(hard_ptr + row, mask=rule == HARD_FROM_MASK, other=0) != 0
    return ((rule == HARD_IF_DIFFICULT) & (d > gamma)) | (rule == HARD_ALL_VALID) | flag


# --- the kernel ----------------------------------------------------------------------------------

@triton.jit
def kd_rows_kernel(student_ptr, teacher_ptr, labels_ptr, hard_ptr, grad_scale_ptr,
                   loss_ptr, d_ptr, is_hard_ptr,
                   stride_s, stride_t, row_len_s, vocab, ignore_index,
                   hard_rule, loss_kind, compute_grad,
                   lam, log_lam, lam_log_lam, log_beta, log_1m_beta, beta, gamma, inv_temperature,
                   BLOCK: tl.constexpr):
    """Program i (grid ``(n,)``): row i's loss, d and is_hard, and (compute_grad) its gradient
    over student[i]; see the module docstring for the passes.

    student ``(n, row_len_s)`` fp32, row stride stride_s, unit column stride (overwritten by the
    gradient when compute_grad); teacher ``(n, >= vocab)`` fp32, row stride stride_t; labels
    ``(n,)`` int64; hard ``(n,)`` int8 (read for hard_rule HARD_FROM_MASK only); grad_scale
    ``(n,)`` fp32; out: loss ``(n,)`` fp32, d ``(n,)`` fp32, is_hard ``(n,)`` int8. hard_rule /
    loss_kind: HardRule / LossKind codes (HARD_* / LOSS_*). The scalars are the launcher's:
    log_lam = log λ, lam_log_lam = λ log λ, log_beta, log_1m_beta = log β, log(1 - β) (-inf at 0),
    inv_temperature = 1 / T."""
    row = tl.program_id(0)
    s_row = student_ptr + row.to(tl.int64) * stride_s
    t_row = teacher_ptr + row.to(tl.int64) * stride_t
    label = tl.load(labels_ptr + row)
    offs = tl.arange(0, BLOCK)
    if label != ignore_index:
        # pass 1: running maxes m_*, z_* = Σ e^{x - m_x}, w_ab = Σ e^{a - m_a}(b - m_b)
        m_s = tl.full((), float("-inf"), tl.float32)
        m_t = tl.full((), float("-inf"), tl.float32)
        z_s = tl.zeros((), tl.float32)
        z_t = tl.zeros((), tl.float32)
        w_ss = tl.zeros((), tl.float32)
        w_st = tl.zeros((), tl.float32)
        w_tt = tl.zeros((), tl.float32)
        w_ts = tl.zeros((), tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + offs
            valid = cols < vocab
            s = load_raw(s_row, cols, valid)
            t = load_raw(t_row, cols, valid)
            new_m_s = tl.maximum(m_s, tl.max(s, axis=0))
            new_m_t = tl.maximum(m_t, tl.max(t, axis=0))
            scale_s, shift_s = max_move(m_s, new_m_s, inv_temperature)
            scale_t, shift_t = max_move(m_t, new_m_t, inv_temperature)
            c_s, e_s = centered_tile(s, valid, new_m_s, inv_temperature)
            c_t, e_t = centered_tile(t, valid, new_m_t, inv_temperature)
            z_s, w_ss, w_st = accumulate_moments(z_s, w_ss, w_st, scale_s, shift_s, shift_t, e_s, c_s, c_t)
            z_t, w_tt, w_ts = accumulate_moments(z_t, w_tt, w_ts, scale_t, shift_t, shift_s, e_t, c_t, c_s)
            m_s = new_m_s
            m_t = new_m_t

        log_z_s = tl.log(z_s)
        log_z_t = tl.log(z_t)
        # log q_g, log p_g centered on the raw max first: no cancellation against lse
        log_q_g = (tl.load(s_row + label) - m_s) * inv_temperature - log_z_s
        log_p_g = (tl.load(t_row + label) - m_t) * inv_temperature - log_z_t
        d, forward_kd, reverse_kd, kl_qp, y_g, log_y_g = self_kd_row_terms(
            lam, lam_log_lam, log_z_s, log_z_t, w_ss, w_st, w_tt, w_ts, z_s, z_t, log_q_g, log_p_g)
        # a row whose student or teacher logits are all -inf has no distribution: NaN, never a number
        has_distribution = (m_s > float("-inf")) & (m_t > float("-inf"))
        d = tl.where(has_distribution, d, float("nan"))
        hard = is_hard_row(hard_rule, d, gamma, hard_ptr, row) & has_distribution
        use_hard_loss = hard & (loss_kind == LOSS_SKEWED)

        # pass 2 (hard loss rows): KL(ỹ ‖ m) and R = Σ_j q_j r_j (each q_j r_j <= ỹ_j / β)
        hard_loss = tl.zeros((), tl.float32)
        big_r = tl.zeros((), tl.float32)
        if use_hard_loss:
            for start in range(0, vocab, BLOCK):
                cols = start + offs
                valid = cols < vocab
                log_q = log_prob_tile(s_row, cols, valid, m_s, log_z_s, inv_temperature)
                log_p = log_prob_tile(t_row, cols, valid, m_t, log_z_t, inv_temperature)
                y, log_y = target_tile(log_p, cols == label, lam, log_lam, y_g, log_y_g)
                log_m = log_mixture(log_q, log_y, log_beta, log_1m_beta)
                # terms with ỹ_j = 0 are skipped: select the log gap before multiplying (0 * -inf)
                gap = tl.where(valid & (y > 0.0), log_y - log_m, 0.0)
                hard_loss += tl.sum(y * gap, axis=0)
                big_r += tl.sum(tl.where(valid, tl.exp(log_q + log_y - log_m), 0.0), axis=0)

        loss = tl.where(use_hard_loss, hard_loss, d)
        loss = tl.where(loss_kind == LOSS_FORWARD_KD, forward_kd, loss)
        loss = tl.where(loss_kind == LOSS_REVERSE_KD, reverse_kd, loss)
        loss = tl.where(has_distribution, loss, float("nan"))
        tl.store(loss_ptr + row, loss)
        tl.store(d_ptr + row, d)
        tl.store(is_hard_ptr + row, hard.to(tl.int8))

        # pass 3: d(grad_scale * loss) / d raw logits over the whole student row
        if compute_grad:
            coef = tl.load(grad_scale_ptr + row) * inv_temperature
            for start in range(0, row_len_s, BLOCK):
                cols = start + offs
                valid = cols < vocab
                is_label = cols == label
                log_q = log_prob_tile(s_row, cols, valid, m_s, log_z_s, inv_temperature)
                log_p = log_prob_tile(t_row, cols, valid, m_t, log_z_t, inv_temperature)
                q = tl.exp(log_q)
                y, log_y = target_tile(log_p, is_label, lam, log_lam, y_g, log_y_g)
                if use_hard_loss:  # β q_k (R - r_k), with q_k r_k formed in log space (no overflow)
                    log_m = log_mixture(log_q, log_y, log_beta, log_1m_beta)
                    grad = beta * (q * big_r - tl.exp(log_q + log_y - log_m))
                elif loss_kind == LOSS_REVERSE_KD:
                    grad = ((1.0 - lam) * (q - tl.where(is_label, 1.0, 0.0))
                            + lam * q * (log_q - log_p - kl_qp))
                else:  # easy, noevo, forward_kd
                    grad = q - y
                grad = tl.where(has_distribution, grad, float("nan"))
                tl.store(s_row + cols, tl.where(valid, grad * coef, 0.0), mask=cols < row_len_s)
    else:
        tl.store(loss_ptr + row, 0.0)
        tl.store(d_ptr + row, 0.0)
        tl.store(is_hard_ptr + row, tl.zeros((), tl.int8))
        if compute_grad:
            for start in range(0, row_len_s, BLOCK):
                cols = start + offs
                tl.store(s_row + cols, tl.zeros((BLOCK,), tl.float32), mask=cols < row_len_s)

