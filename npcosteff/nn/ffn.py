"""BERT feed-forward block: intermediate dense + GELU, output dense, dropout, residual, LayerNorm.

    a   = GELU(x Wi^T + bi) * ffn_mask          (B, T, F)
    out = LayerNorm(x + dropout(a Wo^T + bo))   (B, T, d)

F may be smaller than in the pretrained model (a slender layer). The optional ffn_mask (F,)
switches neurons off without slicing (for teaching and importance studies).

Parameters (local names under ``encoder.layer.{i}.``): ``intermediate.dense.weight`` (F, d),
``intermediate.dense.bias`` (F,), ``output.dense.weight`` (d, F), ``output.dense.bias`` (d,),
``output.LayerNorm.weight``/``.bias`` (d,).
"""

from __future__ import annotations

from .. import kernels
from .linear import linear_backward, linear_forward
from .prefixed import Prefixed


def ffn_forward(x, p, eps, *, ffn_mask=None, output_dropout=None):
    """x (B, T, d) -> (y (B, T, d), cache)."""
    B, T, d = x.shape
    x2 = x.reshape(B * T, d)                                                     # (N, d)
    pre, i_cache = linear_forward(x2, p["intermediate.dense.weight"], p["intermediate.dense.bias"])  # (N, F)
    act = kernels.gelu(pre)                                                      # (N, F)
    if ffn_mask is not None:
        act *= ffn_mask                                                          # (N, F) * (F,)
    out2, o_cache = linear_forward(act, p["output.dense.weight"], p["output.dense.bias"])          # (N, d)
    if output_dropout is not None:
        out2 *= output_dropout.reshape(B * T, d)
    out2 += x2                                                                   # residual
    y, mean, rstd = kernels.layer_norm(out2, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"], eps)
    return y.reshape(B, T, d), (pre, i_cache, o_cache, out2, mean, rstd, ffn_mask, output_dropout, (B, T, d))


def ffn_backward(dy, cache, p, grads):
    """dy (B, T, d) -> dx (B, T, d); adds parameter gradients into `grads`."""
    pre, i_cache, o_cache, s2, mean, rstd, ffn_mask, output_dropout, (B, T, d) = cache
    ds2, dgamma, dbeta = kernels.layer_norm_backward(dy.reshape(B * T, d), s2,
                                                     p["output.LayerNorm.weight"], mean, rstd)  # (N, d)
    grads["output.LayerNorm.weight"] += dgamma
    grads["output.LayerNorm.bias"] += dbeta
    dout2 = ds2 * output_dropout.reshape(B * T, d) if output_dropout is not None else ds2
    dact, _ = linear_backward(dout2, o_cache, Prefixed(grads, "output.dense."))   # (N, F)
    if ffn_mask is not None:
        dact *= ffn_mask
    dpre = kernels.gelu_backward(dact, pre)                                       # (N, F)
    dx2, _ = linear_backward(dpre, i_cache, Prefixed(grads, "intermediate.dense."))  # (N, d)
    dx2 += ds2                                                                    # residual branch
    return dx2.reshape(B, T, d)
