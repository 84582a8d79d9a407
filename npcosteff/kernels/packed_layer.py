"""One encoder layer laid out once for inference: the speed twin of the plain pair that a
packed model (:mod:`npcosteff.packed_model`) runs.

The plain layers (:mod:`npcosteff.nn`) keep every weight as the checkpoints store it, W (out,
in), and compute ``x @ W.T + b`` one projection at a time. That is the readable form, and it
costs at inference: a product with a transposed operand runs about an eighth slower in
OpenBLAS than with an operand laid out (in, out) (benchmarks/README.md, "Measurements behind
the kernels' design"), Q, K and V are three products where one would do, and the scale
1/sqrt(d_h) is one more pass over Q. :func:`pack_layer` copies a layer's weights into:

* ``qkv``: (d, 3A), the columns of Q, K and V of each share of the heads side by side
  ``[Q_s | K_s | V_s]``, Q's columns and bias already multiplied by 1/sqrt(d_h): one product
  gives a share of heads its scaled queries, its keys and its values (and ``qkv_whole``, the
  same with all heads as one share, ``[Q | K | V]``, for a lane that takes whole samples);
* ``attention_output``: (A, d), W_O^T, a share of heads owning consecutive rows;
* ``intermediate``: (d, F) and ``output``: (F, d), a share of the neurons owning consecutive
  columns and rows.

:func:`packed_layer_forward` then runs the layer in at most two hand-offs to the kernels'
worker threads (:mod:`~npcosteff.kernels.lanes`), against four in
:mod:`~npcosteff.kernels.lanes_layer`:

* by samples, when the batch has at least as many samples as lanes: each lane takes whole
  samples through the whole layer (one hand-off, nothing shared between the lanes);
* by width, for fewer samples than lanes (one sentence): each lane takes a share of the heads
  from end to end, then a share of the neurons, and the calling thread sums the lanes' parts
  and adds the bias, the residual and LayerNorm after each block (two hand-offs).

Its results are those of the plain layer up to BLAS's summation order, the scale folded into Q
and the inference kernels' few ulps (tests/test_packed.py compares the two).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import kernels
from ..heads import split_heads
from . import lanes
from .lanes_layer import attention_core

__all__ = ["PackedLayer", "pack_layer", "packed_layer_forward"]


class PackedLayer(NamedTuple):
    """One layer laid out for inference (module docstring); `shares` are the head ranges and
    `neuron_shares` the neuron ranges of the lanes it was packed for."""
    qkv: np.ndarray                 # (d, 3A)   [Q_s * scale | K_s | V_s] for each share s
    qkv_bias: np.ndarray            # (3A,)     in the same column order
    qkv_whole: np.ndarray           # (d, 3A)   [Q * scale | K | V], all heads as one share (lanes by samples)
    qkv_whole_bias: np.ndarray      # (3A,)
    attention_output: np.ndarray    # (A, d)    W_O^T
    attention_output_bias: np.ndarray   # (d,)
    attention_gamma: np.ndarray     # (d,)      the attention block's LayerNorm
    attention_beta: np.ndarray      # (d,)
    intermediate: np.ndarray        # (d, F)    W_I^T
    intermediate_bias: np.ndarray   # (F,)
    output: np.ndarray              # (F, d)    W_2^T
    output_bias: np.ndarray         # (d,)
    output_gamma: np.ndarray        # (d,)      the FFN block's LayerNorm
    output_beta: np.ndarray         # (d,)
    num_heads: int
    head_size: int
    shares: tuple                   # slices of range(H), one per lane
    neuron_shares: tuple            # slices of range(F), one per lane

    def qkv_columns(self, s: int) -> slice:
        """The columns of ``qkv`` that belong to share s of the heads: 3 * (its heads) * d_h."""
        first = 3 * self.shares[s].start * self.head_size
        return slice(first, first + 3 * (self.shares[s].stop - self.shares[s].start) * self.head_size)


def pack_layer(params, i: int, num_heads: int, head_size: int, n_lanes: int) -> PackedLayer:
    """Lay out layer i of a model's `params` for inference in `n_lanes` lanes (module docstring)."""
    prefix = f"encoder.layer.{i}."
    p = {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}
    scale = 1.0 / math.sqrt(head_size)
    shares = tuple(lanes.row_parts(num_heads, n_lanes))
    F = p["intermediate.dense.weight"].shape[0]

    def grouped(shares):                                                         # (d, 3A), (3A,)
        columns, biases = [], []
        for share in shares:
            span = slice(share.start * head_size, share.stop * head_size)
            for name, factor in (("query", scale), ("key", 1.0), ("value", 1.0)):
                W = p[f"attention.self.{name}.weight"]                           # (A, d)
                b = p[f"attention.self.{name}.bias"]                             # (A,)
                columns.append(W[span].T * W.dtype.type(factor))                 # (d, a_s)
                biases.append(b[span] * b.dtype.type(factor))
        return np.ascontiguousarray(np.concatenate(columns, axis=1)), np.concatenate(biases)
    qkv, qkv_bias = grouped(shares)
    # All heads as one share: the same matrix when the lanes' shares are one already.
    qkv_whole, qkv_whole_bias = (qkv, qkv_bias) if len(shares) == 1 else grouped([slice(0, num_heads)])
    return PackedLayer(
        qkv=qkv, qkv_bias=qkv_bias, qkv_whole=qkv_whole, qkv_whole_bias=qkv_whole_bias,
        attention_output=np.ascontiguousarray(p["attention.output.dense.weight"].T),
        attention_output_bias=p["attention.output.dense.bias"].copy(),
        attention_gamma=p["attention.output.LayerNorm.weight"].copy(),
        attention_beta=p["attention.output.LayerNorm.bias"].copy(),
        intermediate=np.ascontiguousarray(p["intermediate.dense.weight"].T),
        intermediate_bias=p["intermediate.dense.bias"].copy(),
        output=np.ascontiguousarray(p["output.dense.weight"].T),
        output_bias=p["output.dense.bias"].copy(),
        output_gamma=p["output.LayerNorm.weight"].copy(),
        output_beta=p["output.LayerNorm.bias"].copy(),
        num_heads=num_heads, head_size=head_size, shares=shares,
        neuron_shares=tuple(lanes.row_parts(F, n_lanes)))


# ---------------------------------------------------------------------------- one lane's work


def _core(layer: PackedLayer, qkv, B, T, mask, probs, context):
    """The attention core of some heads of B samples: qkv (B*T, 3h*d_h), their columns of one
    share ``[Q | K | V]`` (Q scaled) -> writes their probabilities into probs (B, h, T, T) and
    their context into context (B*T, h*d_h), views the caller owns (the lanes' core,
    :func:`~npcosteff.kernels.lanes_layer.attention_core`, on views of them)."""
    h = probs.shape[1]
    a = h * layer.head_size
    q, k, v = (split_heads(qkv[:, j * a:(j + 1) * a], B, T, h) for j in range(3))   # (B, h, T, d_h) views
    attention_core(q, k, v, mask, None, probs,
                   _view(context, (B, T, h, layer.head_size)).transpose(0, 2, 1, 3))   # (B, h, T, d_h)


def _view(a, shape):
    """`a` reshaped without a copy (a copy would take the writes meant for `a`): raises if it cannot."""
    view = a.view()
    view.shape = shape
    return view


def _attention_part(layer: PackedLayer, s: int, x2, B, T, mask, probs):
    """Share s of the heads from end to end: its part of the output dense, context_s W_O[:, s]^T (N, d)."""
    heads = layer.shares[s]
    rows = slice(heads.start * layer.head_size, heads.stop * layer.head_size)
    cols = layer.qkv_columns(s)
    qkv = x2 @ layer.qkv[:, cols]                                                # (N, 3a_s)
    qkv += layer.qkv_bias[cols]
    context = np.empty((x2.shape[0], rows.stop - rows.start), x2.dtype)          # (N, a_s)
    _core(layer, qkv, B, T, mask, probs[:, heads], context)
    return context @ layer.attention_output[rows]                                # (N, d)


def _ffn_part(layer: PackedLayer, share: slice, a2):
    """Neurons `share` of the FFN: GELU(a W_I[share]^T + b_I[share]) W_2[:, share]^T (N, d)."""
    pre = a2 @ layer.intermediate[:, share]                                      # (N, f)
    act = kernels.bias_gelu_inference(pre, layer.intermediate_bias[share])       # (N, f)
    return act @ layer.output[share]                                             # (N, d)


def _close(part, residual, bias, gamma, beta, eps):
    """A block's end: LayerNorm(part + bias + residual), part (N, d) summed over the lanes, in place."""
    return kernels.bias_add_layer_norm_inference(part, bias, residual, gamma, beta, eps, out=part)


def _whole_layer(layer: PackedLayer, x, mask, probs, eps):
    """Every step of the layer on samples x (b, T, d) in the calling thread -> y (b, T, d);
    writes probs (b, H, T, T)."""
    B, T, d = x.shape
    x2 = x.reshape(B * T, d)                                                     # (N, d)
    qkv = x2 @ layer.qkv_whole                                                   # (N, 3A), one product
    qkv += layer.qkv_whole_bias
    context = np.empty((B * T, layer.attention_output.shape[0]), x.dtype)       # (N, A)
    _core(layer, qkv, B, T, mask, probs, context)                                # every head at once
    a2 = _close(context @ layer.attention_output, x2, layer.attention_output_bias,
                layer.attention_gamma, layer.attention_beta, eps)                 # (N, d)
    y2 = _close(_ffn_part(layer, slice(None), a2), a2, layer.output_bias, layer.output_gamma,
                layer.output_beta, eps)                                           # (N, d)
    return y2.reshape(B, T, d)


# ---------------------------------------------------------------------------- the layer


def _by_samples(n_samples: int, n_lanes: int, layer: PackedLayer) -> bool:
    """Lanes by samples (one hand-off) when every lane gets the same number of samples or
    enough that one more sample in some lanes costs little; by width (two hand-offs) when
    there are fewer samples than lanes, or a few that do not share out evenly, and the layer
    has a head and a neuron for every lane."""
    if n_samples % n_lanes == 0 or n_samples >= 4 * n_lanes:
        return True
    return not (len(layer.shares) == n_lanes and len(layer.neuron_shares) == n_lanes)


def packed_layer_forward(layer: PackedLayer, x, additive_mask, eps, flops):
    """x (B, T, d) -> (y (B, T, d), probs (B, H, T, T)) at inference, in lanes where there is
    the work for it (:func:`npcosteff.kernels.lanes.count`), else in the calling thread."""
    B, T, d = x.shape
    probs = np.empty((B, layer.num_heads, T, T), x.dtype)                       # (B, H, T, T)
    mask = None if additive_mask is None else np.broadcast_to(additive_mask, (B,) + additive_mask.shape[1:])
    n_lanes = lanes.count(B * T, x.dtype, flops)
    if n_lanes <= 1:
        return _whole_layer(layer, x, mask, probs, eps), probs
    if _by_samples(B, n_lanes, layer):
        y = np.empty_like(x)                                                     # (B, T, d)

        def samples(b):
            y[b] = _whole_layer(layer, x[b], None if mask is None else mask[b], probs[b], eps)
        lanes.run(samples, lanes.row_parts(B, n_lanes))
        return y, probs
    x2 = x.reshape(B * T, d)                                                     # (N, d)
    part = lanes.run_and_sum(lambda s: _attention_part(layer, s, x2, B, T, mask, probs),
                             range(len(layer.shares)))                           # (N, d)
    a2 = _close(part, x2, layer.attention_output_bias, layer.attention_gamma, layer.attention_beta, eps)
    part = lanes.run_and_sum(lambda f: _ffn_part(layer, f, a2), layer.neuron_shares)   # (N, d)
    y2 = _close(part, a2, layer.output_bias, layer.output_gamma, layer.output_beta, eps)
    return y2.reshape(B, T, d), probs
