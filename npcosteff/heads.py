"""Which columns belong to which attention head: the one map that attention, its lanes twin,
importance and slicing all use.

A layer with H heads of size d_h has A = H * d_h attention columns. Head h owns columns
``h*d_h .. (h+1)*d_h - 1`` of the query, key and value projections (rows of their (A, d)
weights, entries of their biases) and the same columns of the output dense's (d, A) weight.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PROJECTIONS", "split_heads", "merge_heads", "head_columns", "head_span", "per_head"]

PROJECTIONS = ("query", "key", "value")


def split_heads(x2, B, T, H):
    """(B*T, H*d_h) rows -> (B, H, T, d_h): head h is columns h*d_h..(h+1)*d_h (a view, no copy)."""
    return x2.reshape(B, T, H, -1).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, d_h) -> (B*T, H*d_h) rows, the heads side by side (a copy)."""
    B, H, T, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B * T, H * dh)


def head_columns(heads: np.ndarray, head_size: int) -> np.ndarray:
    """(k,) head indices -> (k * d_h,) the columns they own, head by head."""
    heads = np.asarray(heads, dtype=np.int64)
    return (heads[:, None] * head_size + np.arange(head_size)[None, :]).reshape(-1)


def head_span(first: int, stop: int, head_size: int) -> slice:
    """The columns of the consecutive heads ``first .. stop - 1``, as a slice."""
    return slice(first * head_size, stop * head_size)


def per_head(per_column: np.ndarray, num_heads: int) -> np.ndarray:
    """(H*d_h,) a value per column -> (H,) its sum over each head's columns."""
    return np.asarray(per_column).reshape(num_heads, -1).sum(axis=1)
