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

Layout. Q, K and V are the column blocks of one (N, 3A) array: each projection writes its
product straight into its block, and in the backward pass the gradients of the three
blocks go through one product with the stacked weight ``[Wq; Wk; Wv]`` (3A, d), which gives
dx for all three at once (no two extra (N, d) sums), and one for their weight gradients.
Each head is a strided (T, d_h) view of that array that BLAS reads directly; the head products write their results through such views too, so no heads are
ever split or merged by copying. The per-head products run in parallel over the batch
(:mod:`npcosteff.nn.batched`).
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from . import fused
from .batched import batched_matmul
from .linear import linear_backward, linear_forward, linear_input_grad
from .prefixed import Prefixed

_PROJECTIONS = ("query", "key", "value")


def _heads(x2, B, T, H, dh, block=0, blocks=1):
    """Column block `block` of x2 (B*T, blocks*A) as a (B, H, T, d_h) view (no copy)."""
    return x2.reshape(B, T, blocks, H, dh)[:, :, block].transpose(0, 2, 1, 3)


def attention_forward(x, p, num_heads, head_size, additive_mask, eps, *,
                      head_mask=None, probs_dropout=None, output_dropout=None):
    """x (B, T, d), additive_mask (B, 1, 1, T) -> (out (B, T, d), probs (B, H, T, T), cache).

    head_mask (H,) multiplies each head's probabilities after dropout, as in Hugging Face.
    """
    B, T, d = x.shape
    H, dh = num_heads, head_size
    A = H * dh
    x2 = x.reshape(B * T, d)                                       # (N, d)
    # (N, 3A) = [Q | K | V], allocated like the weights: the array type that `x2 @ W.T` would
    # have (an ndarray subclass of the parameters, e.g. an instrumented one, carries over).
    qkv = np.empty_like(p["self.query.weight"], shape=(B * T, 3 * A))
    for j, name in enumerate(_PROJECTIONS):                        # x W^T straight into its column block
        np.matmul(x2, p[f"self.{name}.weight"].T, out=qkv[:, j * A:(j + 1) * A])
    qkv += np.concatenate([p[f"self.{name}.bias"] for name in _PROJECTIONS])   # + [bq | bk | bv]
    scale = 1.0 / math.sqrt(dh)
    qkv[:, :A] *= scale                      # fold 1/sqrt(d_h) into Q: cheaper than scaling (B,H,T,T)
    q, k, v = (_heads(qkv, B, T, H, dh, j, 3) for j in range(3))   # (B, H, T, dh) views

    scores = batched_matmul(q, k.transpose(0, 1, 3, 2))            # (B, H, T, T)
    probs = kernels.softmax(scores, additive_mask)                 # (B, H, T, T)
    del scores
    # weights = probs * probs_dropout * head_mask: a new array (probs are returned and kept).
    weights = fused.attention_weights(probs, probs_dropout, head_mask)   # (B, H, T, T)
    context2 = np.empty_like(x2, shape=(B * T, A))                 # (N, A): heads side by side
    batched_matmul(weights, v, out=_heads(context2, B, T, H, dh))  # (B, H, T, dh) written in place

    out2, o_cache = linear_forward(context2, p["output.dense.weight"], p["output.dense.bias"])  # (N, d)
    if output_dropout is not None:
        out2 *= output_dropout.reshape(B * T, d)
    y, s2, mean, rstd = kernels.add_layer_norm(out2, x2, p["output.LayerNorm.weight"],
                                               p["output.LayerNorm.bias"], eps)   # s2 = out2 + x2
    cache = (x2, qkv, probs, weights, o_cache, s2, mean, rstd,
             head_mask, probs_dropout, output_dropout, (B, T, d, H, dh), scale)
    return y.reshape(B, T, d), probs, cache


def attention_backward(dy, cache, p, grads, dprobs_extra=None):
    """dy (B, T, d) -> dx (B, T, d); adds parameter gradients into `grads`.

    dprobs_extra (B, H, T, T): a gradient put directly on the returned probs (attention
    distillation), added before the softmax backward.
    """
    (x2, qkv, probs, weights, o_cache, s2, mean, rstd,
     head_mask, probs_dropout, output_dropout, (B, T, d, H, dh), scale) = cache
    A = H * dh
    dy2 = dy.reshape(B * T, d)
    ds2, dgamma, dbeta = kernels.layer_norm_backward(dy2, s2, p["output.LayerNorm.weight"], mean, rstd)
    grads["output.LayerNorm.weight"] += dgamma
    grads["output.LayerNorm.bias"] += dbeta
    dout2 = ds2 * output_dropout.reshape(B * T, d) if output_dropout is not None else ds2
    dcontext2, _ = linear_backward(dout2, o_cache, Prefixed(grads, "output.dense."))          # (N, A)

    q, k, v = (_heads(qkv, B, T, H, dh, j, 3) for j in range(3))   # (B, H, T, dh) views
    dcontext = _heads(dcontext2, B, T, H, dh)                      # (B, H, T, dh)
    dqkv = np.empty_like(dy2, shape=(B * T, 3 * A))                # (N, 3A) = [dQ | dK | dV]
    dq, dk, dv = (_heads(dqkv, B, T, H, dh, j, 3) for j in range(3))
    dweights = batched_matmul(dcontext, v.transpose(0, 1, 3, 2))   # (B, H, T, T)
    batched_matmul(weights.transpose(0, 1, 3, 2), dcontext, out=dv)  # (B, H, T, dh)
    # dprobs = dweights * head_mask * probs_dropout (+ dprobs_extra), then the softmax backward
    # dscores = probs * (dprobs - sum(dprobs * probs)): one pass per row, in place.
    dscores = fused.attention_probs_backward(dweights, probs, head_mask, probs_dropout, dprobs_extra)
    batched_matmul(dscores, k, out=dq)                             # (B, H, T, dh) (Q already scaled)
    batched_matmul(dscores.transpose(0, 1, 3, 2), q, out=dk)       # (B, H, T, dh)
    del dscores
    dqkv[:, :A] *= scale                                           # chain rule through Q *= scale

    dw_qkv = dqkv.T @ x2                                           # (3A, d) all three weights at once
    db_qkv = dqkv.sum(axis=0)                                      # (3A,)
    for j, name in enumerate(_PROJECTIONS):
        grads[f"self.{name}.weight"] += dw_qkv[j * A:(j + 1) * A]
        grads[f"self.{name}.bias"] += db_qkv[j * A:(j + 1) * A]
    w_qkv = np.concatenate([p[f"self.{name}.weight"] for name in _PROJECTIONS])   # (3A, d)
    dx2 = linear_input_grad(dqkv, w_qkv)                           # (N, d) through Q, K and V at once
    dx2 += ds2                                                     # residual branch
    return dx2.reshape(B, T, d)
