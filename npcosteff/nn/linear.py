"""Linear layer: ``y = x W^T + b`` with torch's (out, in) weight layout.

Shapes: x (..., in), W (out, in), b (out,), y (..., out). The leading axes are flattened to
rows so that each product is a single 2-D BLAS call.
"""

from __future__ import annotations

import numpy as np


def linear_forward(x, weight, bias):
    """x (..., in) -> y (..., out); cache keeps x and W for the backward pass."""
    x2 = x.reshape(-1, x.shape[-1])          # (N, in) view, N = prod(leading axes)
    y = x2 @ weight.T                        # (N, out): one sgemm/dgemm, W^T is a free view
    if bias is not None:
        y += bias                            # in place: no second (N, out) temporary
    return y.reshape(*x.shape[:-1], weight.shape[0]), (x2, weight, x.shape)


def linear_backward(dy, cache, grads=None):
    """dy (..., out) -> dx (..., in); adds dW (out, in) and db (out,) into `grads`.

    `grads` maps ``"weight"``/``"bias"`` to buffers to accumulate into (``+=``); when it is
    None fresh zero buffers are made, so the function also works on its own.
    """
    x2, weight, x_shape = cache
    dy2 = dy.reshape(-1, weight.shape[0])    # (N, out)
    if grads is None:
        grads = {"weight": np.zeros_like(weight), "bias": np.zeros(weight.shape[0], weight.dtype)}
    linear_param_grads(dy2, x2, grads)
    dx = linear_input_grad(dy2, weight)      # (N, in)
    return dx.reshape(x_shape), grads


def linear_param_grads(dy2, x2, grads):
    """The parameter half of the backward: ``dW += dy2^T x2`` (out, in), ``db += sum_n dy2`` (out,).

    dy2 (N, out), x2 (N, in). Split from :func:`linear_input_grad` so that a layer can take
    the input gradient first (the FFN recomputes its GELU output from it, see ffn.py).
    """
    grads["weight"] += dy2.T @ x2            # (out, in) = (out, N) @ (N, in)
    if "bias" in grads:
        grads["bias"] += dy2.sum(axis=0)     # (out,)


def linear_input_grad(dy2, weight):
    """The input half of the backward: ``dx = dy2 W``, (N, out) @ (out, in) -> (N, in)."""
    return dy2 @ weight
