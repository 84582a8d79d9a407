"""Argument checks shared by every kernel implementation.

The plain kernels (:mod:`npcosteff.kernels.reference`) and the compiled ones
(:mod:`npcosteff.kernels.fast`, :mod:`npcosteff.kernels.fused`) call the same checks, so
both reject the same inputs with the same messages, and the formulas in ``reference`` are
not interrupted by validation code.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(name: str, a) -> np.ndarray:
    """Return ``a`` as an ndarray, requiring a float32 or float64 dtype."""
    a = np.asarray(a)
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    return a


def same_shape(name: str, a: np.ndarray, ref_name: str, ref: np.ndarray) -> None:
    if a.shape != ref.shape:
        raise ValueError(f"{name} has shape {a.shape} but {ref_name} has shape {ref.shape}")


def same_dtype(name: str, a: np.ndarray, ref_name: str, ref: np.ndarray) -> None:
    if a.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but {ref_name} has dtype {ref.dtype}")


def last_axis(name: str, a: np.ndarray) -> int:
    """Length of the reduced (last) axis, which must exist and be non-empty."""
    if a.ndim == 0 or a.shape[-1] == 0:
        raise ValueError(f"{name} needs a non-empty last axis, got shape {a.shape}")
    return a.shape[-1]


def check_softmax_inputs(scores, additive_mask):
    """Validate softmax inputs; return ``(scores, mask)`` with the mask as float64 or None."""
    scores = float_array("scores", scores)
    last_axis("scores", scores)
    if additive_mask is None:
        return scores, None
    mask = np.asarray(additive_mask)
    if mask.dtype == np.bool_ or not np.issubdtype(mask.dtype, np.number) or np.iscomplexobj(mask):
        raise TypeError(
            "additive_mask must be a real additive mask (0 to keep a key, a large negative "
            f"number such as finfo(dtype).min to drop it), got dtype {mask.dtype}"
        )
    try:
        broadcast = np.broadcast_shapes(mask.shape, scores.shape)
    except ValueError:
        broadcast = None
    if broadcast != scores.shape:
        raise ValueError(
            f"additive_mask of shape {mask.shape} does not broadcast to scores of shape "
            f"{scores.shape} (expected e.g. (B, 1, 1, T) for scores (B, H, T, T))"
        )
    return scores, mask.astype(np.float64, copy=False)


EMPTY_ROW_MESSAGE = (
    "softmax row has every score equal to -inf (all keys masked with -inf); "
    "mask with finfo(dtype).min instead, which gives a uniform row"
)


def raise_if_empty_rows(row_max: np.ndarray) -> None:
    """A row whose scores are all -inf has no softmax; name the problem instead of NaN."""
    if np.any(np.isneginf(row_max)):
        raise ValueError(EMPTY_ROW_MESSAGE)


def check_layer_norm_params(x, gamma, beta, eps):
    x = float_array("x", x)
    d = last_axis("x", x)
    gamma = float_array("gamma", gamma)
    beta = float_array("beta", beta)
    for name, p in (("gamma", gamma), ("beta", beta)):
        if p.shape != (d,):
            raise ValueError(f"{name} must have shape ({d},) to match x {x.shape}, got {p.shape}")
        same_dtype(name, p, "x", x)
    if not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return x, gamma, beta, float(eps)


def check_bias_add_layer_norm(x, bias, residual, gamma, beta, eps, out):
    """-> (x, bias, residual, gamma, beta, eps): x and residual (..., d) of one shape and float
    dtype, bias (d,) of that dtype (contiguous), gamma and beta as :func:`check_layer_norm_params`;
    `out` None or an array of x's shape and dtype that is not the residual."""
    x, gamma, beta, eps = check_layer_norm_params(x, gamma, beta, eps)
    residual = float_array("residual", residual)
    same_shape("residual", residual, "x", x)
    same_dtype("residual", residual, "x", x)
    if bias is None:
        raise ValueError("bias is required (a block's output dense has one); pass zeros for none")
    bias = check_vector("bias", bias, x.shape[-1], x.dtype)
    if out is not None:
        if not isinstance(out, np.ndarray) or out.shape != x.shape or out.dtype != x.dtype:
            raise ValueError(f"out must be an array of x's shape {x.shape} and dtype {x.dtype}, got "
                             f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
        if np.shares_memory(out, residual):
            raise ValueError("out must not share memory with the residual (it may be x itself)")
    return x, bias, residual, gamma, beta, eps


def check_layer_norm_backward(dy, x, gamma, mean, rstd):
    dy = float_array("dy", dy)
    x = float_array("x", x)
    gamma = float_array("gamma", gamma)
    same_shape("dy", dy, "x", x)
    same_dtype("dy", dy, "x", x)
    d = last_axis("x", x)
    if gamma.shape != (d,):
        raise ValueError(f"gamma must have shape ({d},) to match x {x.shape}, got {gamma.shape}")
    same_dtype("gamma", gamma, "x", x)
    mean = float_array("mean", mean)
    rstd = float_array("rstd", rstd)
    for name, s in (("mean", mean), ("rstd", rstd)):
        if s.shape != x.shape[:-1]:
            raise ValueError(f"{name} must have shape {x.shape[:-1]} (x without its last axis), got {s.shape}")
    return dy, x, gamma, mean, rstd


def check_dropout_args(rng, shape, p, dtype):
    """Validate dropout arguments; return ``(shape tuple, p float, dtype)``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    shape = tuple(shape)
    if not all(isinstance(s, numbers.Integral) and s >= 0 for s in shape):
        raise ValueError(f"shape must be a tuple of non-negative integers, got {shape}")
    if not isinstance(p, numbers.Real) or not (0.0 <= p < 1.0):
        raise ValueError(f"dropout probability p must satisfy 0 <= p < 1, got {p!r}")
    dtype = np.dtype(dtype)
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dropout mask dtype must be float32 or float64, got {dtype}")
    return tuple(int(s) for s in shape), float(p), dtype


# ---------------------------------------------------------------------------
# The fused layer steps (reference.bias_gelu ... and their compiled twins in fused.py)
# ---------------------------------------------------------------------------


def _check_rows(name, a, width=None, dtype=None):
    """A C-contiguous (rows, features) float array, optionally of a given width and dtype."""
    if not isinstance(a, np.ndarray) or a.ndim != 2 or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous 2-D array (rows, features), got "
                         f"{type(a).__name__} {getattr(a, 'shape', '')}")
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {dtype}")
    if width is not None and a.shape[1] != width:
        raise ValueError(f"{name} has {a.shape[1]} columns, expected {width}")


def check_vector(name, v, width, dtype):
    """A (width,) contiguous vector of `dtype`; None gives ones (multiplying by 1 is exact)."""
    if v is None:
        return np.ones(width, dtype)
    v = np.ascontiguousarray(v, dtype=dtype)
    if v.shape != (width,):
        raise ValueError(f"{name} has shape {v.shape}, expected ({width},)")
    return v


def check_bias_gelu(pre, bias, ffn_mask, out):
    """-> (bias (F,), mask (F,) (ones when None), act (N, F): `out` or a new array)."""
    _check_rows("pre", pre)
    N, F = pre.shape
    bias = check_vector("bias", bias, F, pre.dtype)
    mask = check_vector("ffn_mask", ffn_mask, F, pre.dtype)
    act = np.empty_like(pre) if out is None else out
    _check_rows("out", act, F, pre.dtype)
    if act.shape[0] != N:
        raise ValueError(f"out has {act.shape[0]} rows, pre has {N}")
    return bias, mask, act


def check_bias_gelu_backward(dact, pre, ffn_mask, act_out):
    """-> mask (F,) (ones when None)."""
    _check_rows("pre", pre)
    N, F = pre.shape
    _check_rows("dact", dact, F, pre.dtype)
    if dact.shape[0] != N:
        raise ValueError(f"dact has {dact.shape[0]} rows, pre has {N}")
    if act_out is not None:
        _check_rows("act_out", act_out, F, pre.dtype)
        if act_out.shape[0] != N:
            raise ValueError(f"act_out has {act_out.shape[0]} rows, pre has {N}")
    return check_vector("ffn_mask", ffn_mask, F, pre.dtype)


def check_scatter_add(table, ids, rows):
    """-> (ids (N,) int64, rows (N, d) contiguous in table's dtype)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    rows = np.ascontiguousarray(rows, dtype=table.dtype)
    if table.ndim != 2 or not table.flags.c_contiguous:
        raise ValueError(f"table must be a C-contiguous (V, d) array, got shape {table.shape}")
    if rows.shape != (ids.size, table.shape[1]):
        raise ValueError(f"rows has shape {rows.shape}, expected ({ids.size}, {table.shape[1]})")
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"ids must lie in 0..{table.shape[0] - 1}, got {ids.min()}..{ids.max()}")
    return ids, rows


def _check_probs(name, a):
    if not isinstance(a, np.ndarray) or a.ndim != 4 or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous (B, H, T, T) array, got shape {np.shape(a)}")


def _like_probs(name, a, probs):
    """None, or `a` as a contiguous array of probs' shape and dtype."""
    if a is None:
        return None
    a = np.ascontiguousarray(a, dtype=probs.dtype)
    if a.shape != probs.shape:
        raise ValueError(f"{name} has shape {a.shape}, probs have {probs.shape}")
    return a


def check_attention_weights(probs, probs_dropout, head_mask):
    """-> (head_scale (H,) (ones when None), probs_dropout (B, H, T, T) or None)."""
    _check_probs("probs", probs)
    return check_vector("head_mask", head_mask, probs.shape[1], probs.dtype), _like_probs("probs_dropout", probs_dropout, probs)


def check_attention_probs_backward(dweights, probs, head_mask, probs_dropout, dprobs_extra):
    """-> (head_scale (H,), probs_dropout or None, dprobs_extra or None)."""
    _check_probs("dweights", dweights)
    _check_probs("probs", probs)
    if dweights.shape != probs.shape or dweights.dtype != probs.dtype:
        raise ValueError(f"dweights {dweights.shape} {dweights.dtype} and probs {probs.shape} {probs.dtype} differ")
    return (check_vector("head_mask", head_mask, probs.shape[1], probs.dtype),
            _like_probs("probs_dropout", probs_dropout, probs), _like_probs("dprobs_extra", dprobs_extra, probs))


def check_attention_core(q, k, v, additive_mask, probs_dropout, head_mask, *, dcontext=None, probs=None,
                         dprobs_extra=None):
    """The attention core's arguments, forward (q, k, v and the masks) and backward (also
    dcontext and probs, and dprobs_extra): q, k, v, dcontext (B, H, T, d_h) of one float dtype;
    additive_mask broadcastable to the scores (B, H, T, T); probs_dropout, probs, dprobs_extra
    (B, H, T, T); head_mask (H,).

    -> (mask, probs_dropout, head_mask, dprobs_extra): the mask as a float64 view with the
    batch axis in front, e.g. (B, 1, 1, T) (None when absent), the others contiguous in q's
    dtype or None.
    """
    q = float_array("q", q)
    if q.ndim != 4:
        raise ValueError(f"q must be a (B, H, T, d_h) array, got shape {q.shape}")
    named = [("k", k), ("v", v)] + ([("dcontext", dcontext)] if dcontext is not None else [])
    for name, a in named:
        a = float_array(name, a)
        if a.shape != q.shape or a.dtype != q.dtype:
            raise ValueError(f"{name} {a.shape} {a.dtype} and q {q.shape} {q.dtype} differ")
    B, H, T, _ = q.shape
    scores_shape = (B, H, T, T)
    mask = None
    if additive_mask is not None:
        _, mask = check_softmax_inputs(np.broadcast_to(np.zeros((), q.dtype), scores_shape), additive_mask)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)          # left-padded to 4 axes
        mask = np.broadcast_to(mask, (B,) + mask.shape[1:])                 # a batch axis to slice
    if probs is not None:
        _check_probs("probs", probs)
        if probs.shape != scores_shape or probs.dtype != q.dtype:
            raise ValueError(f"probs {probs.shape} {probs.dtype} do not match q {q.shape} {q.dtype}: "
                             f"expected {scores_shape} {q.dtype}")

    def like_scores(name, a):
        if a is None:
            return None
        a = np.ascontiguousarray(a, dtype=q.dtype)
        if a.shape != scores_shape:
            raise ValueError(f"{name} has shape {a.shape}, the scores have {scores_shape}")
        return a

    head_mask = None if head_mask is None else check_vector("head_mask", head_mask, H, q.dtype)
    return mask, like_scores("probs_dropout", probs_dropout), head_mask, like_scores("dprobs_extra", dprobs_extra)
