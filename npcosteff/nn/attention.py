"""BERT attention block: multi-head self-attention, output dense, dropout, residual, LayerNorm.

    Q, K, V = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv          (B, T, A), A = H * d_h
    probs   = softmax(Q K^T / sqrt(d_h) + additive_mask)       (B, H, T, T)
    context = (dropout(probs) * head_mask) V                   (B, H, T, d_h) -> (B, T, A)
    out     = LayerNorm(x + dropout(context Wo^T + bo))        (B, T, d)

The number of heads H may be smaller than in the pretrained model (a slender layer): A then
is smaller than d, while the residual width d never changes.

Parameters (local names under ``encoder.layer.{i}.attention.``): ``self.query.weight``
(A, d) and ``.bias`` (A,), the same for ``self.key`` and ``self.value``;
``output.dense.weight`` (d, A), ``output.dense.bias`` (d,), ``output.LayerNorm.weight``/``.bias`` (d,).
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from .linear import linear_backward, linear_forward
from .prefixed import Prefixed


def _split_heads(x2, B, T, H, dh):
    """(B*T, A) -> (B, H, T, d_h) view (no copy): BLAS reads the strided slices directly."""
    return x2.reshape(B, T, H, dh).transpose(0, 2, 1, 3)


def _merge_heads(x4):
    """(B, H, T, d_h) -> (B*T, A) contiguous copy."""
    B, H, T, dh = x4.shape
    return x4.transpose(0, 2, 1, 3).reshape(B * T, H * dh)


def attention_forward(x, p, num_heads, head_size, additive_mask, eps, *,
                      head_mask=None, probs_dropout=None, output_dropout=None):
    """x (B, T, d), additive_mask (B, 1, 1, T) -> (out (B, T, d), probs (B, H, T, T), cache).

    head_mask (H,) multiplies each head's probabilities after dropout, as in Hugging Face.
    """
    B, T, d = x.shape
    H, dh = num_heads, head_size
    x2 = x.reshape(B * T, d)                                       # (N, d)
    scale = 1.0 / math.sqrt(dh)
    q2, q_cache = linear_forward(x2, p["self.query.weight"], p["self.query.bias"])   # (N, A)
    q2 *= scale                              # fold 1/sqrt(d_h) into Q: cheaper than scaling (B,H,T,T)
    k2, k_cache = linear_forward(x2, p["self.key.weight"], p["self.key.bias"])       # (N, A)
    v2, v_cache = linear_forward(x2, p["self.value.weight"], p["self.value.bias"])   # (N, A)
    q, k, v = (_split_heads(t, B, T, H, dh) for t in (q2, k2, v2))                 # (B, H, T, dh)

    scores = q @ k.transpose(0, 1, 3, 2)                           # (B, H, T, T)
    probs = kernels.softmax(scores, additive_mask)                 # (B, H, T, T)
    weights = probs
    if probs_dropout is not None:
        weights = weights * probs_dropout                          # (B, H, T, T) new array
    if head_mask is not None:
        hm = head_mask.reshape(1, H, 1, 1)
        weights = weights * hm if weights is probs else np.multiply(weights, hm, out=weights)
    context = weights @ v                                          # (B, H, T, dh)
    context2 = _merge_heads(context)                               # (N, A)

    out2, o_cache = linear_forward(context2, p["output.dense.weight"], p["output.dense.bias"])  # (N, d)
    if output_dropout is not None:
        out2 *= output_dropout.reshape(B * T, d)
    out2 += x2                                                     # residual
    y, mean, rstd = kernels.layer_norm(out2, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"], eps)
    cache = (x2, q, k, v, probs, weights, q_cache, k_cache, v_cache, o_cache,
             out2, mean, rstd, head_mask, probs_dropout, output_dropout, (B, T, d, H, dh), scale)
    return y.reshape(B, T, d), probs, cache


def attention_backward(dy, cache, p, grads, dprobs_extra=None):
    """dy (B, T, d) -> dx (B, T, d); adds parameter gradients into `grads`.

    dprobs_extra (B, H, T, T): a gradient put directly on the returned probs (attention
    distillation), added before the softmax backward.
    """
    (x2, q, k, v, probs, weights, q_cache, k_cache, v_cache, o_cache,
     s2, mean, rstd, head_mask, probs_dropout, output_dropout, (B, T, d, H, dh), scale) = cache
    dy2 = dy.reshape(B * T, d)
    ds2, dgamma, dbeta = kernels.layer_norm_backward(dy2, s2, p["output.LayerNorm.weight"], mean, rstd)
    grads["output.LayerNorm.weight"] += dgamma
    grads["output.LayerNorm.bias"] += dbeta
    dx2 = ds2.copy()                                               # residual branch: (N, d)
    dout2 = ds2 * output_dropout.reshape(B * T, d) if output_dropout is not None else ds2
    dcontext2, _ = linear_backward(dout2, o_cache, Prefixed(grads, "output.dense."))          # (N, A)

    dcontext = _split_heads(dcontext2, B, T, H, dh)                # (B, H, T, dh)
    dweights = dcontext @ v.transpose(0, 1, 3, 2)                  # (B, H, T, T)
    dv = weights.transpose(0, 1, 3, 2) @ dcontext                  # (B, H, T, dh)
    dprobs = dweights
    if head_mask is not None:
        dprobs *= head_mask.reshape(1, H, 1, 1)
    if probs_dropout is not None:
        dprobs *= probs_dropout
    if dprobs_extra is not None:
        dprobs += dprobs_extra
    dscores = kernels.softmax_backward(dprobs, probs)              # (B, H, T, T)
    dq = dscores @ k                                               # (B, H, T, dh) (already scaled Q)
    dk = dscores.transpose(0, 1, 3, 2) @ q                         # (B, H, T, dh)

    dq2 = _merge_heads(dq)                                         # (N, A)
    dq2 *= scale                                                   # chain rule through q2 *= scale
    for d_lin, lin_cache, name in ((dq2, q_cache, "self.query."),
                                   (_merge_heads(dk), k_cache, "self.key."),
                                   (_merge_heads(dv), v_cache, "self.value.")):
        dxi, _ = linear_backward(d_lin, lin_cache, Prefixed(grads, name))
        dx2 += dxi
    return dx2.reshape(B, T, d)
