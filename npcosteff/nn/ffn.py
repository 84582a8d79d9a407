"""BERT feed-forward block: intermediate dense + GELU, output dense, dropout, residual, LayerNorm.

    a   = GELU(x Wi^T + bi) * ffn_mask          (B, T, F)
    out = LayerNorm(x + dropout(a Wo^T + bo))   (B, T, d)

F may be smaller than in the pretrained model (a slender layer). The optional ffn_mask (F,)
switches neurons off without slicing (for teaching and importance studies).

Parameters (local names under ``encoder.layer.{i}.``): ``intermediate.dense.weight`` (F, d),
``intermediate.dense.bias`` (F,), ``output.dense.weight`` (d, F), ``output.dense.bias`` (d,),
``output.LayerNorm.weight``/``.bias`` (d,).

(The model's speed path at inference is a twin of this block in
npcosteff/kernels/lanes_layer.py, tested against it.)
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from .. import kernels
from .linear import linear_backward, linear_forward, linear_input_grad, linear_param_grads
from .prefixed import Prefixed


class FFNCache(NamedTuple):
    """What the backward pass of one feed-forward block needs from its forward pass."""

    x2: np.ndarray                        # (N, d) the block's input rows, N = B * T
    pre: np.ndarray                       # (N, F) GELU input x Wi^T + bi (its output is recomputed)
    s2: np.ndarray                        # (N, d) LayerNorm input: x + dropout(dense output)
    mean: np.ndarray                      # (N,) LayerNorm statistics
    rstd: np.ndarray                      # (N,)
    ffn_mask: Optional[np.ndarray]        # (F,) or None
    output_dropout: Optional[np.ndarray]  # (B, T, d) or None
    shape: tuple                          # (B, T, d)


def ffn_forward(x, p, eps, *, ffn_mask=None, output_dropout=None, inference=False):
    """x (B, T, d) -> (y (B, T, d), FFNCache).

    The cache keeps the GELU input ``pre`` but not its output ``act``: the backward pass
    recomputes ``act`` in the same loop that takes GELU's derivative, which costs less than
    holding (B*T, F) activations per layer from the forward to the backward pass.
    With ``inference=True`` nothing will backpropagate through the call: GELU is the
    inference kernel (float32 arithmetic for float32 data, npcosteff/kernels/inference.py)
    and the cache is None.
    """
    B, T, d = x.shape
    x2 = x.reshape(B * T, d)                                                     # (N, d)
    pre, _ = linear_forward(x2, p["intermediate.dense.weight"], None)           # (N, F), bias below
    # One pass: pre += bias (kept for the backward), act = gelu(pre) * ffn_mask.
    bias_gelu = kernels.bias_gelu_inference if inference else kernels.bias_gelu
    act = bias_gelu(pre, p["intermediate.dense.bias"], ffn_mask)                  # (N, F)
    out2, _ = linear_forward(act, p["output.dense.weight"], p["output.dense.bias"])  # (N, d)
    del act
    if output_dropout is not None:
        out2 *= output_dropout.reshape(B * T, d)
    y, s2, mean, rstd = kernels.add_layer_norm(out2, x2, p["output.LayerNorm.weight"],
                                               p["output.LayerNorm.bias"], eps)   # s2 = out2 + x2
    if inference:
        return y.reshape(B, T, d), None
    return y.reshape(B, T, d), FFNCache(x2, pre, s2, mean, rstd, ffn_mask, output_dropout, (B, T, d))


def ffn_backward(dy, cache: FFNCache, p, grads):
    """dy (B, T, d) -> dx (B, T, d); adds parameter gradients into `grads`."""
    x2, pre, s2, mean, rstd, ffn_mask, output_dropout, (B, T, d) = cache
    ds2, dgamma, dbeta = kernels.layer_norm_backward(dy.reshape(B * T, d), s2,
                                                     p["output.LayerNorm.weight"], mean, rstd)  # (N, d)
    grads["output.LayerNorm.weight"] += dgamma
    grads["output.LayerNorm.bias"] += dbeta
    dout2 = ds2 * output_dropout.reshape(B * T, d) if output_dropout is not None else ds2
    dact = linear_input_grad(dout2, p["output.dense.weight"])                     # (N, F)
    # One pass: dact -> dpre = gelu'(pre) * (dact * ffn_mask) in place, and act recomputed.
    act = np.empty_like(pre)                                                      # (N, F)
    dpre = kernels.bias_gelu_backward(dact, pre, ffn_mask, act_out=act)            # (N, F), the dact array
    linear_param_grads(dout2, act, Prefixed(grads, "output.dense."))
    del act
    dx2, _ = linear_backward(dpre, (x2, p["intermediate.dense.weight"], x2.shape),
                             Prefixed(grads, "intermediate.dense."))              # (N, d)
    dx2 += ds2                                                                    # residual branch
    return dx2.reshape(B, T, d)
