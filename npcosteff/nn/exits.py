"""Exits: a pooler, dropout and a linear classifier after a layer (docs/method.md, 1).

    logits = classifier(dropout(pool(h)))        h (B, T, d) -> logits (B, C)

Poolers: ``cls_tanh`` (default, as in the paper's code): tanh(h[:, 0]); ``mean``: the mean of
h over the non-padding tokens; ``dense``: BERT's pooler tanh(h[:, 0] W^T + b), with weights of
its own per exit.

Parameters (local names under ``exits.{i}.``): ``classifier.weight`` (C, d),
``classifier.bias`` (C,), and with the dense pooler ``pooler.dense.weight`` (d, d),
``pooler.dense.bias`` (d,).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from .linear import linear_backward, linear_forward
from .prefixed import Prefixed


class PoolerCache(NamedTuple):
    """What the pooler's backward pass needs."""

    kind: str                             # "cls_tanh" | "mean" | "dense"
    saved: object                         # tanh output (B, d), or (mask (B, T), counts (B, 1)) for "mean"
    h_shape: tuple                        # (B, T, d)
    dense: Optional[tuple]                # cache of the dense pooler's linear layer, else None


class ExitCache(NamedTuple):
    """What an exit's backward pass needs."""

    pooler: PoolerCache
    classifier: tuple                     # cache of the classifier's linear layer
    dropout_mask: Optional[np.ndarray]    # (B, d) or None


def pooler_forward(h, attention_mask, p, kind):
    """h (B, T, d), attention_mask (B, T) -> pooled (B, d), PoolerCache."""
    if kind == "cls_tanh":
        pooled = np.tanh(h[:, 0])                                    # (B, d)
        return pooled, PoolerCache(kind, pooled, h.shape, None)
    if kind == "mean":
        m = attention_mask.astype(h.dtype)                           # (B, T)
        n = m.sum(axis=1, keepdims=True)                             # (B, 1) non-padding tokens
        pooled = np.einsum("btd,bt->bd", h, m) / n                   # (B, d)
        return pooled, PoolerCache(kind, (m, n), h.shape, None)
    if kind == "dense":
        z, lin_cache = linear_forward(h[:, 0], p["pooler.dense.weight"], p["pooler.dense.bias"])  # (B, d)
        pooled = np.tanh(z)
        return pooled, PoolerCache(kind, pooled, h.shape, lin_cache)
    raise ValueError(f"unknown pooler {kind!r}")


def pooler_backward(dpooled, cache: PoolerCache, grads):
    """dpooled (B, d) -> dh (B, T, d); adds the dense pooler's gradients into `grads`."""
    kind, saved, h_shape, lin_cache = cache
    dh = np.zeros(h_shape, dpooled.dtype)                            # (B, T, d)
    if kind == "cls_tanh":
        dh[:, 0] = dpooled * (1.0 - saved * saved)                  # tanh' = 1 - tanh^2
    elif kind == "mean":
        m, n = saved
        dh += (dpooled / n)[:, None, :] * m[:, :, None]              # spread over real tokens
    else:
        dz = dpooled * (1.0 - saved * saved)
        dh[:, 0], _ = linear_backward(dz, lin_cache, Prefixed(grads, "pooler.dense."))
    return dh


def exit_forward(h, attention_mask, p, pooler, dropout_mask=None):
    """h (B, T, d) -> logits (B, C), ExitCache."""
    pooled, pool_cache = pooler_forward(h, attention_mask, p, pooler)   # (B, d)
    if dropout_mask is not None:
        pooled = pooled * dropout_mask
    logits, lin_cache = linear_forward(pooled, p["classifier.weight"], p["classifier.bias"])  # (B, C)
    return logits, ExitCache(pool_cache, lin_cache, dropout_mask)


def exit_backward(dlogits, cache: ExitCache, grads):
    """dlogits (B, C) -> dh (B, T, d); adds the exit's parameter gradients into `grads`."""
    pool_cache, lin_cache, dropout_mask = cache
    dpooled, _ = linear_backward(dlogits, lin_cache, Prefixed(grads, "classifier."))  # (B, d)
    if dropout_mask is not None:
        dpooled = dpooled * dropout_mask
    return pooler_backward(dpooled, pool_cache, grads)
