"""BERT embeddings: word + position + token type, then LayerNorm and dropout.

With a factorized word embedding (docs/method.md, 1) the word vector is ``E[ids] @ P`` with
E (V, r) and P (r, d); otherwise it is ``E[ids]`` with E (V, d).

Parameters (local names under ``embeddings.``): ``word_embeddings.weight``,
``word_embeddings.projection`` (factorized only), ``position_embeddings.weight``,
``token_type_embeddings.weight``, ``LayerNorm.weight``, ``LayerNorm.bias``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from .. import kernels


class WordCache(NamedTuple):
    """What the word embedding's backward pass needs."""

    input_ids: np.ndarray                 # (B, T) token ids
    rows: Optional[np.ndarray]            # (B, T, r) the gathered rows E[ids] (factorized only), else None


class EmbeddingsCache(NamedTuple):
    """What the embeddings' backward pass needs."""

    x: np.ndarray                         # (B, T, d) word + position + token type (LayerNorm input)
    mean: np.ndarray                      # (B, T) LayerNorm statistics
    rstd: np.ndarray                      # (B, T)
    token_type_ids: np.ndarray            # (B, T)
    dropout_mask: Optional[np.ndarray]    # (B, T, d) or None


def word_embeddings_forward(input_ids, p):
    """input_ids (B, T) int -> (word vectors (B, T, d), WordCache)."""
    rows = p["word_embeddings.weight"][input_ids]                  # (B, T, r or d): a gather, copies
    if "word_embeddings.projection" in p:
        proj = p["word_embeddings.projection"]                     # (r, d)
        word = (rows.reshape(-1, proj.shape[0]) @ proj).reshape(*input_ids.shape, proj.shape[1])
        return word, WordCache(input_ids, rows)
    return rows, WordCache(input_ids, None)


def word_embeddings_backward(dword, cache: WordCache, p, grads):
    """dword (B, T, d): adds into the gradient of E (and P) in `grads`."""
    input_ids, rows = cache
    ids = input_ids.reshape(-1)                                    # (N,)
    d2 = dword.reshape(ids.size, -1)                               # (N, d)
    if rows is not None:                                           # factorized: word = rows @ P
        proj = p["word_embeddings.projection"]                     # (r, d)
        grads["word_embeddings.projection"] += rows.reshape(ids.size, -1).T @ d2   # (r, d)
        d2 = d2 @ proj.T                                           # (N, r): gradient of E[ids]
    # Scatter-add: one row of dE per token; repeated ids must add up (fancy `+=` would keep only
    # one of them). This is np.add.at(dE, ids, d2) in the same order, as one compiled loop.
    kernels.scatter_add_rows(grads["word_embeddings.weight"], ids, d2)


def embeddings_forward(inputs_embeds, token_type_ids, p, eps, dropout_mask=None):
    """inputs_embeds (B, T, d) word vectors, token_type_ids (B, T) -> ((B, T, d), EmbeddingsCache)."""
    B, T, d = inputs_embeds.shape
    x = inputs_embeds + p["position_embeddings.weight"][:T]        # (B, T, d): positions 0..T-1
    x += p["token_type_embeddings.weight"][token_type_ids]         # (B, T, d)
    y, mean, rstd = kernels.layer_norm(x, p["LayerNorm.weight"], p["LayerNorm.bias"], eps)
    if dropout_mask is not None:
        y = y * dropout_mask
    return y, EmbeddingsCache(x, mean, rstd, token_type_ids, dropout_mask)


def embeddings_backward(dy, cache: EmbeddingsCache, p, grads):
    """dy (B, T, d) -> gradient of inputs_embeds (B, T, d); adds parameter gradients into `grads`."""
    x, mean, rstd, token_type_ids, dropout_mask = cache
    T = x.shape[1]
    if dropout_mask is not None:
        dy = dy * dropout_mask
    dx, dgamma, dbeta = kernels.layer_norm_backward(dy, x, p["LayerNorm.weight"], mean, rstd)
    grads["LayerNorm.weight"] += dgamma
    grads["LayerNorm.bias"] += dbeta
    grads["position_embeddings.weight"][:T] += dx.sum(axis=0)      # (T, d): summed over the batch
    dtype_table = grads["token_type_embeddings.weight"]            # (type_vocab, d)
    for t in range(dtype_table.shape[0]):                          # type_vocab is tiny (2)
        sel = token_type_ids == t                                  # (B, T) bool
        if sel.any():
            dtype_table[t] += dx[sel].sum(axis=0)
    return dx                                                      # x = inputs_embeds + ..., so d(inputs_embeds) = dx
