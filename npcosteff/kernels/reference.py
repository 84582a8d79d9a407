"""Reference kernels in plain NumPy: GELU, masked softmax, LayerNorm, dropout masks, the
fused steps of the layers (bias + GELU, the attention weights and their backward, the
attention core of the heads, the embedding scatter-add) and the AdamW update.

This is the teaching path. Every kernel is a direct transcription of its formula, and the
compiled kernels (:mod:`npcosteff.kernels.fast`, :mod:`npcosteff.kernels.fused`, the
attention core by chunks of samples, :mod:`npcosteff.kernels.chunked_attention`) are tested
against these functions.

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

import numpy as np
from scipy.special import erfc

from .checks import (check_attention_core, check_attention_probs_backward, check_attention_weights,
                     check_bias_add_layer_norm, check_bias_gelu, check_bias_gelu_backward, check_dropout_args,
                     check_layer_norm_backward, check_layer_norm_params, check_scatter_add, check_softmax_inputs,
                     float_array, last_axis, raise_if_empty_rows, same_dtype, same_shape)

__all__ = [
    "gelu",
    "gelu_backward",
    "softmax",
    "softmax_backward",
    "softmax_inference",
    "layer_norm",
    "layer_norm_backward",
    "add_layer_norm",
    "bias_add_layer_norm_inference",
    "dropout_mask",
    "bias_gelu",
    "bias_gelu_backward",
    "bias_gelu_inference",
    "attention_weights",
    "attention_probs_backward",
    "attention_core",
    "attention_core_backward",
    "scatter_add_rows",
    "adamw_update",
]

_SQRT_HALF = 1.0 / math.sqrt(2.0)  # 1 / sqrt(2): GELU's argument scale
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # normal density constant


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
    x = float_array("x", x)
    x64 = x.astype(np.float64, copy=False)  # (...) compute in float64, round once
    y = 0.5 * x64 * erfc(-x64 * _SQRT_HALF)  # (...)
    return np.asarray(y).astype(x.dtype, copy=False)  # asarray: a 0-d input stays an array


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gradient of :func:`gelu`: ``dx = dy * (Phi(x) + x * phi(x))``.

    ``Phi`` is the standard normal CDF and ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)`` its
    density (the derivative of ``x * Phi(x)`` by the product rule).

    dy, x: same shape and dtype. Returns dx with that shape and dtype.
    """
    dy = float_array("dy", dy)
    x = float_array("x", x)
    same_shape("dy", dy, "x", x)
    same_dtype("dy", dy, "x", x)
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
    scores, mask = check_softmax_inputs(scores, additive_mask)
    s = scores.astype(np.float64, copy=False)  # (..., n)
    if mask is not None:
        s = s + mask  # (..., n) broadcast, e.g. (B, 1, 1, T) over (B, H, T, T)
    row_max = s.max(axis=-1, keepdims=True)  # (..., 1)
    raise_if_empty_rows(row_max)
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
    dprobs = float_array("dprobs", dprobs)
    probs = float_array("probs", probs)
    same_shape("dprobs", dprobs, "probs", probs)
    same_dtype("dprobs", dprobs, "probs", probs)
    last_axis("probs", probs)
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
    x, gamma, beta, eps = check_layer_norm_params(x, gamma, beta, eps)
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
    dy, x, gamma, mean, rstd = check_layer_norm_backward(dy, x, gamma, mean, rstd)
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
    x = float_array("x", x)
    residual = float_array("residual", residual)
    same_shape("residual", residual, "x", x)
    same_dtype("residual", residual, "x", x)
    s = x + residual  # (..., d) in the input dtype
    y, mean, rstd = layer_norm(s, gamma, beta, eps)
    return y, s, mean, rstd


def bias_add_layer_norm_inference(x, bias, residual, gamma, beta, eps, out=None):
    """The end of a block at inference: ``y = layer_norm((x + bias) + residual)``.

    x is a block's output dense before its bias, residual the block's input; each sum is
    rounded to the input dtype, as the two steps ``x += bias`` then :func:`add_layer_norm` do.
    Only y is returned: nothing will backpropagate (no s, mean or rstd kept). x, residual
    (..., d) of one dtype; bias, gamma, beta (d,); `out`, an array of x's shape and dtype
    (x itself allowed, not the residual), receives y. Returns y.
    """
    x, bias, residual, gamma, beta, eps = check_bias_add_layer_norm(x, bias, residual, gamma, beta, eps, out)
    y = add_layer_norm(x + bias, residual, gamma, beta, eps)[0]   # (..., d); x + bias rounded to the dtype
    if out is None:
        return y
    out[...] = y
    return out


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
    shape, p, dtype = check_dropout_args(rng, shape, p, dtype)
    if p == 0.0:
        return np.ones(shape, dtype=dtype)
    scale = dtype.type(1.0 / (1.0 - p))  # the kept value, rounded once to dtype
    threshold = dtype.type(p)  # compare in dtype, as the draws are in dtype
    keep = rng.random(shape, dtype=dtype) >= threshold  # (shape) True with probability 1 - p
    return keep.astype(dtype) * scale


# ---------------------------------------------------------------------------
# Steps of the layers (npcosteff.nn), each a few of the kernels above in a row
# ---------------------------------------------------------------------------


def bias_gelu(pre, bias, ffn_mask=None, out=None):
    """The FFN's activation: ``pre += bias`` (in place), then ``act = gelu(pre) * ffn_mask``.

    pre (N, F) C-contiguous, the output of ``x @ W.T``; bias (F,); ffn_mask (F,) or None.
    Returns act (N, F) (written into `out` when given).
    """
    _, mask, act = check_bias_gelu(pre, bias, ffn_mask, out)
    pre += bias                                  # (N, F) kept for the backward pass
    act[...] = gelu(pre)
    if ffn_mask is not None:
        act *= mask                              # switched-off neurons give 0
    return act


def bias_gelu_backward(dact, pre, ffn_mask=None, act_out=None):
    """Backward of :func:`bias_gelu`: ``dpre = gelu'(pre) * (dact * ffn_mask)``, in place in dact.

    dact, pre (N, F) C-contiguous, one dtype. When `act_out` (N, F) is given, the forward's
    ``act = gelu(pre) * ffn_mask`` is recomputed into it (a layer that did not keep `act`
    needs it for its weight gradient). Returns dpre (the dact array).
    """
    mask = check_bias_gelu_backward(dact, pre, ffn_mask, act_out)
    if ffn_mask is not None:
        dact *= mask
    dact[...] = gelu_backward(dact, pre)
    if act_out is not None:
        act_out[...] = gelu(pre)
        if ffn_mask is not None:
            act_out *= mask
    return dact


def bias_gelu_inference(pre, bias, ffn_mask=None, out=None):
    """:func:`bias_gelu` on the inference path (a forward pass that keeps no cache).

    The plain twin of the float32 kernel in :mod:`npcosteff.kernels.inference` is the exact
    computation itself: ``pre += bias``, ``act = gelu(pre) * ffn_mask``.
    """
    return bias_gelu(pre, bias, ffn_mask, out)


def softmax_inference(scores, additive_mask=None, out=None):
    """:func:`softmax` on the inference path (a forward pass that keeps no cache); the plain
    twin of the float32 kernel in :mod:`npcosteff.kernels.inference` is the exact softmax.
    `out` (float32 scores only, C-contiguous, the scores' shape) receives the probabilities; it
    may be the scores themselves."""
    probs = softmax(scores, additive_mask)
    if out is None:
        return probs
    if probs.dtype != np.float32 or out.shape != probs.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"softmax_inference: out must be a C-contiguous float32 array of shape {probs.shape} "
                         f"for float32 scores, got {out.dtype} {out.shape}")
    out[...] = probs
    return out


def attention_weights(probs, probs_dropout=None, head_mask=None):
    """The weights that mix the values: ``probs * probs_dropout * head_mask`` (B, H, T, T).

    probs (B, H, T, T); probs_dropout (B, H, T, T) or None; head_mask (H,) or None. Returns
    probs itself when there is nothing to apply, else a new array.
    """
    if probs_dropout is None and head_mask is None:
        return probs
    head_scale, mask = check_attention_weights(probs, probs_dropout, head_mask)
    weights = probs * mask if mask is not None else probs.copy()
    if head_mask is not None:
        weights *= head_scale.reshape(1, -1, 1, 1)               # (1, H, 1, 1) over heads
    return weights


def attention_probs_backward(dweights, probs, head_mask=None, probs_dropout=None, dprobs_extra=None):
    """Gradient of the attention scores from that of the mixing weights, in place in dweights.

    The forward was ``weights = softmax(scores) * probs_dropout * head_mask``, so
    ``dprobs = dweights * head_mask * probs_dropout (+ dprobs_extra)`` and then the softmax
    backward ``dscores = probs * (dprobs - sum_k dprobs_k probs_k)``. dprobs_extra is a
    gradient put on the probabilities themselves (attention distillation).

    dweights, probs (B, H, T, T), one dtype. Returns dscores (the dweights array).
    """
    head_scale, mask, extra = check_attention_probs_backward(dweights, probs, head_mask, probs_dropout,
                                                             dprobs_extra)
    if head_mask is not None:
        dweights *= head_scale.reshape(1, -1, 1, 1)
    if mask is not None:
        dweights *= mask
    if extra is not None:
        dweights += extra
    dweights[...] = softmax_backward(dweights, probs)
    return dweights


def attention_core(q, k, v, additive_mask=None, probs_dropout=None, head_mask=None, inference=False):
    """The heads' attention, from queries, keys and values to the context, step by step:

        scores  = q k^T + additive_mask                     (B, H, T, T)   q already / sqrt(d_h)
        probs   = softmax(scores)                           (B, H, T, T)
        weights = probs * probs_dropout * head_mask         (B, H, T, T)
        context = weights v                                 (B, H, T, d_h)

    q, k, v (B, H, T, d_h), one float dtype (views such as the heads of a (B*T, H*d_h) array
    are fine); additive_mask broadcastable to the scores, e.g. (B, 1, 1, T), or None;
    probs_dropout (B, H, T, T) multiplier or None; head_mask (H,) or None. With
    ``inference=True`` the softmax is :func:`softmax_inference` (nothing backpropagates).
    Returns (context (B, H, T, d_h), probs (B, H, T, T)); the backward needs probs.
    """
    check_attention_core(q, k, v, additive_mask, probs_dropout, head_mask)
    scores = np.matmul(q, k.transpose(0, 1, 3, 2))                     # (B, H, T, T): B * H products
    probs = (softmax_inference if inference else softmax)(scores, additive_mask)
    weights = attention_weights(probs, probs_dropout, head_mask)       # (B, H, T, T)
    context = np.matmul(weights, v)                                    # (B, H, T, d_h)
    return context, probs


def attention_core_backward(dcontext, q, k, v, probs, probs_dropout=None, head_mask=None, dprobs_extra=None):
    """Gradients of :func:`attention_core` from that of its context, step by step:

        weights  = probs * probs_dropout * head_mask        (B, H, T, T)   recomputed, not kept
        dweights = dcontext v^T,   dv = weights^T dcontext
        dscores  = softmax backward of dweights * head_mask * probs_dropout (+ dprobs_extra)
        dq = dscores k,            dk = dscores^T q

    dcontext, q, k, v (B, H, T, d_h); probs (B, H, T, T) C-contiguous, the forward's;
    probs_dropout, head_mask as in the forward; dprobs_extra (B, H, T, T), a gradient put on
    the probabilities themselves (attention distillation), or None.
    Returns (dq, dk, dv), each (B, H, T, d_h); dq is the gradient of the scaled queries.
    """
    check_attention_core(q, k, v, None, probs_dropout, head_mask, dcontext=dcontext, probs=probs,
                         dprobs_extra=dprobs_extra)
    weights = attention_weights(probs, probs_dropout, head_mask)       # as the forward computed them
    dweights = np.matmul(dcontext, v.transpose(0, 1, 3, 2))            # (B, H, T, T)
    dv = np.matmul(weights.transpose(0, 1, 3, 2), dcontext)            # (B, H, T, d_h)
    dscores = attention_probs_backward(dweights, probs, head_mask, probs_dropout, dprobs_extra)
    dq = np.matmul(dscores, k)                                         # (B, H, T, d_h)
    dk = np.matmul(dscores.transpose(0, 1, 3, 2), q)                   # (B, H, T, d_h)
    return dq, dk, dv


def scatter_add_rows(table, ids, rows):
    """``table[ids[n]] += rows[n]`` for every n, repeated ids adding up (the word-embedding
    gradient: one row per token). table (V, d); ids (N,) in [0, V); rows (N, d).

    A fancy ``table[ids] += rows`` would keep only one of the rows of a repeated id;
    ``np.add.at`` adds each of them, in order.
    """
    ids, rows = check_scatter_add(table, ids, rows)
    np.add.at(table, ids, rows)


def adamw_update(p, g, m, v, *, lr, weight_decay, beta1, beta2, eps, step, work=None):
    """One AdamW update of one parameter in place, in torch.optim.AdamW's order of operations.

        p <- p (1 - lr wd)                          decoupled weight decay, before Adam
        m <- m + (1 - beta1) (g - m)                the first moment (torch's lerp)
        v <- beta2 v + (1 - beta2) g^2              the second moment
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    p, g, m, v: one shape and dtype; `step` is t, counted from 1; `work` an optional scratch
    array of p's shape and dtype (one is made when None). Every step is rounded to the dtype
    as NumPy rounds it, so float32 gives torch's float32 results.
    """
    work = np.empty_like(p) if work is None else work
    if weight_decay != 0.0:
        p *= 1.0 - lr * weight_decay
    weight = 1.0 - beta1
    np.subtract(g, m, out=work)                   # g - m
    if weight < 0.5:                              # torch's two-sided lerp: m + w (g - m) ...
        work *= weight
        m += work
    else:                                         # ... or g - (1 - w)(g - m), whichever is exact-er
        work *= weight - 1.0
        np.add(g, work, out=m)
    np.multiply(g, g, out=work)                   # v <- beta2 v + (1 - beta2) g^2
    work *= 1.0 - beta2
    v *= beta2
    v += work
    np.sqrt(v, out=work)                          # denominator sqrt(v) / sqrt(bc2) + eps
    work /= (1.0 - beta2 ** step) ** 0.5
    work += eps
    np.divide(m, work, out=work)                  # m / denominator
    work *= -(lr / (1.0 - beta1 ** step))
    p += work
