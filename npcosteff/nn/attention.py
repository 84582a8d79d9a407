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

Backward, from the upstream gradient dy of the block's output (derived step by step in
tutorials/02_backprop_by_hand.ipynb):

    ds        = LayerNorm backward of dy                       (B, T, d), s = x + dropout(...)
    dcontext  = (ds * dropout) Wo                              (B, H, T, d_h) after splitting heads
    dweights  = dcontext V^T,    dV = weights^T dcontext       (B, H, T, T), (B, H, T, d_h)
    dscores   = probs * (dprobs - rowsum(dprobs * probs)),     dprobs = dweights * dropout * head_mask
    dQ        = dscores K / sqrt(d_h),  dK = dscores^T Q / sqrt(d_h)
    dx        = ds + dQ Wq + dK Wk + dV Wv                     (the residual and the three projections)

The heavy steps go through :mod:`npcosteff.kernels`: the attention core (the heads' products,
softmax, dropout and head mask, forward and backward, whose plain twin
:func:`npcosteff.kernels.reference.attention_core` is the lines above) and LayerNorm, so
``NPCOSTEFF_KERNELS=reference`` runs this block in plain NumPy. (The model's speed path at
inference is a twin of this block in npcosteff/kernels/lanes_layer.py, tested against it.)
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from .. import kernels
from ..heads import PROJECTIONS, merge_heads, split_heads
from .linear import linear_backward, linear_forward
from .prefixed import Prefixed

class AttentionCache(NamedTuple):
    """What the backward pass of one attention block needs from its forward pass."""

    x2: np.ndarray                        # (N, d) the block's input rows, N = B * T
    q: np.ndarray                         # (B, H, T, d_h) queries, already divided by sqrt(d_h)
    k: np.ndarray                         # (B, H, T, d_h) keys
    v: np.ndarray                         # (B, H, T, d_h) values
    probs: np.ndarray                     # (B, H, T, T) softmax of the scores
    output: tuple                         # cache of the output dense (linear_forward)
    s2: np.ndarray                        # (N, d) LayerNorm input: x + dropout(dense output)
    mean: np.ndarray                      # (N,) LayerNorm statistics
    rstd: np.ndarray                      # (N,)
    head_mask: Optional[np.ndarray]       # (H,) or None
    probs_dropout: Optional[np.ndarray]   # (B, H, T, T) or None
    output_dropout: Optional[np.ndarray]  # (B, T, d) or None
    scale: float                          # 1 / sqrt(d_h)

    @property
    def shape(self):
        """(B, T, d) of the block's input and output."""
        B, H, T, _ = self.q.shape
        return B, T, self.x2.shape[1]


def attention_forward(x, p, num_heads, head_size, additive_mask, eps, *,
                      head_mask=None, probs_dropout=None, output_dropout=None, inference=False):
    """x (B, T, d), additive_mask (B, 1, 1, T) -> (out (B, T, d), probs (B, H, T, T), AttentionCache).

    head_mask (H,) multiplies each head's probabilities after dropout, as in Hugging Face.
    With ``inference=True`` nothing will backpropagate through the call: the softmax is the
    inference kernel (float32 arithmetic for float32 data, npcosteff/kernels/inference.py)
    and the cache is None.
    """
    B, T, d = x.shape
    H = num_heads
    x2 = x.reshape(B * T, d)                                           # (N, d)
    scale = 1.0 / math.sqrt(head_size)
    q2, k2, v2 = (linear_forward(x2, p[f"self.{name}.weight"], p[f"self.{name}.bias"])[0]
                  for name in PROJECTIONS)                             # (N, A) each
    q2 *= scale                # 1/sqrt(d_h) on Q: the same as on the scores, on 4x fewer numbers
    q, k, v = (split_heads(a, B, T, H) for a in (q2, k2, v2))          # (B, H, T, d_h) views

    # The core: probs = softmax(q k^T + mask), context = (probs * probs_dropout * head_mask) v
    # (step by step in kernels/reference.py).
    context, probs = kernels.attention_core(q, k, v, additive_mask, probs_dropout, head_mask,
                                            inference=inference)       # (B, H, T, d_h), (B, H, T, T)

    out2, o_cache = linear_forward(merge_heads(context), p["output.dense.weight"],
                                   p["output.dense.bias"])             # (N, d)
    if output_dropout is not None:
        out2 *= output_dropout.reshape(B * T, d)
    y, s2, mean, rstd = kernels.add_layer_norm(out2, x2, p["output.LayerNorm.weight"],
                                               p["output.LayerNorm.bias"], eps)   # s2 = out2 + x2
    cache = None if inference else AttentionCache(x2, q, k, v, probs, o_cache, s2, mean, rstd,
                                                  head_mask, probs_dropout, output_dropout, scale)
    return y.reshape(B, T, d), probs, cache


def attention_backward(dy, cache: AttentionCache, p, grads, dprobs_extra=None):
    """dy (B, T, d) -> dx (B, T, d); adds parameter gradients into `grads`.

    dprobs_extra (B, H, T, T): a gradient put directly on the returned probs (attention
    distillation), added before the softmax backward.
    """
    c = cache
    B, T, d = c.shape
    H = c.q.shape[1]
    dy2 = dy.reshape(B * T, d)                                         # (N, d)
    ds2, dgamma, dbeta = kernels.layer_norm_backward(dy2, c.s2, p["output.LayerNorm.weight"], c.mean, c.rstd)
    grads["output.LayerNorm.weight"] += dgamma
    grads["output.LayerNorm.bias"] += dbeta
    dout2 = ds2 * c.output_dropout.reshape(B * T, d) if c.output_dropout is not None else ds2
    dcontext2, _ = linear_backward(dout2, c.output, Prefixed(grads, "output.dense."))   # (N, A)
    dcontext = split_heads(dcontext2, B, T, H)                         # (B, H, T, d_h)

    # The core backward: dweights = dcontext V^T, dV = weights^T dcontext, the softmax backward
    # of dweights * head_mask * probs_dropout (+ dprobs_extra), then dQ and dK.
    dq, dk, dv = kernels.attention_core_backward(dcontext, c.q, c.k, c.v, c.probs, c.probs_dropout,
                                                 c.head_mask, dprobs_extra)   # (B, H, T, d_h) each
    dq *= c.scale                                                      # chain rule through Q * scale

    dx2 = ds2.copy()                                                   # (N, d): the residual branch
    for name, dh in zip(PROJECTIONS, (dq, dk, dv)):
        dx_part, _ = linear_backward(merge_heads(dh), (c.x2, p[f"self.{name}.weight"], c.x2.shape),
                                     Prefixed(grads, f"self.{name}."))   # (N, d)
        dx2 += dx_part
    return dx2.reshape(B, T, d)
