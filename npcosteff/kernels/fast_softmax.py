"""The fast kernels' softmax and its backward (Numba), with the same signatures, checks and
results as :func:`npcosteff.kernels.reference.softmax` and ``softmax_backward``.

The loops are parallel over rows and read each row while it is in cache, in float64 until
the one rounding to the input dtype (the numerical policy of :mod:`.fast`). The softmax has
serial twins for little work and for a share of the attention core
(:func:`~npcosteff.kernels.common.serial`). Most of
a softmax row's time goes to its exponentials, so the loops call no libm ``exp``: float64
rows use :func:`_exp_shifted` and float32 rows :func:`_exp_f32_range`, both branch-free
polynomial evaluations that the compiler can pipeline and vectorize, accurate far below the
rounding step of the result (tested against ``numpy.exp``). The inference path's float32
softmax, which computes in float32, is in :mod:`.inference`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import checks
from .common import JIT_PARALLEL, JIT_SERIAL, as_rows, mask_groups, serial
from .rows import row_dot, row_sum

__all__ = ["softmax", "softmax_backward"]

_SOFTMAX_BLOCK = 64  # rows per parallel task: one float64 scratch row is allocated per task


# exp(t) for t <= 0 in plain branch-free arithmetic, with no libm call, so that the compiler
# can pipeline and vectorize it: much faster than libm's exp in the softmax loop, which is
# bound by its exps (benchmarks/README.md). Cody-Waite reduction t = k ln2 + r with
# |r| <= ln2 / 2, exp(r) by its Taylor series to degree 13 (truncation error r^14 / 14! <
# 5e-18), and 2^k built from exponent bits. 2^k is applied as 2^k1 * 2^k2 with k1 + k2 = k so that
# both factors stay normal numbers and results down to the subnormal range round once.
# Accurate to about one float64 ulp (tested against numpy.exp).
_LOG2E = 1.4426950408889634  # 1 / ln 2
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact (fdlibm)
_LN2_LO = 1.90821492927058770002e-10
_EXP_MIN = -1400.0  # exp(-1400) is 0 in float64; the clamp keeps k1, k2 >= -1022
_INV_FACT = tuple(1.0 / math.factorial(k) for k in range(14))  # 1 / k!


@njit(fastmath=False, cache=True)
def _exp_shifted(e, shift, bits):
    """Overwrite e (n,) float64 with exp(e - shift), for e - shift <= 0.

    bits: int64 scratch (2, n). NaN stays NaN; -inf gives 0.
    """
    c = _INV_FACT
    two_pow = bits.view(np.float64)  # (2, n) the same memory read as float64
    for j in range(e.shape[0]):
        t = e[j] - shift
        t = _EXP_MIN if t < _EXP_MIN else t  # written so that NaN passes through
        k = math.floor(t * _LOG2E + 0.5)  # nearest integer to t / ln 2
        r = (t - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln2 / 2
        p = c[13]
        for i in range(12, -1, -1):  # Horner: sum_i r^i / i!
            p = p * r + c[i]
        ki = np.int64(k) if t == t else np.int64(0)  # NaN has no integer value
        k1 = ki >> 1
        bits[0, j] = (k1 + 1023) << 52  # float64 bits of 2^k1
        bits[1, j] = (ki - k1 + 1023) << 52  # float64 bits of 2^(k - k1)
        e[j] = p
    for j in range(e.shape[0]):
        e[j] = e[j] * two_pow[0, j] * two_pow[1, j]


# exp(t) for float32 softmax rows, in float64 arithmetic with no integer step at all (the
# int64 <-> float64 conversions of _exp_shifted have no AVX2 instruction), which makes the
# float32 softmax faster on the inference shapes (benchmarks/README.md):
# exp(t) = exp(t / 128) ** 128, exp(t / 128) by its Taylor series around the middle c of
# [_EXP_MIN_F32 / 128, 0] (|t / 128 - c| <= 0.43, degree 13: truncation below 1e-16), then
# seven squarings, which multiply the relative error by 128: about 3e-14 in all, far below
# float32's rounding step (6e-8), so the rounded probabilities equal the exact ones except
# for a value within 3e-14 of a rounding boundary, which then differs by one float32 ulp
# (the bargain of the float32 GELU in fused.py). Only t >= _EXP_MIN_F32 is needed: below it
# exp(t) / sum (the sum is >= 1, the row maximum gives exp(0)) is under half the smallest
# float32 subnormal and rounds to 0 in float32, as the exact value does.
_EXP_MIN_F32 = -110.0
_EXP_F32_SQUARINGS = 7
_EXP_F32_CENTER = _EXP_MIN_F32 / 2.0 ** (_EXP_F32_SQUARINGS + 1)  # the middle of [t_min / 128, 0]
_EXP_F32_TAYLOR = tuple(math.exp(_EXP_F32_CENTER) / math.factorial(k) for k in range(14))


@njit(fastmath={"contract"}, cache=True, inline="always")
def _exp_f32_range(t):
    """exp(t) for float64 t <= 0, to ~3e-14 relative (t clamped at _EXP_MIN_F32); NaN gives NaN."""
    c = _EXP_F32_TAYLOR
    t = _EXP_MIN_F32 if t < _EXP_MIN_F32 else t  # written so that NaN passes through
    u = t * (1.0 / 2.0 ** _EXP_F32_SQUARINGS) - _EXP_F32_CENTER  # |u| <= 0.43
    p = c[len(c) - 1]
    for k in range(len(c) - 2, -1, -1):  # Horner: e^c sum_k u^k / k!
        p = p * u + c[k]
    for _ in range(_EXP_F32_SQUARINGS):
        p = p * p  # exp(t / 128) ** 128
    return p


@njit(fastmath=False, cache=True, inline="always")
def _masked_row_max(s, m, r, e):
    """e (n,) float64 <- s[r] + m, the row's masked scores; returns their maximum (NaN when
    one of them is NaN, as NumPy's max; -inf when every key is masked out)."""
    row_max = -np.inf
    has_nan = False
    for j in range(s.shape[1]):
        v = np.float64(s[r, j]) + m[j]
        e[j] = v
        if v > row_max:
            row_max = v
        has_nan |= v != v
    return np.nan if has_nan else row_max


@njit(fastmath=False, cache=True, inline="always")
def _softmax_row_f32(s, m, r, e, probs):
    """Row r of the float32 softmax into probs[r], with scratch row e (n,) float64; m (n,) is the
    row's additive mask. Returns True when every masked score is -inf (no softmax)."""
    n = s.shape[1]
    row_max = _masked_row_max(s, m, r, e)
    for j in range(n):
        e[j] = _exp_f32_range(e[j] - row_max)  # every exponent <= 0
    total = row_sum(e)
    for j in range(n):
        probs[r, j] = e[j] / total
    return row_max == -np.inf


@njit(**JIT_PARALLEL)
def _softmax_loop_f32(s, mask, rows_per_group, probs):
    """:func:`_softmax_loop` for float32 scores, with :func:`_exp_f32_range`."""
    n_rows, n = s.shape
    n_blocks = (n_rows + _SOFTMAX_BLOCK - 1) // _SOFTMAX_BLOCK
    n_empty = 0
    for blk in prange(n_blocks):
        e = np.empty(n, dtype=np.float64)  # scratch row: kept in float64 until the divide
        for r in range(blk * _SOFTMAX_BLOCK, min(n_rows, (blk + 1) * _SOFTMAX_BLOCK)):
            n_empty += _softmax_row_f32(s, mask[r // rows_per_group], r, e, probs)
    return n_empty


@njit(**JIT_SERIAL)
def _softmax_loop_f32_serial(s, mask, rows_per_group, probs):
    """:func:`_softmax_loop_f32` in the calling thread (little work: see common.SERIAL_MAX_ELEMENTS)."""
    e = np.empty(s.shape[1], dtype=np.float64)
    n_empty = 0
    for r in range(s.shape[0]):
        n_empty += _softmax_row_f32(s, mask[r // rows_per_group], r, e, probs)
    return n_empty


@njit(fastmath=False, cache=True, inline="always")
def _softmax_row(s, m, r, e, bits, probs):
    """Row r of probs (N, n) from row r of the scores s (float64 scores: the exact exp) with
    the mask row m; e (n,) and bits (2, n) are scratch. Returns whether the row is all -inf."""
    row_max = _masked_row_max(s, m, r, e)
    _exp_shifted(e, row_max, bits)  # e = exp(s + m - max), every exponent <= 0
    total = row_sum(e)
    for j in range(s.shape[1]):
        probs[r, j] = e[j] / total
    return row_max == -np.inf


@njit(**JIT_PARALLEL)
def _softmax_loop(s, mask, rows_per_group, probs):
    """s, probs (N, n); mask (G, n) float64, row r uses mask[r // rows_per_group].

    Returns the number of rows whose masked scores are all -inf (no softmax).
    """
    n_rows, n = s.shape
    n_blocks = (n_rows + _SOFTMAX_BLOCK - 1) // _SOFTMAX_BLOCK
    n_empty = 0
    for blk in prange(n_blocks):
        e = np.empty(n, dtype=np.float64)  # scratch row: kept in float64 until the divide
        bits = np.empty((2, n), dtype=np.int64)  # scratch for _exp_shifted
        for r in range(blk * _SOFTMAX_BLOCK, min(n_rows, (blk + 1) * _SOFTMAX_BLOCK)):
            n_empty += _softmax_row(s, mask[r // rows_per_group], r, e, bits, probs)
    return n_empty


@njit(**JIT_SERIAL)
def _softmax_loop_serial(s, mask, rows_per_group, probs):
    """:func:`_softmax_loop` in the calling thread (little work: see common.serial)."""
    e = np.empty(s.shape[1], dtype=np.float64)
    bits = np.empty((2, s.shape[1]), dtype=np.int64)
    n_empty = 0
    for r in range(s.shape[0]):
        n_empty += _softmax_row(s, mask[r // rows_per_group], r, e, bits, probs)
    return n_empty


@njit(**JIT_PARALLEL)
def _softmax_backward_loop(dp, p, ds):  # dp, p, ds (N, n)
    for r in prange(p.shape[0]):
        dot = row_dot(dp[r], p[r])  # sum_i dp_i p_i
        for j in range(p.shape[1]):
            ds[r, j] = np.float64(p[r, j]) * (np.float64(dp[r, j]) - dot)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def softmax(scores: np.ndarray, additive_mask: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis of ``scores + additive_mask``, max-subtracted.

    scores: (..., n), typically (B, H, T, T). additive_mask: None or broadcastable to
    scores, typically (B, 1, 1, T) with 0 or finfo(dtype).min (handled without expanding it).
    Returns probs with scores' shape and dtype. A row of all -inf raises ValueError.
    """
    scores, mask = checks.check_softmax_inputs(scores, additive_mask)
    s = as_rows(scores)  # (N, n)
    if mask is None:
        mask2, rows_per_group = np.zeros((1, s.shape[1])), max(1, s.shape[0])
    else:
        mask2, rows_per_group = mask_groups(mask, scores.shape)
    probs = np.empty_like(s)
    if s.dtype == np.float32:
        loop = _softmax_loop_f32_serial if serial(s.size) else _softmax_loop_f32
    else:
        loop = _softmax_loop_serial if serial(s.size) else _softmax_loop
    n_empty = loop(s, mask2, rows_per_group, probs)
    if n_empty:
        raise ValueError(checks.EMPTY_ROW_MESSAGE)
    return probs.reshape(scores.shape)


def softmax_backward(dprobs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Gradient of :func:`softmax`: ``ds_j = p_j (dp_j - sum_i dp_i p_i)``.

    dprobs, probs: (..., n), same shape and dtype. Returns dscores with that shape and dtype.
    """
    dprobs = checks.float_array("dprobs", dprobs)
    probs = checks.float_array("probs", probs)
    checks.same_shape("dprobs", dprobs, "probs", probs)
    checks.same_dtype("dprobs", dprobs, "probs", probs)
    checks.last_axis("probs", probs)
    p = as_rows(probs)  # (N, n)
    ds = np.empty_like(p)
    _softmax_backward_loop(as_rows(dprobs), p, ds)
    return ds.reshape(probs.shape)
