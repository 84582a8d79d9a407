"""Numba kernels with the same signatures and results as :mod:`npcosteff.kernels.reference`.

Each public function validates its inputs with the checks the reference uses (:mod:`.checks`) (so both reject the
same inputs with the same messages), views the data as a contiguous 2-D array of rows
``(N, n)`` (leading axes flattened, the reduced axis last), and runs a compiled loop that
is parallel over rows (``prange``) and reads each row once or twice while it is in cache,
with no full-size temporaries. LayerNorm, the softmax and the attention weights and their
backward also have a serial twin that runs the same row code in the calling thread, chosen
for inputs of at most :data:`~npcosteff.kernels.common.SERIAL_MAX_ELEMENTS` (one sample at
inference) or inside a lane, where waking the worker threads costs more than the loop
(:func:`~npcosteff.kernels.common.serial`).

This module holds GELU, LayerNorm and the dropout mask, and gathers the fast implementation
of every kernel under the reference's names: the softmax from :mod:`.fast_softmax`, the
fused steps and AdamW from :mod:`.fused`, the inference path's float32 GELU and softmax from
:mod:`.inference` and the attention core by chunks of samples from :mod:`.chunked_attention`.

Numerical policy: the same as the reference. Every value is computed in float64 and
rounded once to the input dtype when stored; LayerNorm's ``mean`` and ``rstd`` are float64.
The only differences from the reference are the order of the float64 summations (four
interleaved accumulators here, pairwise summation in NumPy), the softmax's exp (a
vectorizable one, :mod:`.fast_softmax`) and the libm behind ``erfc``; all are at the float64
rounding level, so for float32 the two implementations agree to one float32 rounding (in
practice they are bit-identical) and for float64 to about 1e-15 relative.

Compiled code is cached on disk (``cache=True``), so the compile cost is paid once per
machine rather than once per process. ``fastmath`` stays off: it would let the compiler
reorder sums and change rounding, so results would drift from the reference by more than
the summation order documented here.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from . import checks, draws
from . import reference as _ref
from .chunked_attention import attention_core, attention_core_backward  # noqa: F401  (by chunks of samples)
from .common import JIT_PARALLEL, JIT_SERIAL, as_rows, serial
from .fast_softmax import softmax, softmax_backward  # noqa: F401
from .fused import (adamw_update, attention_probs_backward, attention_weights, bias_gelu,  # noqa: F401
                    bias_gelu_backward, scatter_add_rows)
from .inference import bias_gelu_inference, softmax_inference  # noqa: F401  (float32 GELU and softmax)
from .rows import row_sq_dev, row_sum

__all__ = list(_ref.__all__)

_SQRT_HALF = 1.0 / math.sqrt(2.0)  # 1 / sqrt(2)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # normal density constant


# ---------------------------------------------------------------------------
# Compiled loops. Arguments are contiguous arrays; outputs are preallocated.
# ---------------------------------------------------------------------------


@njit(**JIT_PARALLEL)
def _gelu_loop(x, y):  # x, y (N,)
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        y[i] = 0.5 * v * math.erfc(-v * _SQRT_HALF)  # 0.5 x erfc(-x/sqrt 2) = x Phi(x)


@njit(**JIT_PARALLEL)
def _gelu_backward_loop(dy, x, dx):  # dy, x, dx (N,)
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        cdf = 0.5 * math.erfc(-v * _SQRT_HALF)  # Phi(x)
        pdf = _INV_SQRT_2PI * math.exp(-0.5 * v * v)  # phi(x)
        dx[i] = np.float64(dy[i]) * (cdf + v * pdf)


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
    mean[r], rstd[r] = _normalize_row(row, gamma, beta, eps, y, r)


@njit(fastmath=False, cache=True, inline="always")
def _normalize_row(row, gamma, beta, eps, y, r):
    """y[r] = LayerNorm(row) (row (d,), read whole before y[r] is written where they are the
    same memory); returns the row's float64 (mean, rstd)."""
    d = row.shape[0]
    mu = row_sum(row) / d  # mean
    var = row_sq_dev(row, mu) / d  # biased variance, from centred values (two passes)
    rs = 1.0 / math.sqrt(var + eps)
    for j in range(d):
        y[r, j] = (np.float64(row[j]) - mu) * rs * np.float64(gamma[j]) + np.float64(beta[j])
    return mu, rs


@njit(**JIT_PARALLEL)
def _layer_norm_loop(x, residual, has_residual, gamma, beta, eps, y, s, mean, rstd):
    """x, residual, y, s (N, d); gamma, beta (d,); mean, rstd (N,) float64.

    With has_residual, the normalized input is s = x + residual (rounded to x's dtype and
    stored in s); otherwise it is x itself and s is not touched.
    """
    for r in prange(x.shape[0]):
        _layer_norm_row(x, residual, has_residual, gamma, beta, eps, y, s, mean, rstd, r)


@njit(**JIT_SERIAL)
def _layer_norm_loop_serial(x, residual, has_residual, gamma, beta, eps, y, s, mean, rstd):
    """:func:`_layer_norm_loop` in the calling thread (little work: see common.SERIAL_MAX_ELEMENTS)."""
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


# ---------------------------------------------------------------------------
# Public API (same signatures, checks and results as the reference)
# ---------------------------------------------------------------------------


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, erf form ``0.5 x (1 + erf(x / sqrt 2))``, evaluated as ``0.5 x erfc(-x / sqrt 2)``.

    x: any shape, float32 or float64. Returns y with x's shape and dtype.
    """
    x = checks.float_array("x", x)
    flat = np.ascontiguousarray(x).reshape(-1)  # (N,)
    y = np.empty_like(flat)
    _gelu_loop(flat, y)
    return y.reshape(x.shape)


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gradient of :func:`gelu`: ``dx = dy * (Phi(x) + x phi(x))``.

    dy, x: same shape and dtype. Returns dx with that shape and dtype.
    """
    dy = checks.float_array("dy", dy)
    x = checks.float_array("x", x)
    checks.same_shape("dy", dy, "x", x)
    checks.same_dtype("dy", dy, "x", x)
    flat_x = np.ascontiguousarray(x).reshape(-1)  # (N,)
    dx = np.empty_like(flat_x)
    _gelu_backward_loop(np.ascontiguousarray(dy).reshape(-1), flat_x, dx)
    return dx.reshape(x.shape)


@njit(fastmath=False, cache=True, inline="always")
def _bias_add_layer_norm_row(x, bias, residual, gamma, beta, eps, y, r):
    """Row r of :func:`bias_add_layer_norm_inference`: y[r] = layer_norm((x[r] + bias) + residual[r]).
    y may be x itself (each x[r, j] is read before y[r, j] is written)."""
    for j in range(x.shape[1]):
        y[r, j] = (x[r, j] + bias[j]) + residual[r, j]   # each sum rounded to the dtype, as the unfused steps
    _normalize_row(y[r], gamma, beta, eps, y, r)          # the sums and formula of _layer_norm_row


@njit(**JIT_PARALLEL)
def _bias_add_layer_norm_loop(x, bias, residual, gamma, beta, eps, y):   # x, residual, y (N, d)
    for r in prange(x.shape[0]):
        _bias_add_layer_norm_row(x, bias, residual, gamma, beta, eps, y, r)


@njit(**JIT_SERIAL)
def _bias_add_layer_norm_loop_serial(x, bias, residual, gamma, beta, eps, y):
    for r in range(x.shape[0]):
        _bias_add_layer_norm_row(x, bias, residual, gamma, beta, eps, y, r)


def bias_add_layer_norm_inference(x, bias, residual, gamma, beta, eps, out=None):
    """``y = layer_norm((x + bias) + residual)`` in one pass over the rows, keeping nothing for
    a backward pass (the end of a block at inference; see the reference twin). The rows come
    out as :func:`add_layer_norm` of ``x + bias`` gives them: the same sums in the same order."""
    x, bias, residual, gamma, beta, eps = checks.check_bias_add_layer_norm(x, bias, residual, gamma, beta, eps, out)
    x2, r2 = as_rows(x), as_rows(residual)                                          # (N, d)
    in_place = out is not None and out.flags.c_contiguous     # the loop can write into out's rows
    y = out.reshape(x2.shape) if in_place else np.empty_like(x2)                     # (N, d)
    loop = _bias_add_layer_norm_loop_serial if serial(x2.size) else _bias_add_layer_norm_loop
    loop(x2, bias, r2, gamma, beta, eps, y)
    if out is None:
        return y.reshape(x.shape)
    if not in_place:                                           # a strided out: copy the rows in
        out[...] = y.reshape(x.shape)
    return out


def _layer_norm_loop_for(x2):
    """The LayerNorm loop for rows x2 (N, d): serial for little work, else parallel."""
    return _layer_norm_loop_serial if serial(x2.size) else _layer_norm_loop


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float):
    """LayerNorm over the last axis: ``y = (x - mean) * rstd * gamma + beta``.

    x: (..., d); gamma, beta: (d,), one dtype; eps >= 0.
    Returns ``(y, mean, rstd)``: y (..., d) in x's dtype; mean, rstd (...) float64.
    """
    x, gamma, beta, eps = checks.check_layer_norm_params(x, gamma, beta, eps)
    x2 = as_rows(x)  # (N, d)
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
    x = checks.float_array("x", x)
    residual = checks.float_array("residual", residual)
    checks.same_shape("residual", residual, "x", x)
    checks.same_dtype("residual", residual, "x", x)
    x, gamma, beta, eps = checks.check_layer_norm_params(x, gamma, beta, eps)
    x2 = as_rows(x)  # (N, d)
    y = np.empty_like(x2)
    s = np.empty_like(x2)
    mean = np.empty(x2.shape[0])  # (N,) float64
    rstd = np.empty(x2.shape[0])  # (N,) float64
    _layer_norm_loop_for(x2)(x2, as_rows(residual), True, gamma, beta, eps, y, s, mean, rstd)
    lead = x.shape[:-1]
    return y.reshape(x.shape), s.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)


def layer_norm_backward(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray, rstd: np.ndarray):
    """Gradients of :func:`layer_norm`: ``dx = rstd (g - mean(g) - x_hat mean(g x_hat))``,
    ``g = dy gamma``; ``dgamma = sum dy x_hat`` and ``dbeta = sum dy`` over all rows.

    Returns ``(dx, dgamma, dbeta)`` in x's dtype: dx (..., d), dgamma and dbeta (d,).
    """
    dy, x, gamma, mean, rstd = checks.check_layer_norm_backward(dy, x, gamma, mean, rstd)
    x2 = as_rows(x)  # (N, d)
    n_rows, d = x2.shape
    n_chunks = max(1, min(n_rows, numba.get_num_threads()))
    dgamma_parts = np.zeros((n_chunks, d))  # float64 partial sums, one row per chunk
    dbeta_parts = np.zeros((n_chunks, d))
    dx = np.empty_like(x2)
    _layer_norm_backward_loop(
        as_rows(dy),
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

    The reference's mask from the same draws (those of ``rng.random(shape, dtype)``), made from
    the generator's raw bits by the kernels' threads (:func:`.draws.dropout_multiplier`), so the
    same generator state gives the same mask and the same state afterwards.
    """
    shape, p, dtype = checks.check_dropout_args(rng, shape, p, dtype)
    if p == 0.0:
        return np.ones(shape, dtype=dtype)
    return draws.dropout_multiplier(rng, shape, p, dtype, numba.get_num_threads())
