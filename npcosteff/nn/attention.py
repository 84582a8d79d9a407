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

The heavy steps go through :mod:`npcosteff.kernels` (the heads' products, softmax, the
masked weights and their backward), so ``NPCOSTEFF_KERNELS=reference`` runs this block in
plain NumPy. A float32 pass at inference shares the block out over the cores
(:func:`_attention_in_lanes`, npcosteff/kernels/lanes.py): the same steps, by rows, samples
or heads.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from .. import kernels
from ..kernels import lanes
from ..kernels.checks import _vector
from .linear import linear_backward, linear_forward
from .prefixed import Prefixed

_PROJECTIONS = ("query", "key", "value")


class AttentionCache(NamedTuple):
    """What the backward pass of one attention block needs from its forward pass."""

    x2: np.ndarray                        # (N, d) the block's input rows, N = B * T
    q: np.ndarray                         # (B, H, T, d_h) queries, already divided by sqrt(d_h)
    k: np.ndarray                         # (B, H, T, d_h) keys
    v: np.ndarray                         # (B, H, T, d_h) values
    probs: np.ndarray                     # (B, H, T, T) softmax of the scores
    weights: np.ndarray                   # (B, H, T, T) probs * probs_dropout * head_mask
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


def split_heads(x2, B, T, H):
    """(B*T, H*d_h) rows -> (B, H, T, d_h): head h is columns h*d_h..(h+1)*d_h (a view, no copy)."""
    return x2.reshape(B, T, H, -1).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, d_h) -> (B*T, H*d_h) rows, the heads side by side (a copy)."""
    B, H, T, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B * T, H * dh)


def attention_forward(x, p, num_heads, head_size, additive_mask, eps, *,
                      head_mask=None, probs_dropout=None, output_dropout=None, inference=False, n_lanes=1):
    """x (B, T, d), additive_mask (B, 1, 1, T) -> (out (B, T, d), probs (B, H, T, T), AttentionCache).

    head_mask (H,) multiplies each head's probabilities after dropout, as in Hugging Face.
    With ``inference=True`` nothing will backpropagate through the call: the softmax is the
    inference kernel (float32 arithmetic for float32 data, npcosteff/kernels/inference.py)
    and the cache is None; ``n_lanes > 1`` (the layer's choice, ``lanes.count``) then shares
    the steps out over that many cores.
    """
    B, T, d = x.shape
    H = num_heads
    if inference and n_lanes > 1 and probs_dropout is None and output_dropout is None:
        return _attention_in_lanes(x, p, H, head_size, additive_mask, eps, head_mask, n_lanes)
    x2 = x.reshape(B * T, d)                                           # (N, d)
    scale = 1.0 / math.sqrt(head_size)
    q2, k2, v2 = (linear_forward(x2, p[f"self.{name}.weight"], p[f"self.{name}.bias"])[0]
                  for name in _PROJECTIONS)                            # (N, A) each
    q2 *= scale                # 1/sqrt(d_h) on Q: the same as on the scores, on 4x fewer numbers
    q, k, v = (split_heads(a, B, T, H) for a in (q2, k2, v2))          # (B, H, T, d_h) views

    scores = kernels.batched_matmul(q, k.transpose(0, 1, 3, 2))        # (B, H, T, T)
    softmax = kernels.softmax_inference if inference else kernels.softmax
    probs = softmax(scores, additive_mask)                             # (B, H, T, T)
    del scores
    weights = kernels.attention_weights(probs, probs_dropout, head_mask)   # (B, H, T, T)
    context = kernels.batched_matmul(weights, v)                       # (B, H, T, d_h)

    out2, o_cache = linear_forward(merge_heads(context), p["output.dense.weight"],
                                   p["output.dense.bias"])             # (N, d)
    if output_dropout is not None:
        out2 *= output_dropout.reshape(B * T, d)
    y, s2, mean, rstd = kernels.add_layer_norm(out2, x2, p["output.LayerNorm.weight"],
                                               p["output.LayerNorm.bias"], eps)   # s2 = out2 + x2
    cache = None if inference else AttentionCache(x2, q, k, v, probs, weights, o_cache, s2, mean, rstd,
                                                  head_mask, probs_dropout, output_dropout, scale)
    return y.reshape(B, T, d), probs, cache


def _attention_in_lanes(x, p, H, head_size, additive_mask, eps, head_mask, n_lanes):
    """:func:`attention_forward` at inference in `n_lanes` lanes (npcosteff/kernels/lanes.py):
    by heads for fewer samples than lanes where the layer has as many heads as lanes
    (:func:`_attention_by_heads`), else by rows and samples (:func:`_attention_by_rows`).
    Returns (out, probs, None)."""
    B, T, d = x.shape
    if head_mask is not None:
        head_mask = _vector("head_mask", head_mask, H, x.dtype)        # (H,), checked before it is cut
    mask = None if additive_mask is None else np.broadcast_to(additive_mask, (B,) + additive_mask.shape[1:])
    attend = _attention_by_heads if lanes.by_width(B, n_lanes, H) else _attention_by_rows
    return attend(x, p, H, head_size, mask, eps, head_mask, n_lanes)


def _core(q, k, v, mask, head_mask, probs, context):
    """The attention core of some samples and heads inside a lane: q, k, v (b, h, T, d_h) ->
    probs (b, h, T, T) and context (b, h, T, d_h), written into the arrays given."""
    scores = np.matmul(q, k.transpose(0, 1, 3, 2))                     # (b, h, T, T)
    if probs.flags.c_contiguous:                                       # one sample's heads, or whole samples
        weights = kernels.softmax_inference(scores, mask, out=probs)
    else:                                                              # some heads of several samples
        weights = kernels.softmax_inference(scores, mask)
        probs[...] = weights
    if head_mask is not None:                                          # plain NumPy: no parallel loop in a lane
        weights = kernels.reference.attention_weights(weights, None, head_mask)
    np.matmul(weights, v, out=context)                                 # (b, h, T, d_h)


def _attention_by_rows(x, p, H, head_size, mask, eps, head_mask, n_lanes):
    """Three hand-offs: the projections by rows, the attention core by samples, the output
    dense and LayerNorm by rows; each lane writes its share of the preallocated results."""
    B, T, d = x.shape
    N, A = B * T, H * head_size
    x2 = x.reshape(N, d)                                               # (N, d)
    scale = 1.0 / math.sqrt(head_size)
    q2, k2, v2, context2 = (np.empty((N, A), x.dtype) for _ in range(4))   # (N, A) each
    rows = lanes.row_parts(N, n_lanes)

    def project(r):                                                    # rows r of Q, K and V
        for name, out in zip(_PROJECTIONS, (q2, k2, v2)):
            np.matmul(x2[r], p[f"self.{name}.weight"].T, out=out[r])
            out[r] += p[f"self.{name}.bias"]
        q2[r] *= scale
    lanes.run(project, rows)

    q, k, v, context = (split_heads(a, B, T, H) for a in (q2, k2, v2, context2))   # (B, H, T, d_h) views
    probs = np.empty((B, H, T, T), x.dtype)                            # (B, H, T, T)

    def core(b):                                                       # samples b (a contiguous share of probs)
        _core(q[b], k[b], v[b], None if mask is None else mask[b], head_mask, probs[b], context[b])
    lanes.run(core, lanes.row_parts(B, n_lanes))

    y2 = np.empty((N, d), x.dtype)                                     # (N, d)

    def output(r):                                                     # rows r of the block's output
        out = context2[r] @ p["output.dense.weight"].T
        out += p["output.dense.bias"]
        y2[r] = kernels.add_layer_norm(out, x2[r], p["output.LayerNorm.weight"], p["output.LayerNorm.bias"],
                                       eps)[0]
    lanes.run(output, rows)
    return y2.reshape(B, T, d), probs, None


def _attention_by_heads(x, p, H, head_size, mask, eps, head_mask, n_lanes):
    """One hand-off, for fewer samples than lanes (one sentence): each lane takes a share of
    the heads from end to end, its columns of Q, K and V (full-height products, where a share
    of the rows of one sentence would make BLAS's blocks half as tall), its attention core and
    its heads' part of the output dense, context[:, heads] Wo[:, heads]^T (N, d); the calling
    thread sums the parts and adds the bias, the residual and LayerNorm."""
    B, T, d = x.shape
    N = B * T
    x2 = x.reshape(N, d)                                               # (N, d)
    scale = 1.0 / math.sqrt(head_size)
    probs = np.empty((B, H, T, T), x.dtype)                            # (B, H, T, T)

    def attend(h):                                                     # heads h -> their part (N, d)
        cols = slice(h.start * head_size, h.stop * head_size)          # their columns of Q, K, V
        q, k, v = (split_heads(x2 @ p[f"self.{name}.weight"][cols].T + p[f"self.{name}.bias"][cols],
                               B, T, h.stop - h.start) for name in _PROJECTIONS)   # (B, h, T, d_h) each
        q *= scale
        context = np.empty_like(q)                                     # (B, h, T, d_h)
        _core(q, k, v, mask, None if head_mask is None else head_mask[h], probs[:, h], context)
        return merge_heads(context) @ p["output.dense.weight"][:, cols].T    # (N, d)
    out = lanes.run_and_sum(attend, lanes.row_parts(H, n_lanes))      # (N, d) context Wo^T
    out += p["output.dense.bias"]
    y2 = kernels.add_layer_norm(out, x2, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"], eps)[0]
    return y2.reshape(B, T, d), probs, None


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

    dweights = kernels.batched_matmul(dcontext, c.v.transpose(0, 1, 3, 2))   # (B, H, T, T)
    dv = kernels.batched_matmul(c.weights.transpose(0, 1, 3, 2), dcontext)    # (B, H, T, d_h)
    # dprobs = dweights * head_mask * probs_dropout (+ dprobs_extra), then the softmax backward
    # dscores = probs * (dprobs - sum(dprobs * probs)), in place in dweights.
    dscores = kernels.attention_probs_backward(dweights, c.probs, c.head_mask, c.probs_dropout, dprobs_extra)
    dq = kernels.batched_matmul(dscores, c.k)                          # (B, H, T, d_h), of the scaled Q
    dk = kernels.batched_matmul(dscores.transpose(0, 1, 3, 2), c.q)    # (B, H, T, d_h)
    del dscores
    dq *= c.scale                                                      # chain rule through Q * scale

    dx2 = ds2.copy()                                                   # (N, d): the residual branch
    for name, dh in zip(_PROJECTIONS, (dq, dk, dv)):
        dx_part, _ = linear_backward(merge_heads(dh), (c.x2, p[f"self.{name}.weight"], c.x2.shape),
                                     Prefixed(grads, f"self.{name}."))   # (N, d)
        dx2 += dx_part
    return dx2.reshape(B, T, d)
