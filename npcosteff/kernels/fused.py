"""Fused loops for the training hot path (Numba), with exactly the arithmetic of the unfused layers.

The layers are written as a chain of readable NumPy steps (``pre += bias``,
``act = gelu(pre)``, ``act *= ffn_mask``...). On the training shapes of MiniLM (4096 rows of
1536 activations per layer) every such step is one more pass over 25 MB of memory, and the
GELU of :mod:`npcosteff.kernels` calls the scalar ``erfc`` of the C library once per element.
The loops below do the same steps in one pass each, row-parallel:

* :func:`bias_gelu`: ``pre += bias; act = gelu(pre) * ffn_mask``;
* :func:`bias_gelu_backward`: ``dpre = gelu'(pre) * (dact * ffn_mask)``, and optionally
  ``act`` again, so that the forward pass need not keep it (it is cheaper to recompute than
  to store: one pass instead of 25 MB per layer held from forward to backward);
* :func:`attention_weights`: ``probs * probs_dropout * head_mask`` in parallel (both
  attention loops also have a serial twin, for little work and for a share of the attention
  core: :func:`~npcosteff.kernels.common.serial`);
* :func:`attention_probs_backward`: the head mask, dropout mask and softmax backward of the
  attention probabilities in one pass per row, in place;
* :func:`scatter_add_rows`: ``table[ids] += rows`` with repeated ids adding up, in the order of
  ``np.add.at`` (so the sums are the same to the last bit), without its per-element overhead;
* :func:`adamw_update`: the optimizer's ~12 NumPy passes over a parameter, its gradient and
  its two moments in one.

Each function has a plain twin of the same name in :mod:`npcosteff.kernels.reference`, the
unfused NumPy steps, which the tests compare it with; the layers reach either through the
switch of :mod:`npcosteff.kernels` (``NPCOSTEFF_KERNELS=reference`` selects the twins).

Every step rounds to the array's dtype where the unfused code does, so the results are
those of the unfused code, with one exception on purpose:

**GELU in float32.** float64 arrays get ``0.5 x erfc(-x / sqrt 2)`` from the C library's
``erfc``, exactly as :func:`npcosteff.kernels.gelu`. float32 arrays get the normal CDF from
a vectorizable float64 approximation with a relative error below 2e-13 (see
:func:`_phi_and_gauss`), i.e. ~1e-6 of a float32 rounding step: the rounded results equal
the kernel's except for the rare value that lies within 2e-13 of a rounding boundary, which
then differs by one float32 ulp (and where the true value is below float32's smallest
subnormal, a zero may carry the other sign). This is what makes GELU cheap: a short
vectorizable polynomial per element instead of a scalar libm call (benchmarks/README.md).

Approximation used for float32 data (a = |x| / sqrt 2, the argument of erfc):

    erfc(a) = exp(-a^2) * erfcx(a),          erfcx(a) = t * Q(t),  t = 1 / (1 + 0.4 a)

Q is a degree-16 polynomial in t over a in [0, 10.5], and exp(-a^2) is
``exp(-a^2 / 128) ** 128`` with exp on [0, 10.5^2 / 128] a degree-12 polynomial; both were
fitted by least squares at 4000 Chebyshev nodes (:func:`fit_coefficients` reproduces them).
Beyond a = 10.5 (x < -14.85) x * Phi(x) is below half the smallest float32 subnormal, so
the CDF is taken as 0; for x > 0, Phi = 1 - erfc(a) / 2 has no cancellation.
"""

from __future__ import annotations

import math

import numpy as np

from numba import njit, prange

from . import reference
from .common import JIT_SERIAL, serial
from .rows import row_dot

from .checks import (check_attention_probs_backward, check_attention_weights, check_bias_gelu,
                     check_bias_gelu_backward, check_scatter_add)

__all__ = ["bias_gelu", "bias_gelu_backward", "attention_weights", "attention_probs_backward", "scatter_add_rows",
           "adamw_update", "fit_coefficients"]

_SQRT_HALF = 1.0 / math.sqrt(2.0)              # 1 / sqrt(2): GELU's argument scale
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # normal density constant

# ---- erfc approximation for float32 data (module docstring) ----
_ERFCX_C = 0.4                                 # t = 1 / (1 + _ERFCX_C * a)
_A_MAX = 10.5                                  # fitted range of a; beyond it Phi(-|x|) is 0 in float32
_T_LO = 1.0 / (1.0 + _ERFCX_C * _A_MAX)        # t at a = _A_MAX (t = 1 at a = 0)
_T_SCALE = 2.0 / (1.0 - _T_LO)                 # maps t in [_T_LO, 1] to u in [-1, 1]
_EXP_SQUARINGS = 7                             # exp(-s) = exp(-s / 128) ** 128
_W_MAX = _A_MAX * _A_MAX / 2.0 ** _EXP_SQUARINGS
_W_SCALE = 2.0 / _W_MAX                        # maps w in [0, _W_MAX] to u in [-1, 1]
# Power-basis coefficients in u (lowest degree first), from fit_coefficients(). All are
# below 1 in magnitude, so Horner's rule on |u| <= 1 loses nothing to cancellation.
_ERFCX_POLY = (0.4907254409742265, 0.32274609047430275, 0.14569014813568465, 0.03989972800267119,
               0.0030287386680973288, -0.0018354533019848082, -0.00039579507043182975,
               0.00012185599215976058, 3.2394863482819184e-05, -1.2517760540624718e-05,
               -1.9982079745243398e-06, 1.5080675064560348e-06, -1.7062296735795316e-08,
               -1.6173513320067996e-07, 3.118539525766865e-08, 1.0919957315698198e-08,
               -4.1451211383048596e-09)
_EXP_POLY = (0.6500772594262842, -0.27996491348339014, 0.06028541349911663, -0.008654253695677074,
             0.0009317690135546655, -8.025588571142347e-05, 5.7605545439984125e-06,
             -3.5440918120415866e-07, 1.907846902792477e-08, -9.128736195996817e-10,
             3.969051378215329e-11, -1.5722783904553696e-12, -6.48375266144006e-14)

_jit = dict(parallel=True, fastmath=False, cache=True)   # fastmath off: no reassociation
# The float32 GELU loops may also fuse a*b+c into one FMA ("contract"): only the approximate
# CDF changes, by ~1e-16; nothing is reordered, so results do not depend on the thread count.
_jit_contract = dict(parallel=True, fastmath={"contract"}, cache=True)


def fit_coefficients(erfcx_degree=16, exp_degree=12, nodes=4000):
    """Recompute ``_ERFCX_POLY`` and ``_EXP_POLY`` (needs SciPy).

    Least-squares Chebyshev fits at ``nodes`` Chebyshev nodes of ``erfcx(a) / t`` against
    u(t) and of ``exp(-w)`` against u(w), converted to the power basis in u.
    """
    from numpy.polynomial import chebyshev
    from scipy.special import erfcx

    u = np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)            # (nodes,) in (-1, 1)
    t = _T_LO + (1.0 - _T_LO) * (u + 1.0) / 2.0
    a = (1.0 / t - 1.0) / _ERFCX_C
    q = chebyshev.cheb2poly(chebyshev.chebfit(u, erfcx(a) / t, erfcx_degree))
    e = chebyshev.cheb2poly(chebyshev.chebfit(u, np.exp(-_W_MAX * (u + 1.0) / 2.0), exp_degree))
    return tuple(float(c) for c in q), tuple(float(c) for c in e)


@njit(fastmath={"contract"}, cache=True, inline="always")
def _horner(c, u):
    """sum_k c[k] u^k."""
    p = c[len(c) - 1]
    for k in range(len(c) - 2, -1, -1):
        p = p * u + c[k]
    return p


@njit(fastmath={"contract"}, cache=True, inline="always")
def _phi_and_gauss(v):
    """For float64 v: (Phi(v), exp(-v^2 / 2)) to ~2e-13 relative, branch-free (vectorizable)."""
    a = abs(v) * _SQRT_HALF                                   # erfc's argument is -v / sqrt 2
    inside = a <= _A_MAX
    a = a if inside else _A_MAX                               # NaN goes to the clamp; v still carries it
    t = 1.0 / (1.0 + _ERFCX_C * a)
    erfcx = t * _horner(_ERFCX_POLY, (t - _T_LO) * _T_SCALE - 1.0)
    w = a * a * (1.0 / 2.0 ** _EXP_SQUARINGS)
    g = _horner(_EXP_POLY, w * _W_SCALE - 1.0)                # exp(-a^2 / 128)
    for _ in range(_EXP_SQUARINGS):
        g = g * g                                             # exp(-a^2)
    half_erfc = 0.5 * erfcx * g                               # erfc(a) / 2
    if not inside:
        half_erfc = 0.0
        g = 0.0
    phi = half_erfc if v < 0.0 else 1.0 - half_erfc           # Phi(-|v|) = erfc(a) / 2
    return phi, g


# ---------------------------------------------------------------------------- GELU forward


@njit(**_jit_contract)
def _bias_gelu_f32(pre, bias, mask, act):      # pre, act (N, F) float32; bias, mask (F,)
    for r in prange(pre.shape[0]):
        for j in range(pre.shape[1]):
            p = pre[r, j] + bias[j]                           # float32 add, as `pre += bias`
            pre[r, j] = p
            v = np.float64(p)
            phi, _ = _phi_and_gauss(v)
            y = np.float32(v * phi)                           # gelu rounded once, as the kernel
            act[r, j] = y * mask[j]                           # then `act *= ffn_mask`


@njit(**_jit)
def _bias_gelu_exact(pre, bias, mask, act):    # the same with the C library's erfc (float64 data)
    for r in prange(pre.shape[0]):
        for j in range(pre.shape[1]):
            p = pre[r, j] + bias[j]
            pre[r, j] = p
            v = np.float64(p)
            y = 0.5 * v * math.erfc(-v * _SQRT_HALF)          # the formula of kernels.fast.gelu
            act[r, j] = y * mask[j]


def bias_gelu(pre, bias, ffn_mask=None, out=None):
    """In one pass: ``pre += bias`` (in place) and ``act = gelu(pre) * ffn_mask``.

    pre (N, F) C-contiguous float32/float64, the output of ``x @ W.T``; bias (F,);
    ffn_mask (F,) or None. Returns act (N, F) (written into `out` when given).
    """
    bias, mask, act = check_bias_gelu(pre, bias, ffn_mask, out)
    (_bias_gelu_f32 if pre.dtype == np.float32 else _bias_gelu_exact)(pre, bias, mask, act)
    return act


# ---------------------------------------------------------------------------- GELU backward


@njit(**_jit_contract)
def _gelu_backward_f32(dact, pre, mask, act, recompute):
    """dact (N, F) overwritten by dpre; act (N, F) gets gelu(pre) * mask when `recompute`."""
    for r in prange(pre.shape[0]):
        for j in range(pre.shape[1]):
            v = np.float64(pre[r, j])
            phi, g = _phi_and_gauss(v)
            dy = dact[r, j] * mask[j]                         # float32, as `dact *= ffn_mask`
            dact[r, j] = np.float64(dy) * (phi + v * (_INV_SQRT_2PI * g))
            if recompute:
                y = np.float32(v * phi)
                act[r, j] = y * mask[j]


@njit(**_jit)
def _gelu_backward_exact(dact, pre, mask, act, recompute):
    for r in prange(pre.shape[0]):
        for j in range(pre.shape[1]):
            v = np.float64(pre[r, j])
            erfc = math.erfc(-v * _SQRT_HALF)
            cdf = 0.5 * erfc                                  # the formulas of kernels.fast
            pdf = _INV_SQRT_2PI * math.exp(-0.5 * v * v)
            dy = dact[r, j] * mask[j]
            dact[r, j] = np.float64(dy) * (cdf + v * pdf)
            if recompute:
                y = 0.5 * v * erfc
                act[r, j] = y * mask[j]


def bias_gelu_backward(dact, pre, ffn_mask=None, act_out=None):
    """Backward of :func:`bias_gelu`: ``dpre = gelu'(pre) * (dact * ffn_mask)``, in place in dact.

    dact, pre (N, F) C-contiguous, one dtype; ffn_mask (F,) or None. When `act_out` (N, F) is
    given, the forward's ``act = gelu(pre) * ffn_mask`` is recomputed into it in the same pass
    (identical to the forward's values). Returns dpre (the dact array).
    """
    mask = check_bias_gelu_backward(dact, pre, ffn_mask, act_out)
    recompute = act_out is not None
    act = act_out if recompute else dact                      # unused when not recomputing
    (_gelu_backward_f32 if pre.dtype == np.float32 else _gelu_backward_exact)(dact, pre, mask, act, recompute)
    return dact


# ---------------------------------------------------------------------------- embeddings


@njit(fastmath=False, cache=True)
def _scatter_add_rows(table, ids, rows):       # table (V, d), ids (N,), rows (N, d)
    for n in range(ids.shape[0]):                             # sequential: repeated ids add in order
        i = ids[n]
        for j in range(rows.shape[1]):
            table[i, j] += rows[n, j]


def scatter_add_rows(table, ids, rows):
    """``table[ids[n]] += rows[n]`` for n = 0, 1, ... in order (``np.add.at`` semantics and sums).

    table (V, d) C-contiguous; ids (N,) integers in [0, V); rows (N, d) of table's dtype.
    """
    ids, rows = check_scatter_add(table, ids, rows)
    _scatter_add_rows(table, ids, rows)


# ---------------------------------------------------------------------------- attention probs backward


@njit(fastmath=False, cache=True, inline="always")
def _probs_backward_row(dw, probs, r, hs, mask, has_mask, extra, has_extra):
    """Row r of dw (R, n) overwritten with its dscores; hs is the row's head's head_mask."""
    n = probs.shape[1]
    for j in range(n):
        g = dw[r, j] * hs                                     # `dprobs *= head_mask`, rounded
        if has_mask:
            g = g * mask[r, j]                                # `dprobs *= probs_dropout`
        if has_extra:
            g = g + extra[r, j]                               # `dprobs += dprobs_extra`
        dw[r, j] = g
    dot = row_dot(dw[r], probs[r])                            # sum_i dp_i p_i in float64 (vectorized)
    for j in range(n):
        dw[r, j] = np.float64(probs[r, j]) * (np.float64(dw[r, j]) - dot)


@njit(**_jit)
def _probs_backward_loop(dw, probs, head_scale, mask, has_mask, extra, has_extra, heads, tokens):
    """dw, probs (R, n) with R = B*H*T rows; head_scale (H,); mask/extra (R, n) when flagged.

    Row r belongs to head (r // tokens) % heads. dw is overwritten with dscores.
    """
    for r in prange(probs.shape[0]):
        _probs_backward_row(dw, probs, r, head_scale[(r // tokens) % heads], mask, has_mask, extra, has_extra)


@njit(**JIT_SERIAL)
def _probs_backward_loop_serial(dw, probs, head_scale, mask, has_mask, extra, has_extra, heads, tokens):
    """:func:`_probs_backward_loop` in the calling thread (little work, or a share of the
    attention core: see common.serial)."""
    for r in range(probs.shape[0]):
        _probs_backward_row(dw, probs, r, head_scale[(r // tokens) % heads], mask, has_mask, extra, has_extra)


def attention_probs_backward(dweights, probs, head_mask=None, probs_dropout=None, dprobs_extra=None):
    """Gradient of the scores from the gradient of the mixing weights, in place in `dweights`.

    The forward computed ``weights = softmax(scores) * probs_dropout * head_mask``; here, in one
    pass per row, ``dprobs = dweights * head_mask * probs_dropout (+ dprobs_extra)`` and
    ``dscores = probs * (dprobs - sum_k dprobs_k probs_k)`` (the softmax backward, float64 inside
    and rounded once, as :func:`npcosteff.kernels.softmax_backward`).

    dweights, probs (B, H, T, T) C-contiguous, one dtype; head_mask (H,) or None;
    probs_dropout, dprobs_extra (B, H, T, T) or None. Returns dscores (the dweights array).
    """
    head_scale, mask, extra = check_attention_probs_backward(dweights, probs, head_mask, probs_dropout,
                                                             dprobs_extra)
    B, H, T, n = probs.shape
    dummy = np.zeros((1, 1), probs.dtype)                     # stands for an absent mask (never read)
    loop = _probs_backward_loop_serial if serial(probs.size) else _probs_backward_loop
    loop(dweights.reshape(-1, n), probs.reshape(-1, n), head_scale,
                         dummy if mask is None else mask.reshape(-1, n), mask is not None,
                         dummy if extra is None else extra.reshape(-1, n), extra is not None, H, T)
    return dweights


@njit(fastmath=False, cache=True, inline="always")
def _mask_probs_row(probs, mask, has_mask, hs, r, out):
    for j in range(probs.shape[1]):
        w = probs[r, j]
        if has_mask:
            w = w * mask[r, j]                                # `weights = probs * probs_dropout`
        out[r, j] = w * hs                                    # then `weights *= head_mask`


@njit(**_jit)
def _mask_probs_loop(probs, mask, has_mask, head_scale, heads, tokens, out):
    for r in prange(probs.shape[0]):
        _mask_probs_row(probs, mask, has_mask, head_scale[(r // tokens) % heads], r, out)


@njit(**JIT_SERIAL)
def _mask_probs_loop_serial(probs, mask, has_mask, head_scale, heads, tokens, out):
    for r in range(probs.shape[0]):
        _mask_probs_row(probs, mask, has_mask, head_scale[(r // tokens) % heads], r, out)


def attention_weights(probs, probs_dropout=None, head_mask=None):
    """``weights = probs * probs_dropout * head_mask`` (B, H, T, T), in parallel over rows.

    Each product is rounded to the dtype as in the unfused NumPy code; a missing mask
    multiplies by 1, which is exact. Returns probs itself when there is nothing to apply.
    """
    if probs_dropout is None and head_mask is None:
        return probs
    head_scale, mask = check_attention_weights(probs, probs_dropout, head_mask)
    B, H, T, n = probs.shape
    out = np.empty_like(probs)
    loop = _mask_probs_loop_serial if serial(probs.size) else _mask_probs_loop
    loop(probs.reshape(-1, n), np.zeros((1, 1), probs.dtype) if mask is None else mask.reshape(-1, n),
                     mask is not None, head_scale, H, T, out.reshape(-1, n))
    return out


# ---------------------------------------------------------------------------- optimizer


@njit(parallel=True, fastmath=False, cache=True)
def _adamw_loop(p, g, m, v, decay_factor, decay, lerp_low, w, w_minus_1, beta2, one_minus_beta2,
                sqrt_bc2, eps, neg_step):
    for i in prange(p.shape[0]):
        pi = p[i] * decay_factor if decay else p[i]           # p *= 1 - lr wd
        gi = g[i]
        if lerp_low:
            mi = m[i] + (gi - m[i]) * w                       # m + w (g - m)
        else:
            mi = gi + (gi - m[i]) * w_minus_1                 # g - (1 - w)(g - m)
        vi = v[i] * beta2 + (gi * gi) * one_minus_beta2       # beta2 v + (1 - beta2) g^2
        denom = np.sqrt(vi) / sqrt_bc2 + eps
        p[i] = pi + (mi / denom) * neg_step
        m[i] = mi
        v[i] = vi


def adamw_update(p, g, m, v, *, lr, weight_decay, beta1, beta2, eps, step, work=None):
    """:func:`npcosteff.kernels.reference.adamw_update` as one compiled pass over p, g, m, v.

    Element by element the same operations in the same order, with the scalars rounded to
    the array dtype first (as NumPy does with Python floats) and no fused multiply-add, so
    both give identical bits. Arrays that are not contiguous, or a gradient of another
    dtype, take the reference's steps.
    """
    if not (p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous and g.dtype == p.dtype
            and g.shape == p.shape == m.shape == v.shape):
        return reference.adamw_update(p, g, m, v, lr=lr, weight_decay=weight_decay, beta1=beta1, beta2=beta2,
                                      eps=eps, step=step, work=work)
    t = p.dtype.type
    _adamw_loop(p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1), v.reshape(-1),
                t(1.0 - lr * weight_decay), weight_decay != 0.0, 1.0 - beta1 < 0.5, t(1.0 - beta1),
                t(1.0 - beta1 - 1.0), t(beta2), t(1.0 - beta2), t((1.0 - beta2 ** step) ** 0.5), t(eps),
                t(-(lr / (1.0 - beta1 ** step))))
