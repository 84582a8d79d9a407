"""One encoder layer at inference shared out over the cores: the speed twin of the plain pair.

The plain layer is :func:`npcosteff.nn.attention.attention_forward` followed by
:func:`npcosteff.nn.ffn.ffn_forward`. At inference (no dropout, no cache), for float32 data
with the ``fast`` kernels and enough work, :func:`layer_forward_in_lanes` runs the same steps
in lanes (:mod:`~npcosteff.kernels.lanes`, the runner): every lane computes its share exactly
as the whole call would, so the results are those of the plain layer up to the summation
order of BLAS and the inference kernels' few ulps (tests/test_lanes.py compares the two).

Two ways to cut a block, chosen by :func:`~npcosteff.kernels.lanes.by_width`:

* by rows and samples, for at least as many samples as lanes: the attention in three
  hand-offs (the Q, K, V projections by rows, the attention core by samples, the output dense
  and LayerNorm by rows), the FFN in one (each lane takes its rows through the whole block);
* by width, for fewer samples than lanes (one sentence, whose rows are too few to cut without
  halving the height of BLAS's blocks): each lane takes a share of the heads from end to end,
  or a share of the FFN's neurons, and the calling thread sums the lanes' parts of the output
  dense and adds the bias, the residual and LayerNorm.

The elementwise steps go through the switch of :mod:`npcosteff.kernels`, as in the plain
layer; inside a lane they run their serial loops (:func:`npcosteff.kernels.common.serial`).
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..heads import PROJECTIONS, head_span, merge_heads, split_heads
from . import common, lanes, reference
from .checks import check_vector

__all__ = ["layer_forward_in_lanes", "attention_in_lanes", "ffn_in_lanes"]


def layer_forward_in_lanes(x, attention_params, ffn_params, num_heads, head_size, additive_mask, eps, *,
                           head_mask=None, ffn_mask=None, flops):
    """x (B, T, d) -> (y (B, T, d), probs (B, H, T, T)) at inference, both blocks of the layer in
    lanes; or None when the layer takes no lanes (:func:`~npcosteff.kernels.lanes.count`: float64
    data, the reference kernels, one BLAS thread, or under `flops`, the FLOPs of the layer's
    matrix products over the batch, too little work to share), and the caller runs the plain pair.

    attention_params and ffn_params are the parameters of the plain blocks, under the same
    local names (``self.query.weight``, ... and ``intermediate.dense.weight``, ...).
    """
    B, T, _ = x.shape
    n_lanes = lanes.count(B * T, x.dtype, flops)
    if n_lanes <= 1:
        return None
    a, probs = attention_in_lanes(x, attention_params, num_heads, head_size, additive_mask, eps, head_mask,
                                  n_lanes)
    return ffn_in_lanes(a, ffn_params, eps, ffn_mask, n_lanes), probs


# ---------------------------------------------------------------------------- attention


def attention_in_lanes(x, p, num_heads, head_size, additive_mask, eps, head_mask, n_lanes):
    """The attention block at inference in `n_lanes` lanes: x (B, T, d) -> (out (B, T, d),
    probs (B, H, T, T)). By heads for fewer samples than lanes where the layer has as many
    heads as lanes (:func:`_attention_by_heads`), else by rows and samples
    (:func:`_attention_by_rows`)."""
    B, T, d = x.shape
    H = num_heads
    if head_mask is not None:
        head_mask = check_vector("head_mask", head_mask, H, x.dtype)   # (H,), checked before it is cut
    mask = None if additive_mask is None else np.broadcast_to(additive_mask, (B,) + additive_mask.shape[1:])
    attend = _attention_by_heads if lanes.by_width(B, n_lanes, H) else _attention_by_rows
    return attend(x, p, H, head_size, mask, eps, head_mask, n_lanes)


def attention_core(q, k, v, mask, head_mask, probs, context):
    """The attention core of some samples and heads inside a lane: q, k, v (b, h, T, d_h) ->
    probs (b, h, T, T) and context (b, h, T, d_h), written into the arrays given.

    Whole samples go through the three steps a few at a time (:func:`.common.core_chunk_samples`):
    a chunk's scores stay in the core's cache from the product that writes them through the
    softmax to the product that reads them, where a lane's 16 samples of MiniLM at 128 tokens
    at once (12 MB of scores) went out to memory and back twice (benchmarks/README.md)."""
    b, h, T, _ = probs.shape
    chunk = common.core_chunk_samples(h, T)                            # samples per chunk
    if probs.flags.c_contiguous and b > chunk:                         # whole samples: a chunk at a time
        for c in range(0, b, chunk):
            s = slice(c, c + chunk)
            attention_core(q[s], k[s], v[s], None if mask is None else mask[s], head_mask, probs[s], context[s])
        return
    if probs.flags.c_contiguous:                                       # a chunk of samples, or one sample's heads:
        np.matmul(q, k.transpose(0, 1, 3, 2), out=probs)               # the scores, (b, h, T, T), in probs
        weights = kernels.softmax_inference(probs, mask, out=probs)    # in place: no second (b, h, T, T) array
    else:                                                              # some heads of several samples
        scores = np.matmul(q, k.transpose(0, 1, 3, 2))                 # (b, h, T, T)
        weights = kernels.softmax_inference(scores, mask)
        probs[...] = weights
    if head_mask is not None:                                          # plain NumPy: no parallel loop in a lane
        weights = reference.attention_weights(weights, None, head_mask)
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
        for name, out in zip(PROJECTIONS, (q2, k2, v2)):
            np.matmul(x2[r], p[f"self.{name}.weight"].T, out=out[r])
            out[r] += p[f"self.{name}.bias"]
        q2[r] *= scale
    lanes.run(project, rows)

    q, k, v, context = (split_heads(a, B, T, H) for a in (q2, k2, v2, context2))   # (B, H, T, d_h) views
    probs = np.empty((B, H, T, T), x.dtype)                            # (B, H, T, T)

    def core(b):                                                       # samples b (a contiguous share of probs)
        attention_core(q[b], k[b], v[b], None if mask is None else mask[b], head_mask, probs[b], context[b])
    lanes.run(core, lanes.row_parts(B, n_lanes))

    y2 = np.empty((N, d), x.dtype)                                     # (N, d)

    def output(r):                                                     # rows r of the block's output
        out = context2[r] @ p["output.dense.weight"].T
        kernels.bias_add_layer_norm_inference(out, p["output.dense.bias"], x2[r], p["output.LayerNorm.weight"],
                                              p["output.LayerNorm.bias"], eps, out=y2[r])
    lanes.run(output, rows)
    return y2.reshape(B, T, d), probs


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
        cols = head_span(h.start, h.stop, head_size)                   # their columns of Q, K, V
        q, k, v = (split_heads(x2 @ p[f"self.{name}.weight"][cols].T + p[f"self.{name}.bias"][cols],
                               B, T, h.stop - h.start) for name in PROJECTIONS)   # (B, h, T, d_h) each
        q *= scale
        context = np.empty_like(q)                                     # (B, h, T, d_h)
        attention_core(q, k, v, mask, None if head_mask is None else head_mask[h], probs[:, h], context)
        return merge_heads(context) @ p["output.dense.weight"][:, cols].T    # (N, d)
    out = lanes.run_and_sum(attend, lanes.row_parts(H, n_lanes))      # (N, d) context Wo^T
    y2 = kernels.bias_add_layer_norm_inference(out, p["output.dense.bias"], x2, p["output.LayerNorm.weight"],
                                               p["output.LayerNorm.bias"], eps, out=out)
    return y2.reshape(B, T, d), probs


# ---------------------------------------------------------------------------- feed-forward


def ffn_in_lanes(x, p, eps, ffn_mask, n_lanes):
    """The feed-forward block at inference in `n_lanes` lanes: x (B, T, d) -> y (B, T, d), one
    hand-off. By rows, each lane running the block's steps on its share of the rows; or, for
    fewer samples than lanes (one sentence: a share of its rows would make BLAS's blocks half
    as tall), by neurons, each lane taking all rows through its share of the F neurons,
    GELU(x Wi[f]^T + bi[f]) Wo[:, f]^T (N, d), and the calling thread summing the parts and
    adding the bias, the residual and LayerNorm."""
    B, T, d = x.shape
    x2 = x.reshape(B * T, d)                                                     # (N, d)
    Wi, bi, Wo = p["intermediate.dense.weight"], p["intermediate.dense.bias"], p["output.dense.weight"]
    gamma, beta = p["output.LayerNorm.weight"], p["output.LayerNorm.bias"]
    if lanes.by_width(B, n_lanes, Wi.shape[0]):
        if ffn_mask is not None:
            ffn_mask = check_vector("ffn_mask", ffn_mask, Wi.shape[0], x2.dtype)   # (F,), checked before it is cut

        def share(f):                                                            # neurons f -> their part (N, d)
            act = kernels.bias_gelu_inference(x2 @ Wi[f].T, bi[f], None if ffn_mask is None else ffn_mask[f])
            return act @ Wo[:, f].T
        out = lanes.run_and_sum(share, lanes.row_parts(Wi.shape[0], n_lanes))   # (N, d) GELU(x Wi^T + bi) Wo^T
        return kernels.bias_add_layer_norm_inference(out, p["output.dense.bias"], x2, gamma, beta, eps,
                                                     out=out).reshape(B, T, d)

    y2 = np.empty_like(x2)                                                       # (N, d)

    def block(r):                                                                # rows r
        act = kernels.bias_gelu_inference(x2[r] @ Wi.T, bi, ffn_mask)            # (n, F)
        kernels.bias_add_layer_norm_inference(act @ Wo.T, p["output.dense.bias"], x2[r], gamma, beta, eps,
                                              out=y2[r])                         # (n, d)
    lanes.run(block, lanes.row_parts(x2.shape[0], n_lanes))
    return y2.reshape(B, T, d)
