"""Float32 GELU and softmax for the inference path (Numba), in float32 arithmetic.

The training kernels (:mod:`.fast`, :mod:`.fused`) compute every GELU and softmax value in
float64 and round it once, so that they give the reference's results to the last bit. That
costs: float64 runs half as many values per vector instruction, and an erfc accurate to
float64 needs long polynomials. At inference GELU and the softmax took a large share of a
forward pass, several times PyTorch's time for the same steps; these kernels halve it
(benchmarks/README.md, "Measurements behind the kernels' design").

The kernels here serve a forward pass that keeps no cache (nothing backpropagates through
it): :meth:`npcosteff.model.CostEffModel.forward` without ``return_cache`` and
:func:`npcosteff.early_exit.early_exit_forward`. For float32 data they compute in float32
arithmetic, eight values per AVX2 instruction. Two steps would lose accuracy in plain float32,
because the exponential turns an absolute error in its argument into a relative error of its
result (an argument near -90 rounded to float32 is off by up to 4e-6, which is 30 ulps of
the exponential): forming -x^2 / 2 (GELU) and s - max (softmax). Both are carried as a sum of
two float32 numbers, hi + lo, that holds the value exactly or to 2^-28 of it, and lo enters
the reduced argument of the exponential after the large part has been taken off. A softmax
row with an additive mask (padding) forms s + mask - max in float64 instead (the mask may be
any float64 number). Their error, measured against the float64 reference
(tests/test_kernels_inference.py, several million values):

* GELU: at most :data:`GELU_MAX_ULP` float32 ulps of the correctly rounded result where that
  result is a normal float32 (|y| >= 1.2e-38, x > -13.2); below, in the subnormal range, the
  result is 0 for x < -14, where the true value is at most 1.1e-43 in magnitude;
* softmax: at most :data:`SOFTMAX_MAX_ULP` ulps for every probability of at least 1e-30; a
  smaller probability is off by at most as much as one of 1e-30 may be (4 ulps of 1e-30,
  3.8e-37), or is 0 where exp(s - max) < exp(-87) = 1.6e-38.

float64 data goes to the exact kernels, so float64 models (and the parity tests at 1e-10)
are untouched. Each function has the plain twin of the same name in
:mod:`npcosteff.kernels.reference` (the exact NumPy computation), against which it is
tested.

The formulas, with E(r) ~ exp(r) for |r| <= 0.4 (degree 6) and 2^k built from exponent bits,
ln 2 = ln2_hi + ln2_lo with k ln2_hi exact in float32:

* softmax, exp(d) for d = s - max <= 0: hi + lo = d exactly (Knuth's TwoSum), k = round(hi / ln 2),
  r = (hi - k ln2_hi) - k ln2_lo + lo, exp(d) = 2^k E(r) (with a mask: d and r in float64);
* GELU: gelu(x) = x Phi(x), Phi(x) = erfc(a) / 2 for x < 0 and 1 - erfc(a) / 2 otherwise,
  with a = |x| / sqrt 2 and erfc(a) = exp(-a^2) erfcx(a); erfcx(a) = t Q(t), t = 1 / (1 + 0.4 a),
  Q of degree 10 (as in :mod:`.fused`, fitted for float32 accuracy on 0 <= a <= 14 / sqrt 2);
  exp(-a^2) from -a^2 = -x^2 / 2 = nh + nl, where x = xh + xl with xh a multiple of 2^-8
  (12 significant bits for |x| <= 14, so nh = -xh^2 / 2 is exact) and nl = -xl (x + xh) / 2
  rounded once (|nl| < 0.06, its rounding error below 2^-28).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import fast_softmax, fused
from .checks import EMPTY_ROW_MESSAGE, check_bias_gelu, check_softmax_inputs
from .common import as_rows, mask_groups, serial
from .rows import row_sum

__all__ = ["bias_gelu_inference", "softmax_inference", "fit_coefficients", "GELU_MAX_ULP", "SOFTMAX_MAX_ULP"]

# Error bounds in float32 ulps of the correctly rounded result, from the error analysis of each
# kernel (tests/test_kernels_inference.py checks them on millions of values; the maxima seen
# there are in benchmarks/README.md). GELU: Q's fit 0.05 ulp; Q's argument u = t * 2.5 - 1.5,
# rounded in float32, carries up to ~3 ulps into Q through its slope; Q's float32 Horner
# evaluation ~1.5; E(r) ~0.5 and r's roundings ~0.3; the products and the division ~2.5.
# Softmax: E(r) and its scaling ~1, r's roundings ~0.3, the sum (float64, rounded once) and
# the division ~1.
GELU_MAX_ULP = 8
SOFTMAX_MAX_ULP = 4

_LOG2E = 1.4426950408889634                    # 1 / ln 2
_LN2 = 0.6931471805599453
_X_MAX = 14.0                                  # GELU: below -14 the result is 0 (|gelu| <= 1.1e-43)
_A_MAX = _X_MAX / math.sqrt(2.0)
_ERFCX_C = 0.4                                 # t = 1 / (1 + _ERFCX_C * a)
_T_LO = 1.0 / (1.0 + _ERFCX_C * _A_MAX)        # t at a = _A_MAX
_T_SCALE = 2.0 / (1.0 - _T_LO)                 # t in [_T_LO, 1] -> u in [-1, 1]
_EXP_R = 0.4                                   # E(r) is fitted on |r| <= _EXP_R (|r| <= ln2 / 2 is used)
_SOFTMAX_MIN = -87.0                           # exp(d) for d below this (under float32's normal range) is taken as 0
# ln 2 = _LN2_HI + _LN2_LO: _LN2_HI has 16 significant bits, so k * _LN2_HI is exact in float32 for |k| < 256
_LN2_HI = np.float32(0.693145751953125)
_LN2_LO = np.float32(_LN2 - 0.693145751953125)
_LOG2E_F32 = np.float32(_LOG2E)
_SOFTMAX_MIN_F32 = np.float32(_SOFTMAX_MIN)

# Coefficients, lowest degree first, from fit_coefficients() (float32 on use).
_EXP_POLY = (0.9999999998725072, 1.0000000892706074, 0.5000000254922256, 0.1666622052591704,
             0.041665870366007295, 0.008389047884137473, 0.0013968452674200343)
_ERFCX_POLY = (0.4944664278570124, 0.32236143259880456, 0.14370056782639662, 0.038667681254748336,
               0.002789655548065522, -0.0017563505403212973, -0.00035985788594759387, 0.00011219718149861824,
               2.8261491638476643e-05, -8.429649730600353e-06, -1.5865974597915057e-06)
_EXP_POLY_F32 = tuple(np.float32(c) for c in _EXP_POLY)
_ERFCX_POLY_F32 = tuple(np.float32(c) for c in _ERFCX_POLY)

# float32 constants, so that the arithmetic around them stays in float32
_ONE, _HALF, _ZERO = np.float32(1.0), np.float32(0.5), np.float32(0.0)
_X_MAX_F32 = np.float32(_X_MAX)
_SQRT_HALF_F32 = np.float32(1.0 / math.sqrt(2.0))
_ERFCX_C_F32 = np.float32(_ERFCX_C)
_U_SCALE, _U_SHIFT = np.float32(_T_SCALE), np.float32(_T_SCALE * _T_LO + 1.0)   # u = t _U_SCALE - _U_SHIFT

# exp(-a^2) reaches 2^-142 before x = -14: its 2^k is built as 2^(k + 64), which is a normal
# float32, and the product is multiplied by 2^-64 last, so that results in the subnormal range
# are rounded once.
_GELU_EXP_BIAS = 64
_SPLIT, _SPLIT_INV = np.float32(256.0), np.float32(1.0 / 256.0)   # GELU: x = xh + xl, xh a multiple of 2^-8
_GELU_UNBIAS = np.float32(2.0 ** -_GELU_EXP_BIAS)

# The loops run in the calling thread up to common.SERIAL_MAX_ELEMENTS (one sample at inference).
_GELU_BLOCK = 16      # rows per parallel task (one scratch row each)
_SOFTMAX_BLOCK = 64


def fit_coefficients(exp_degree=6, erfcx_degree=10, nodes=4000):
    """Recompute ``_EXP_POLY`` and ``_ERFCX_POLY`` (needs SciPy): least-squares Chebyshev fits
    at ``nodes`` Chebyshev nodes, converted to the power basis (of r for E, of u for Q)."""
    from numpy.polynomial import chebyshev
    from scipy.special import erfcx

    u = np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)            # (nodes,) in (-1, 1)
    e = chebyshev.cheb2poly(chebyshev.chebfit(u, np.exp(_EXP_R * u), exp_degree))
    e = [c / _EXP_R ** k for k, c in enumerate(e)]                  # u = r / _EXP_R
    t = _T_LO + (1.0 - _T_LO) * (u + 1.0) / 2.0
    a = (1.0 / t - 1.0) / _ERFCX_C
    q = chebyshev.cheb2poly(chebyshev.chebfit(u, erfcx(a) / t, erfcx_degree))
    return tuple(float(c) for c in e), tuple(float(c) for c in q)


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _horner32(c, u):
    """sum_k c[k] u^k in float32 (c a tuple of float32)."""
    p = c[len(c) - 1]
    for k in range(len(c) - 2, -1, -1):
        p = p * u + c[k]
    return p


@njit(fastmath=False, error_model="numpy", cache=True, inline="always")
def _reduce(d, bias):
    """For float64 d: (r, bits) with d = k ln 2 + r, |r| <= ln 2 / 2, as float32 r and the
    int32 bits of the float32 2^(k + bias) (k + bias in [-126, 127] for the d that occur here)."""
    k = np.floor(d * _LOG2E + 0.5)                             # float64, a whole number
    r = np.float32(d - k * _LN2)
    return r, np.int32((np.int32(k) + (127 + bias)) << 23)


# ---------------------------------------------------------------------------- GELU


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _gelu_row_f32(pre, bias, mask, act, r, bits):
    """Row r: pre[r] += bias, act[r] = gelu(pre[r]) * mask; bits (n,) int32 scratch."""
    n = pre.shape[1]
    scale = bits.view(np.float32)                              # the same memory read as float32
    for j in range(n):                                         # everything but the 2^k of exp(-a^2)
        p = pre[r, j] + bias[j]                                # float32 add, as `pre += bias`
        pre[r, j] = p
        x = abs(p)
        x = x if x <= _X_MAX_F32 else _X_MAX_F32               # NaN goes to the clamp; p still carries it
        a = x * _SQRT_HALF_F32
        t = _ONE / (_ONE + _ERFCX_C_F32 * a)
        u = t * _U_SCALE - _U_SHIFT                            # |u| <= 1
        # -a^2 = -x^2 / 2 = nh + nl exactly enough, in float32: x = xh + xl with xh a multiple of
        # 2^-8 (12 significant bits for x <= 14), so xh^2 is exact; xl (x + xh) is rounded once,
        # at 2^-28 of x^2 (module docstring).
        xh = np.floor(x * _SPLIT) * _SPLIT_INV
        nh = -_HALF * (xh * xh)                                # exact
        nl = -_HALF * ((x - xh) * (x + xh))                    # x - xh exact
        k = np.floor((nh + nl) * _LOG2E_F32 + _HALF)           # a whole number in [-142, 0]
        rr = (nh - k * _LN2_HI) - (k * _LN2_LO - nl)           # exp(-a^2) = 2^k E(rr), |rr| <= ln 2 / 2 + 1e-7
        act[r, j] = _HALF * t * _horner32(_ERFCX_POLY_F32, u) * _horner32(_EXP_POLY_F32, rr)
        bits[j] = np.int32((np.int32(k) + (127 + _GELU_EXP_BIAS)) << 23)
    for j in range(n):
        p = pre[r, j]
        v = act[r, j] * scale[j]                               # erfc(a) / 2 * 2^64, a normal float32
        # x < 0: x Phi(x) = (x v) 2^-64, scaled last so that a tiny result is rounded once;
        # x >= 0: x (1 - erfc(a) / 2).
        y = (p * v) * _GELU_UNBIAS if p < _ZERO else p * (_ONE - v * _GELU_UNBIAS)
        y = _ZERO * p if p < -_X_MAX_F32 else y                # -0.0 (and NaN for -inf, as the reference)
        act[r, j] = y * mask[j]


@njit(parallel=True, fastmath={"contract"}, error_model="numpy", cache=True)
def _bias_gelu_loop(pre, bias, mask, act):     # pre, act (N, F) float32; bias, mask (F,)
    n_rows, n = pre.shape
    for blk in prange((n_rows + _GELU_BLOCK - 1) // _GELU_BLOCK):
        bits = np.empty(n, dtype=np.int32)
        for r in range(blk * _GELU_BLOCK, min(n_rows, (blk + 1) * _GELU_BLOCK)):
            _gelu_row_f32(pre, bias, mask, act, r, bits)


@njit(fastmath={"contract"}, error_model="numpy", cache=True, nogil=True)   # nogil: for lanes.py
def _bias_gelu_loop_serial(pre, bias, mask, act):
    bits = np.empty(pre.shape[1], dtype=np.int32)
    for r in range(pre.shape[0]):
        _gelu_row_f32(pre, bias, mask, act, r, bits)


def bias_gelu_inference(pre, bias, ffn_mask=None, out=None):
    """:func:`npcosteff.kernels.bias_gelu` for the inference path: ``pre += bias`` (in place)
    and ``act = gelu(pre) * ffn_mask``, GELU within :data:`GELU_MAX_ULP` ulps for float32 data
    (module docstring); float64 data gets the exact kernel.

    pre (N, F) C-contiguous, bias (F,), ffn_mask (F,) or None. Returns act (N, F).
    """
    if pre.dtype != np.float32:
        return fused.bias_gelu(pre, bias, ffn_mask, out)
    bias, mask, act = check_bias_gelu(pre, bias, ffn_mask, out)
    loop = _bias_gelu_loop_serial if serial(pre.size) else _bias_gelu_loop
    loop(pre, bias, mask, act)
    return act


# ---------------------------------------------------------------------------- softmax


@njit(fastmath={"nnan", "nsz"}, cache=True)
def _row_max(s, m):
    """max_j (s_j + m_j) in float64 for a row s (n,) and its mask m (n,); -inf for an empty row.

    Compiled as if there were no NaN; a NaN in the row then gives some maximum, but it reaches
    the row's sum through exp, and the row comes out NaN, as the reference's."""
    row_max = -np.inf
    for j in range(s.shape[0]):
        v = np.float64(s[j]) + m[j]
        row_max = v if v > row_max else row_max
    return row_max


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _softmax_row_f64(s, m, r, e, bits, probs):
    """Row r of the softmax of s + m (m (n,) a float64 additive mask), with d = s + m - max
    formed in float64; e (n,) float32 and bits (n,) int32 scratch. Returns True when every
    masked score is -inf."""
    n = s.shape[1]
    scale = bits.view(np.float32)
    row_max = _row_max(s[r], m)
    n_nan = 0
    for j in range(n):
        d = np.float64(s[r, j]) + m[j] - row_max               # <= 0, in float64: no rounding to amplify
        n_nan += d != d
        rr, b = _reduce(d if d >= _SOFTMAX_MIN else _SOFTMAX_MIN, 0)
        e[j] = _horner32(_EXP_POLY_F32, rr)
        bits[j] = b if d >= _SOFTMAX_MIN else 0                # 0: exp(d) taken as 0
    for j in range(n):
        e[j] = e[j] * scale[j]                                 # exp(d) = 2^k E(r)
    total = np.float32(row_sum(e)) if n_nan == 0 else np.float32(np.nan)   # a NaN score: a NaN row, as the reference
    for j in range(n):
        probs[r, j] = e[j] / total
    return row_max == -np.inf


@njit(fastmath={"contract"}, error_model="numpy", cache=True, inline="always")
def _row_max_f32(s, r):
    """max_j s[r, j] in float32 (-inf for an empty row or one of NaN and -inf only).

    Eight running maxima, one per lane of eight columns: a single running maximum waits on
    its previous comparison at every column (Numba does not vectorize this reduction), eight
    wait eight times less. A NaN is never taken (every comparison with it is false)."""
    n = s.shape[1]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = np.float32(-np.inf)
    n8 = n - n % 8
    for j in range(0, n8, 8):
        v = s[r, j]
        m0 = v if v > m0 else m0
        v = s[r, j + 1]
        m1 = v if v > m1 else m1
        v = s[r, j + 2]
        m2 = v if v > m2 else m2
        v = s[r, j + 3]
        m3 = v if v > m3 else m3
        v = s[r, j + 4]
        m4 = v if v > m4 else m4
        v = s[r, j + 5]
        m5 = v if v > m5 else m5
        v = s[r, j + 6]
        m6 = v if v > m6 else m6
        v = s[r, j + 7]
        m7 = v if v > m7 else m7
    for j in range(n8, n):
        v = s[r, j]
        m0 = v if v > m0 else m0
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    return m4 if m4 > m0 else m0


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _softmax_row_unmasked(s, r, row_max, e, bits, probs):
    """Row r of the softmax of s (no mask) in float32 arithmetic, for a finite float32 row_max.

    d = s - max is formed exactly as hi + lo (Knuth's TwoSum: hi the float32 difference, lo its
    rounding error), so that float32 loses nothing the float64 path keeps; exp(d) = 2^k E(r)
    with k = round(hi / ln 2) and r = (hi - k ln2_hi) - k ln2_lo + lo. Only additions,
    subtractions and products of float32 values: eight per vector instruction, against four
    for the float64 path. A NaN score gives a NaN hi, which is kept (not <= -87), and the row
    comes out NaN through its sum, as the reference's."""
    n = s.shape[1]
    scale = bits.view(np.float32)
    for j in range(n):
        x = s[r, j]
        hi = x - row_max                                       # TwoSum(x, -row_max): hi + lo = x - row_max
        t = hi - x
        lo = (x - (hi - t)) + (-row_max - t)
        keep = not (hi <= _SOFTMAX_MIN_F32)                    # hi <= -87: exp(d) taken as 0
        h = hi if keep else _SOFTMAX_MIN_F32
        k = np.floor(h * _LOG2E_F32 + _HALF)                   # a whole number in [-126, 0]
        rr = (h - k * _LN2_HI) - k * _LN2_LO + (lo if keep else _ZERO)   # |rr| <= ln 2 / 2
        e[j] = _horner32(_EXP_POLY_F32, rr)
        bits[j] = np.int32((np.int32(k) + 127) << 23) if keep else 0
    for j in range(n):
        e[j] = e[j] * scale[j]                                 # exp(d) = 2^k E(r)
    total = np.float32(row_sum(e))
    for j in range(n):
        probs[r, j] = e[j] / total


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _softmax_row_f32(s, m, unmasked, r, e, bits, probs):
    """Row r into probs[r]: the float32 path when the row has no mask (``unmasked``) and a
    finite maximum, the float64 path otherwise (a mask, an infinite score, a row of -inf).
    Returns True when every masked score is -inf."""
    if unmasked:
        row_max = _row_max_f32(s, r)
        if abs(row_max) < np.inf:
            _softmax_row_unmasked(s, r, row_max, e, bits, probs)
            return False
    return _softmax_row_f64(s, m, r, e, bits, probs)


@njit(parallel=True, fastmath={"contract"}, error_model="numpy", cache=True)
def _softmax_loop(s, mask, unmasked, rows_per_group, probs):
    n_rows, n = s.shape
    n_empty = 0
    for blk in prange((n_rows + _SOFTMAX_BLOCK - 1) // _SOFTMAX_BLOCK):
        e = np.empty(n, dtype=np.float32)
        bits = np.empty(n, dtype=np.int32)
        for r in range(blk * _SOFTMAX_BLOCK, min(n_rows, (blk + 1) * _SOFTMAX_BLOCK)):
            g = r // rows_per_group
            n_empty += _softmax_row_f32(s, mask[g], unmasked[g], r, e, bits, probs)
    return n_empty


@njit(fastmath={"contract"}, error_model="numpy", cache=True, nogil=True)   # nogil: for lanes.py
def _softmax_loop_serial(s, mask, unmasked, rows_per_group, probs):
    e = np.empty(s.shape[1], dtype=np.float32)
    bits = np.empty(s.shape[1], dtype=np.int32)
    n_empty = 0
    for r in range(s.shape[0]):
        g = r // rows_per_group
        n_empty += _softmax_row_f32(s, mask[g], unmasked[g], r, e, bits, probs)
    return n_empty


def softmax_inference(scores, additive_mask=None, out=None):
    """:func:`npcosteff.kernels.softmax` for the inference path: float32 scores get their
    probabilities within :data:`SOFTMAX_MAX_ULP` ulps (module docstring); float64 scores get
    the exact kernel. Same arguments, shapes and errors; `out`, a C-contiguous float32 array
    of the scores' shape, receives the probabilities (float32 only); it may be the scores
    themselves (each row is read whole before its probabilities are written)."""
    if np.asarray(scores).dtype != np.float32:
        if out is not None:
            raise ValueError("softmax_inference: out= is for float32 scores only")
        return fast_softmax.softmax(scores, additive_mask)
    scores, mask = check_softmax_inputs(scores, additive_mask)
    if mask is not None and not mask.any():
        mask = None                          # a mask of zeros adds nothing (NaN counts as a mask)
    s = as_rows(scores)                                        # (N, n)
    if mask is None:
        mask2, rows_per_group = np.zeros((1, s.shape[1])), max(1, s.shape[0])
    else:
        mask2, rows_per_group = mask_groups(mask, scores.shape)
    unmasked = ~np.any(mask2 != 0, axis=1)                     # (G,) mask rows of zeros only (NaN counts as a mask)
    if out is None:
        probs = np.empty_like(s)
    elif out.shape != scores.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"softmax_inference: out must be a C-contiguous float32 array of shape {scores.shape}, "
                         f"got {out.dtype} {out.shape}")
    else:
        probs = out.reshape(s.shape)                           # a view: out is C-contiguous
    loop = _softmax_loop_serial if serial(s.size) else _softmax_loop
    if loop(s, mask2, unmasked, rows_per_group, probs):
        raise ValueError(EMPTY_ROW_MESSAGE)
    return probs.reshape(scores.shape)

