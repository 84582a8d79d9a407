"""Reference kernels in plain NumPy: GELU, masked softmax, LayerNorm, dropout masks.

This is the teaching path. Every kernel is a direct transcription of its formula, and the
Numba kernels in :mod:`npcosteff.kernels.fast` are tested against these functions.

Numerical policy (shared with :mod:`npcosteff.kernels.fast`)
-----------------------------------------------------------
Inputs may be float32 or float64; outputs have the input's dtype. Internally every kernel
computes in float64 and rounds its result to the input dtype once, at the end. For float32
this gives the correctly rounded answer up to one float32 rounding, and it makes the
reductions (LayerNorm mean and variance, softmax sums, the dot products of the backwards)
accurate even for long rows or large offsets. The LayerNorm statistics ``mean`` and
``rstd`` are kept in float64 for every input dtype: they are one number per row, and the
backward needs them exactly to rebuild ``x_hat = (x - mean) * rstd`` when ``x`` carries a
large offset.

Shapes: ``...`` is any number of leading axes; ``n`` is the last (reduced) axis.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy.special import erfc

__all__ = [
    "gelu",
    "gelu_backward",
    "softmax",
    "softmax_backward",
    "layer_norm",
    "layer_norm_backward",
    "add_layer_norm",
    "dropout_mask",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_SQRT_HALF = 1.0 / math.sqrt(2.0)  # 1 / sqrt(2): GELU's argument scale
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # normal density constant


# ---------------------------------------------------------------------------
# Input checks (shared with fast.py so both implementations reject the same inputs
# with the same messages).
# ---------------------------------------------------------------------------


def _float_array(name: str, a) -> np.ndarray:
    """Return ``a`` as an ndarray, requiring a float32 or float64 dtype."""
    a = np.asarray(a)
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    return a


def _same_shape(name: str, a: np.ndarray, ref_name: str, ref: np.ndarray) -> None:
    if a.shape != ref.shape:
        raise ValueError(f"{name} has shape {a.shape} but {ref_name} has shape {ref.shape}")


def _same_dtype(name: str, a: np.ndarray, ref_name: str, ref: np.ndarray) -> None:
    if a.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but {ref_name} has dtype {ref.dtype}")


def _last_axis(name: str, a: np.ndarray) -> int:
    """Length of the reduced (last) axis, which must exist and be non-empty."""
    if a.ndim == 0 or a.shape[-1] == 0:
        raise ValueError(f"{name} needs a non-empty last axis, got shape {a.shape}")
    return a.shape[-1]


def _check_softmax_inputs(scores, additive_mask):
    """Validate softmax inputs; return ``(scores, mask)`` with the mask as float64 or None."""
    scores = _float_array("scores", scores)
    _last_axis("scores", scores)
    if additive_mask is None:
        return scores, None
    mask = np.asarray(additive_mask)
    if mask.dtype == np.bool_ or not np.issubdtype(mask.dtype, np.number) or np.iscomplexobj(mask):
        raise TypeError(
            "additive_mask must be a real additive mask (0 to keep a key, a large negative "
            f"number such as finfo(dtype).min to drop it), got dtype {mask.dtype}"
        )
    try:
        broadcast = np.broadcast_shapes(mask.shape, scores.shape)
    except ValueError:
        broadcast = None
    if broadcast != scores.shape:
        raise ValueError(
            f"additive_mask of shape {mask.shape} does not broadcast to scores of shape "
            f"{scores.shape} (expected e.g. (B, 1, 1, T) for scores (B, H, T, T))"
        )
    return scores, mask.astype(np.float64, copy=False)


_EMPTY_ROW_MESSAGE = (
    "softmax row has every score equal to -inf (all keys masked with -inf); "
    "mask with finfo(dtype).min instead, which gives a uniform row"
)


def _raise_if_empty_rows(row_max: np.ndarray) -> None:
    """A row whose scores are all -inf has no softmax; name the problem instead of NaN."""
    if np.any(np.isneginf(row_max)):
        raise ValueError(_EMPTY_ROW_MESSAGE)


def _check_layer_norm_params(x, gamma, beta, eps):
    x = _float_array("x", x)
    d = _last_axis("x", x)
    gamma = _float_array("gamma", gamma)
    beta = _float_array("beta", beta)
    for name, p in (("gamma", gamma), ("beta", beta)):
        if p.shape != (d,):
            raise ValueError(f"{name} must have shape ({d},) to match x {x.shape}, got {p.shape}")
        _same_dtype(name, p, "x", x)
    if not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return x, gamma, beta, float(eps)


def _check_layer_norm_backward(dy, x, gamma, mean, rstd):
    dy = _float_array("dy", dy)
    x = _float_array("x", x)
    gamma = _float_array("gamma", gamma)
    _same_shape("dy", dy, "x", x)
    _same_dtype("dy", dy, "x", x)
    d = _last_axis("x", x)
    if gamma.shape != (d,):
        raise ValueError(f"gamma must have shape ({d},) to match x {x.shape}, got {gamma.shape}")
    _same_dtype("gamma", gamma, "x", x)
    mean = _float_array("mean", mean)
    rstd = _float_array("rstd", rstd)
    for name, s in (("mean", mean), ("rstd", rstd)):
        if s.shape != x.shape[:-1]:
            raise ValueError(f"{name} must have shape {x.shape[:-1]} (x without its last axis), got {s.shape}")
    return dy, x, gamma, mean, rstd


def _check_dropout_args(rng, shape, p, dtype):
    """Validate dropout arguments; return ``(shape tuple, p float, dtype)``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    shape = tuple(shape)
    if not all(isinstance(s, numbers.Integral) and s >= 0 for s in shape):
        raise ValueError(f"shape must be a tuple of non-negative integers, got {shape}")
    if not isinstance(p, numbers.Real) or not (0.0 <= p < 1.0):
        raise ValueError(f"dropout probability p must satisfy 0 <= p < 1, got {p!r}")
    dtype = np.dtype(dtype)
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dropout mask dtype must be float32 or float64, got {dtype}")
    return tuple(int(s) for s in shape), float(p), dtype


# ---------------------------------------------------------------------------
# GELU
# ---------------------------------------------------------------------------


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, erf form: ``gelu(x) = x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))``.

    Evaluated as ``0.5 * x * erfc(-x / sqrt(2))``: the same function
    (``1 + erf(z) = erfc(-z)``) without the cancellation of ``1 + erf`` for x << 0,
    where GELU is tiny and the erf form loses all its relative accuracy.

    x: any shape, float32 or float64. Returns y with x's shape and dtype.
    """
    x = _float_array("x", x)
    x64 = x.astype(np.float64, copy=False)  # (...) compute in float64, round once
    y = 0.5 * x64 * erfc(-x64 * _SQRT_HALF)  # (...)
    return np.asarray(y).astype(x.dtype, copy=False)  # asarray: a 0-d input stays an array


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gradient of :func:`gelu`: ``dx = dy * (Phi(x) + x * phi(x))``.

    ``Phi`` is the standard normal CDF and ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)`` its
    density (the derivative of ``x * Phi(x)`` by the product rule).

    dy, x: same shape and dtype. Returns dx with that shape and dtype.
    """
    dy = _float_array("dy", dy)
    x = _float_array("x", x)
    _same_shape("dy", dy, "x", x)
    _same_dtype("dy", dy, "x", x)
    x64 = x.astype(np.float64, copy=False)  # (...)
    cdf = 0.5 * erfc(-x64 * _SQRT_HALF)  # Phi(x)
    with np.errstate(over="ignore"):  # x * x = inf for |x| > 1e154: exp(-inf) = 0 is the limit
        pdf = _INV_SQRT_2PI * np.exp(-0.5 * x64 * x64)  # phi(x)
    dx = dy.astype(np.float64, copy=False) * (cdf + x64 * pdf)  # (...)
    return np.asarray(dx).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------
# Softmax over the last axis, with an additive mask
# ---------------------------------------------------------------------------


def softmax(scores: np.ndarray, additive_mask: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis: ``p_j = exp(s_j - max_k s_k) / sum_k exp(s_k - max_k s_k)``.

    ``s = scores + additive_mask``. Subtracting the row maximum changes nothing
    mathematically (it cancels between numerator and denominator) but keeps every exponent
    <= 0, so nothing overflows.

    scores: (..., n), typically (B, H, T, T), float32 or float64.
    additive_mask: None or any real array broadcastable to scores, typically (B, 1, 1, T)
        holding 0 for kept keys and ``finfo(dtype).min`` for padding. A row whose keys are
        all masked with ``finfo.min`` comes out uniform (as in Hugging Face BERT); a row of
        all ``-inf`` has no softmax and raises ValueError.
    Returns probs with scores' shape and dtype.
    """
    scores, mask = _check_softmax_inputs(scores, additive_mask)
    s = scores.astype(np.float64, copy=False)  # (..., n)
    if mask is not None:
        s = s + mask  # (..., n) broadcast, e.g. (B, 1, 1, T) over (B, H, T, T)
    row_max = s.max(axis=-1, keepdims=True)  # (..., 1)
    _raise_if_empty_rows(row_max)
    e = np.exp(s - row_max)  # (..., n), every exponent <= 0
    probs = e / e.sum(axis=-1, keepdims=True)  # (..., n)
    return probs.astype(scores.dtype, copy=False)


def softmax_backward(dprobs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Gradient of :func:`softmax` with respect to the (masked) scores.

    The softmax Jacobian is ``dp_i / ds_j = p_i (delta_ij - p_j)``, so
    ``ds_j = sum_i dp_i p_i (delta_ij - p_j) = p_j (dp_j - sum_i dp_i p_i)``.
    The additive mask is a constant, so this is also the gradient of the raw scores.

    dprobs, probs: (..., n), same shape and dtype. Returns dscores with that shape and dtype.
    """
    dprobs = _float_array("dprobs", dprobs)
    probs = _float_array("probs", probs)
    _same_shape("dprobs", dprobs, "probs", probs)
    _same_dtype("dprobs", dprobs, "probs", probs)
    _last_axis("probs", probs)
    dp = dprobs.astype(np.float64, copy=False)  # (..., n)
    p = probs.astype(np.float64, copy=False)  # (..., n)
    dot = (dp * p).sum(axis=-1, keepdims=True)  # (..., 1) sum_i dp_i p_i
    ds = p * (dp - dot)  # (..., n)
    return ds.astype(probs.dtype, copy=False)


# ---------------------------------------------------------------------------
# LayerNorm over the last axis
# ---------------------------------------------------------------------------


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float):
    """LayerNorm over the last axis: ``y = (x - mean) * rstd * gamma + beta``.

    ``mean = mean_j x_j``, ``var = mean_j (x_j - mean)^2`` (biased, as in torch) and
    ``rstd = 1 / sqrt(var + eps)``. The variance is computed from the centred values
    (two passes), which stays accurate when x has a large offset.

    x: (..., d); gamma, beta: (d,), all of one dtype; eps >= 0.
    Returns ``(y, mean, rstd)``: y (..., d) in x's dtype; mean, rstd (...) in float64
    (see the module docstring).
    """
    x, gamma, beta, eps = _check_layer_norm_params(x, gamma, beta, eps)
    x64 = x.astype(np.float64, copy=False)  # (..., d)
    mean = x64.mean(axis=-1)  # (...)
    xc = x64 - mean[..., None]  # (..., d) centred
    var = (xc * xc).mean(axis=-1)  # (...) biased variance
    rstd = 1.0 / np.sqrt(var + eps)  # (...)
    y = xc * rstd[..., None] * gamma.astype(np.float64) + beta.astype(np.float64)  # (..., d)
    return y.astype(x.dtype, copy=False), np.asarray(mean), np.asarray(rstd)


def layer_norm_backward(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray, rstd: np.ndarray):
    """Gradients of :func:`layer_norm`.

    With ``x_hat = (x - mean) * rstd`` and ``g = dy * gamma`` (the gradient reaching
    x_hat), differentiating through mean and rstd gives, per row of length d,

        dx = rstd * (g - mean_j(g) - x_hat * mean_j(g * x_hat))

    and the parameter gradients are sums over every row (all leading axes):
    ``dgamma = sum dy * x_hat``, ``dbeta = sum dy``.

    dy, x: (..., d); gamma: (d,); mean, rstd: (...), as returned by :func:`layer_norm`.
    Returns ``(dx, dgamma, dbeta)``: dx (..., d), dgamma and dbeta (d,), in x's dtype.
    """
    dy, x, gamma, mean, rstd = _check_layer_norm_backward(dy, x, gamma, mean, rstd)
    d = x.shape[-1]
    dy64 = dy.astype(np.float64, copy=False).reshape(-1, d)  # (N, d), N = rows
    x64 = x.astype(np.float64, copy=False).reshape(-1, d)  # (N, d)
    mean64 = mean.astype(np.float64, copy=False).reshape(-1, 1)  # (N, 1)
    rstd64 = rstd.astype(np.float64, copy=False).reshape(-1, 1)  # (N, 1)
    x_hat = (x64 - mean64) * rstd64  # (N, d)
    g = dy64 * gamma.astype(np.float64)  # (N, d)
    dx = rstd64 * (g - g.mean(axis=1, keepdims=True) - x_hat * (g * x_hat).mean(axis=1, keepdims=True))
    dgamma = (dy64 * x_hat).sum(axis=0)  # (d,)
    dbeta = dy64.sum(axis=0)  # (d,)
    dtype = x.dtype
    return dx.reshape(x.shape).astype(dtype, copy=False), dgamma.astype(dtype), dbeta.astype(dtype)


def add_layer_norm(x: np.ndarray, residual: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float):
    """Residual add then LayerNorm: ``s = x + residual``, ``y = layer_norm(s)``.

    BERT's post-LayerNorm sublayer output. ``s`` is rounded to the input dtype before the
    LayerNorm, exactly as the unfused ``layer_norm(x + residual, ...)`` does, and it is
    returned because the backward needs it: ``layer_norm_backward(dy, s, gamma, mean, rstd)``
    gives ds, which is the gradient of both x and residual.

    x, residual: (..., d), same shape and dtype; gamma, beta: (d,).
    Returns ``(y, s, mean, rstd)``: y and s (..., d) in x's dtype; mean, rstd (...) float64.
    """
    x = _float_array("x", x)
    residual = _float_array("residual", residual)
    _same_shape("residual", residual, "x", x)
    _same_dtype("residual", residual, "x", x)
    s = x + residual  # (..., d) in the input dtype
    y, mean, rstd = layer_norm(s, gamma, beta, eps)
    return y, s, mean, rstd


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------


def dropout_mask(rng: np.random.Generator, shape, p: float, dtype) -> np.ndarray:
    """Inverted-dropout multiplier: 0 with probability p, else ``1 / (1 - p)``.

    A uniform draw ``u ~ U[0, 1)`` per element (``rng.random(shape, dtype)``) is kept when
    ``u >= p``, which happens with probability ``1 - p``. Scaling the kept elements by
    ``1 / (1 - p)`` keeps the expected value of ``mask * h`` equal to ``h``. With ``p = 0``
    the mask is all ones and no random numbers are drawn.

    rng: numpy Generator; shape: output shape; p: 0 <= p < 1; dtype: float32 or float64.
    Returns the mask (shape) in dtype.
    """
    shape, p, dtype = _check_dropout_args(rng, shape, p, dtype)
    if p == 0.0:
        return np.ones(shape, dtype=dtype)
    scale = dtype.type(1.0 / (1.0 - p))  # the kept value, rounded once to dtype
    threshold = dtype.type(p)  # compare in dtype, as the draws are in dtype
    keep = rng.random(shape, dtype=dtype) >= threshold  # (shape) True with probability 1 - p
    return keep.astype(dtype) * scale
