"""Numba kernels with the same signatures and results as :mod:`npcosteff.kernels.reference`.

Each public function validates its inputs with the checks the reference uses (:mod:`.checks`) (so both reject the
same inputs with the same messages), views the data as a contiguous 2-D array of rows
``(N, n)`` (leading axes flattened, the reduced axis last), and runs a compiled loop that
is parallel over rows (``prange``) and reads each row once or twice while it is in cache,
with no full-size temporaries. LayerNorm and the float32 softmax also have a serial twin
that runs the same row code in the calling thread, chosen for inputs of at most
:data:`SERIAL_MAX_ELEMENTS` (one sample at inference), where waking the worker threads
costs more than the loop.

Numerical policy: the same as the reference. Every value is computed in float64 and
rounded once to the input dtype when stored; LayerNorm's ``mean`` and ``rstd`` are float64.
The only differences from the reference are the order of the float64 summations (four
interleaved accumulators here, pairwise summation in NumPy), the softmax's exp (a
vectorizable one, below) and the libm behind ``erfc``; all are at the float64 rounding
level, so for float32 the two implementations agree to one float32 rounding (in practice
they are bit-identical) and for float64 to about 1e-15 relative.

Compiled code is cached on disk (``cache=True``), so the compile cost (about ten seconds)
is paid once per machine rather than once per process. ``fastmath`` stays off: it would
let the compiler reorder sums and change rounding, so results would drift from the
reference by more than the summation order documented here.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from . import checks as _checks
from . import lanes as _lanes
from . import reference as _ref
from .batched import batched_matmul  # noqa: F401  (the layers' steps: threaded and fused twins)
from .rows import _row_dot, _row_sq_dev, _row_sum
from .fused import (adamw_update, attention_probs_backward, attention_weights, bias_gelu,  # noqa: F401
                    bias_gelu_backward, scatter_add_rows)

__all__ = list(_ref.__all__)

_SQRT_HALF = 1.0 / math.sqrt(2.0)  # 1 / sqrt(2)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # normal density constant
_SOFTMAX_BLOCK = 64  # rows per parallel task: one float64 scratch row is allocated per task

_jit = dict(parallel=True, fastmath=False, cache=True)
_jit_serial = dict(fastmath=False, cache=True, nogil=True)   # nogil: lanes run them side by side (lanes.py)

# Up to this many elements LayerNorm and the float32 softmax run in the calling thread: waking
# the worker threads for a parallel loop costs more than it saves. Measured on 2 cores
# (2 December 2026, float32, OPENBLAS_THREAD_TIMEOUT=4, parallel / serial ms): LayerNorm with
# residual, d = 384, 128 rows (one sample at inference) 0.201 / 0.034, 1,024 rows 0.366 / 0.257,
# 4,096 rows 1.46 / 1.56; softmax over 128 keys, one sample's 12 heads 0.50 / 0.41, two
# samples' 0.94 / 0.92, four 1.38 / 1.73. Results do not depend on the path: each row is
# computed by the same code either way (tests/test_kernels.py runs both).
SERIAL_MAX_ELEMENTS = 1 << 19


def _serial(size: int) -> bool:
    """Whether a loop over `size` elements runs in the calling thread: little work, or a lane's
    share of a layer (:mod:`~npcosteff.kernels.lanes`, which keeps the cores busy itself)."""
    return size <= SERIAL_MAX_ELEMENTS or _lanes.inside()


# ---------------------------------------------------------------------------
# Compiled loops. Arguments are contiguous arrays; outputs are preallocated.
# ---------------------------------------------------------------------------


@njit(**_jit)
def _gelu_loop(x, y):  # x, y (N,)
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        y[i] = 0.5 * v * math.erfc(-v * _SQRT_HALF)  # 0.5 x erfc(-x/sqrt 2) = x Phi(x)


@njit(**_jit)
def _gelu_backward_loop(dy, x, dx):  # dy, x, dx (N,)
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        cdf = 0.5 * math.erfc(-v * _SQRT_HALF)  # Phi(x)
        pdf = _INV_SQRT_2PI * math.exp(-0.5 * v * v)  # phi(x)
        dx[i] = np.float64(dy[i]) * (cdf + v * pdf)


# exp(t) for t <= 0 in plain branch-free arithmetic, with no libm call, so that the compiler
# can pipeline and vectorize it: about three times faster than libm's exp in the softmax
# loop, which is bound by its exps. Cody-Waite reduction t = k ln2 + r with |r| <= ln2 / 2,
# exp(r) by its Taylor series to degree 13 (truncation error r^14 / 14! < 5e-18), and
# 2^k built from exponent bits. 2^k is applied as 2^k1 * 2^k2 with k1 + k2 = k so that
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
# int64 <-> float64 conversions of _exp_shifted have no AVX2 instruction); on the inference
# shapes of MiniLM the float32 softmax runs about a third faster with it:
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
    total = _row_sum(e)
    for j in range(n):
        probs[r, j] = e[j] / total
    return row_max == -np.inf


@njit(**_jit)
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


@njit(**_jit_serial)
def _softmax_loop_f32_serial(s, mask, rows_per_group, probs):
    """:func:`_softmax_loop_f32` in the calling thread (little work: see SERIAL_MAX_ELEMENTS)."""
    e = np.empty(s.shape[1], dtype=np.float64)
    n_empty = 0
    for r in range(s.shape[0]):
        n_empty += _softmax_row_f32(s, mask[r // rows_per_group], r, e, probs)
    return n_empty


@njit(**_jit)
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
            row_max = _masked_row_max(s, mask[r // rows_per_group], r, e)
            n_empty += row_max == -np.inf
            _exp_shifted(e, row_max, bits)  # e = exp(s + m - max), every exponent <= 0
            total = _row_sum(e)
            for j in range(n):
                probs[r, j] = e[j] / total
    return n_empty


@njit(**_jit)
def _softmax_backward_loop(dp, p, ds):  # dp, p, ds (N, n)
    for r in prange(p.shape[0]):
        dot = _row_dot(dp[r], p[r])  # sum_i dp_i p_i
        for j in range(p.shape[1]):
            ds[r, j] = np.float64(p[r, j]) * (np.float64(dp[r, j]) - dot)


@njit(fastmath=False, cache=True, inline="always")
def _layer_norm_row(x, residual, has_residual, gamma, beta, eps, y, s, mean, rstd, r):
    """Row r of :func:`_layer_norm_loop`."""
    d = x.shape[1]
    if has_residual:
        for j in range(d):
            s[r, j] = x[r, j] + residual[r, j]  # rounded to the dtype, as in the unfused add
        row = s[r]
    else:
        row = x[r]
    mu = _row_sum(row) / d  # mean
    var = _row_sq_dev(row, mu) / d  # biased variance, from centred values (two passes)
    rs = 1.0 / math.sqrt(var + eps)
    for j in range(d):
        y[r, j] = (np.float64(row[j]) - mu) * rs * np.float64(gamma[j]) + np.float64(beta[j])
    mean[r] = mu
    rstd[r] = rs


@njit(**_jit)
def _layer_norm_loop(x, residual, has_residual, gamma, beta, eps, y, s, mean, rstd):
    """x, residual, y, s (N, d); gamma, beta (d,); mean, rstd (N,) float64.

    With has_residual, the normalized input is s = x + residual (rounded to x's dtype and
    stored in s); otherwise it is x itself and s is not touched.
    """
    for r in prange(x.shape[0]):
        _layer_norm_row(x, residual, has_residual, gamma, beta, eps, y, s, mean, rstd, r)


@njit(**_jit_serial)
def _layer_norm_loop_serial(x, residual, has_residual, gamma, beta, eps, y, s, mean, rstd):
    """:func:`_layer_norm_loop` in the calling thread (little work: see SERIAL_MAX_ELEMENTS)."""
    for r in range(x.shape[0]):
        _layer_norm_row(x, residual, has_residual, gamma, beta, eps, y, s, mean, rstd, r)


@njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)   # reassoc: the row sums vectorize
def _layer_norm_backward_loop(dy, x, gamma, mean, rstd, dx, dgamma_parts, dbeta_parts):
    """dy, x, dx (N, d); gamma (d,); mean, rstd (N,) float64.

    Rows are split into as many chunks as dgamma_parts has rows; chunk c adds its rows'
    ``dy * x_hat`` and ``dy`` into dgamma_parts[c] and dbeta_parts[c] (float64), so the
    parallel tasks never write to the same memory. The caller sums the parts.
    """
    n_rows, d = x.shape
    n_chunks = dgamma_parts.shape[0]
    chunk = (n_rows + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        dgamma = dgamma_parts[c]
        dbeta = dbeta_parts[c]
        for r in range(c * chunk, min(n_rows, (c + 1) * chunk)):
            mu = mean[r]
            rs = rstd[r]
            sum_g = 0.0
            sum_g_xhat = 0.0
            for j in range(d):
                g_dy = np.float64(dy[r, j])
                x_hat = (np.float64(x[r, j]) - mu) * rs
                g = g_dy * np.float64(gamma[j])
                sum_g += g
                sum_g_xhat += g * x_hat
                dgamma[j] += g_dy * x_hat
                dbeta[j] += g_dy
            mean_g = sum_g / d
            mean_g_xhat = sum_g_xhat / d
            for j in range(d):
                x_hat = (np.float64(x[r, j]) - mu) * rs
                g = np.float64(dy[r, j]) * np.float64(gamma[j])
                dx[r, j] = rs * (g - mean_g - x_hat * mean_g_xhat)


@njit(fastmath=False, cache=True)
def _dropout_loop(u, threshold, scale):
    """u (N,) uniform draws, overwritten in place by the mask: scale where u >= threshold.

    Serial on purpose: one compare per element is memory-bound, and drawing u costs more.
    """
    for i in range(u.shape[0]):
        u[i] = scale if u[i] >= threshold else 0.0


# ---------------------------------------------------------------------------
# Public API (same signatures, checks and results as the reference)
# ---------------------------------------------------------------------------


def _rows(a: np.ndarray) -> np.ndarray:
    """Contiguous (N, n) view of a (..., n) array (a copy only if a is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, erf form ``0.5 x (1 + erf(x / sqrt 2))``, evaluated as ``0.5 x erfc(-x / sqrt 2)``.

    x: any shape, float32 or float64. Returns y with x's shape and dtype.
    """
    x = _checks._float_array("x", x)
    flat = np.ascontiguousarray(x).reshape(-1)  # (N,)
    y = np.empty_like(flat)
    _gelu_loop(flat, y)
    return y.reshape(x.shape)


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gradient of :func:`gelu`: ``dx = dy * (Phi(x) + x phi(x))``.

    dy, x: same shape and dtype. Returns dx with that shape and dtype.
    """
    dy = _checks._float_array("dy", dy)
    x = _checks._float_array("x", x)
    _checks._same_shape("dy", dy, "x", x)
    _checks._same_dtype("dy", dy, "x", x)
    flat_x = np.ascontiguousarray(x).reshape(-1)  # (N,)
    dx = np.empty_like(flat_x)
    _gelu_backward_loop(np.ascontiguousarray(dy).reshape(-1), flat_x, dx)
    return dx.reshape(x.shape)


def _mask_groups(mask: np.ndarray, shape: tuple) -> tuple[np.ndarray, int]:
    """Lay a broadcastable float64 mask out as (G, n) rows, with row r of the scores using
    mask row ``r // rows_per_group``.

    A mask whose middle axes are all 1, such as (B, 1, 1, T) for scores (B, H, T, T), stays
    one row per sample (G = B, rows_per_group = H * T): it is never expanded. Any other
    broadcastable shape is expanded to one mask row per score row.
    """
    n = shape[-1]
    n_rows = math.prod(shape[:-1])
    m = mask.reshape((1,) * (len(shape) - mask.ndim) + mask.shape)  # left-pad to scores' ndim
    if len(shape) == 1:
        return np.ascontiguousarray(np.broadcast_to(m, (1, n)), dtype=np.float64), 1
    if all(k == 1 for k in m.shape[1:-1]):
        groups = m.shape[0]  # 1 (shared by every row) or the batch size
        m2 = np.broadcast_to(m.reshape(groups, m.shape[-1]), (groups, n))
        return np.ascontiguousarray(m2, dtype=np.float64), max(1, n_rows // max(groups, 1))
    full = np.broadcast_to(m, shape).reshape(n_rows, n)
    return np.ascontiguousarray(full, dtype=np.float64), 1


def softmax(scores: np.ndarray, additive_mask: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis of ``scores + additive_mask``, max-subtracted.

    scores: (..., n), typically (B, H, T, T). additive_mask: None or broadcastable to
    scores, typically (B, 1, 1, T) with 0 or finfo(dtype).min (handled without expanding it).
    Returns probs with scores' shape and dtype. A row of all -inf raises ValueError.
    """
    scores, mask = _checks._check_softmax_inputs(scores, additive_mask)
    s = _rows(scores)  # (N, n)
    if mask is None:
        mask2, rows_per_group = np.zeros((1, s.shape[1])), max(1, s.shape[0])
    else:
        mask2, rows_per_group = _mask_groups(mask, scores.shape)
    probs = np.empty_like(s)
    if s.dtype == np.float32:
        loop = _softmax_loop_f32_serial if _serial(s.size) else _softmax_loop_f32
    else:
        loop = _softmax_loop
    n_empty = loop(s, mask2, rows_per_group, probs)
    if n_empty:
        raise ValueError(_checks._EMPTY_ROW_MESSAGE)
    return probs.reshape(scores.shape)


def softmax_backward(dprobs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Gradient of :func:`softmax`: ``ds_j = p_j (dp_j - sum_i dp_i p_i)``.

    dprobs, probs: (..., n), same shape and dtype. Returns dscores with that shape and dtype.
    """
    dprobs = _checks._float_array("dprobs", dprobs)
    probs = _checks._float_array("probs", probs)
    _checks._same_shape("dprobs", dprobs, "probs", probs)
    _checks._same_dtype("dprobs", dprobs, "probs", probs)
    _checks._last_axis("probs", probs)
    p = _rows(probs)  # (N, n)
    ds = np.empty_like(p)
    _softmax_backward_loop(_rows(dprobs), p, ds)
    return ds.reshape(probs.shape)


def _layer_norm_loop_for(x2):
    """The LayerNorm loop for rows x2 (N, d): serial for little work, else parallel."""
    return _layer_norm_loop_serial if _serial(x2.size) else _layer_norm_loop


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float):
    """LayerNorm over the last axis: ``y = (x - mean) * rstd * gamma + beta``.

    x: (..., d); gamma, beta: (d,), one dtype; eps >= 0.
    Returns ``(y, mean, rstd)``: y (..., d) in x's dtype; mean, rstd (...) float64.
    """
    x, gamma, beta, eps = _checks._check_layer_norm_params(x, gamma, beta, eps)
    x2 = _rows(x)  # (N, d)
    y = np.empty_like(x2)
    mean = np.empty(x2.shape[0])  # (N,) float64
    rstd = np.empty(x2.shape[0])  # (N,) float64
    _layer_norm_loop_for(x2)(x2, x2, False, gamma, beta, eps, y, x2, mean, rstd)
    lead = x.shape[:-1]
    return y.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)


def add_layer_norm(x: np.ndarray, residual: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float):
    """Residual add then LayerNorm in one pass: ``s = x + residual``, ``y = layer_norm(s)``.

    x, residual: (..., d), same shape and dtype; gamma, beta: (d,).
    Returns ``(y, s, mean, rstd)``; backward: ``layer_norm_backward(dy, s, gamma, mean, rstd)``.
    """
    x = _checks._float_array("x", x)
    residual = _checks._float_array("residual", residual)
    _checks._same_shape("residual", residual, "x", x)
    _checks._same_dtype("residual", residual, "x", x)
    x, gamma, beta, eps = _checks._check_layer_norm_params(x, gamma, beta, eps)
    x2 = _rows(x)  # (N, d)
    y = np.empty_like(x2)
    s = np.empty_like(x2)
    mean = np.empty(x2.shape[0])  # (N,) float64
    rstd = np.empty(x2.shape[0])  # (N,) float64
    _layer_norm_loop_for(x2)(x2, _rows(residual), True, gamma, beta, eps, y, s, mean, rstd)
    lead = x.shape[:-1]
    return y.reshape(x.shape), s.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)


def layer_norm_backward(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray, rstd: np.ndarray):
    """Gradients of :func:`layer_norm`: ``dx = rstd (g - mean(g) - x_hat mean(g x_hat))``,
    ``g = dy gamma``; ``dgamma = sum dy x_hat`` and ``dbeta = sum dy`` over all rows.

    Returns ``(dx, dgamma, dbeta)`` in x's dtype: dx (..., d), dgamma and dbeta (d,).
    """
    dy, x, gamma, mean, rstd = _checks._check_layer_norm_backward(dy, x, gamma, mean, rstd)
    x2 = _rows(x)  # (N, d)
    n_rows, d = x2.shape
    n_chunks = max(1, min(n_rows, numba.get_num_threads()))
    dgamma_parts = np.zeros((n_chunks, d))  # float64 partial sums, one row per chunk
    dbeta_parts = np.zeros((n_chunks, d))
    dx = np.empty_like(x2)
    _layer_norm_backward_loop(
        _rows(dy),
        x2,
        gamma,
        np.ascontiguousarray(mean, dtype=np.float64).reshape(-1),
        np.ascontiguousarray(rstd, dtype=np.float64).reshape(-1),
        dx,
        dgamma_parts,
        dbeta_parts,
    )
    dtype = x.dtype
    return dx.reshape(x.shape), dgamma_parts.sum(axis=0).astype(dtype), dbeta_parts.sum(axis=0).astype(dtype)


def dropout_mask(rng: np.random.Generator, shape, p: float, dtype) -> np.ndarray:
    """Inverted-dropout multiplier: 0 with probability p, else ``1 / (1 - p)``.

    Draws exactly what the reference draws (``rng.random(shape, dtype)``), so the same
    generator state gives the same mask; the threshold and scale are applied in place.
    """
    shape, p, dtype = _checks._check_dropout_args(rng, shape, p, dtype)
    if p == 0.0:
        return np.ones(shape, dtype=dtype)
    u = rng.random(shape, dtype=dtype)  # (shape) uniform [0, 1), overwritten by the mask
    _dropout_loop(u.reshape(-1), dtype.type(p), dtype.type(1.0 / (1.0 - p)))
    return u


# The inference path's float32 GELU and softmax (they use the loops above for float64 data).
from .inference import bias_gelu_inference, softmax_inference  # noqa: E402,F401
