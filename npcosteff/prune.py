"""Structured pruning in width: masks, physical slicing and a low-rank word embedding (docs/method.md, 4 and 5).

A slender layer keeps H'_i of its heads and F'_i of its FFN neurons. Two ways to get there:

* **masks** (``model(..., head_mask=, ffn_mask=)``): a 0 switches a head or neuron off while
  the matrices keep their size -- for teaching and importance studies;
* **slicing** (`npcosteff.surgery.slice_model`): the rows and columns of the removed heads and
  neurons are cut out, giving a smaller model whose outputs are *exactly* those of the masked
  model (the correspondence is in `npcosteff.surgery`).

:func:`factorize_embedding` replaces the word embedding E (V, d) by its best rank-r
approximation ``E' @ P`` with E' (V, r) and P (r, d) (truncated SVD, Eckart-Young), or
lowers the rank of an already factorized embedding.
"""

from __future__ import annotations

import operator
from typing import Optional, Sequence

import numpy as np

from .model import CostEffModel

__all__ = ["keep_top", "keep_from_importance", "masks_from_keep", "masks_from_importance",
           "factorize_embedding", "embedding_rank_of", "check_keep"]


# --------------------------------------------------------------------------- choosing what to keep
def keep_top(scores, k) -> np.ndarray:
    """Sorted indices (k,) of the k highest scores; ties go to the lower index.

    ``keep_top([3, 1, 3, 2], 2) -> [0, 2]``. Deterministic: a stable sort of ``-scores``
    keeps equal scores in index order.
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
        raise TypeError(f"scores must be real numbers, got dtype {scores.dtype}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: they cannot be ranked")
    k = _integer(k, "k")
    if not 1 <= k <= scores.size:
        raise ValueError(f"k = {k} is outside 1..{scores.size} (the number of scores)")
    order = np.argsort(-scores, kind="stable")                 # highest first, ties by index
    return np.sort(order[:k]).astype(np.int64)


def _integer(value, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None


def _per_layer_targets(target, widths: Sequence[int], what: str, unit: str) -> list:
    """A width target (int for every layer, a list per layer, or None = keep all) as a list,
    checked against the current widths."""
    L = len(widths)
    if target is None:
        return list(widths)
    if np.ndim(target) == 0:
        target = [target] * L
    target = list(target)
    if len(target) != L:
        raise ValueError(f"{what} has {len(target)} entries for {L} layers")
    out = []
    for i, (t, w) in enumerate(zip(target, widths)):
        t = _integer(t, f"{what}[{i}]")
        if t < 1:
            raise ValueError(f"{what}[{i}] = {t}: a layer must keep at least one {unit}")
        if t > w:
            raise ValueError(f"{what}[{i}] = {t} is more than the {w} {unit}s layer {i} has")
        out.append(t)
    return out


def keep_from_importance(importance, heads_per_layer_target, ffn_per_layer_target):
    """The indices of the top-scoring heads and neurons of every layer.

    `importance` has ``heads`` (L arrays (H_i,)) and ``neurons`` (L arrays (F_i,)) scores
    (:class:`npcosteff.importance.Importance`). Targets are an int for every layer, a list
    of L ints, or None (keep the whole layer). Returns ``(keep_heads, keep_neurons)``, two
    lists of L sorted index arrays.
    """
    head_widths = [np.size(s) for s in importance.heads]
    ffn_widths = [np.size(s) for s in importance.neurons]
    if len(head_widths) != len(ffn_widths):
        raise ValueError(f"importance has head scores for {len(head_widths)} layers but neuron "
                         f"scores for {len(ffn_widths)}")
    heads = _per_layer_targets(heads_per_layer_target, head_widths, "heads_per_layer_target", "head")
    ffn = _per_layer_targets(ffn_per_layer_target, ffn_widths, "ffn_per_layer_target", "neuron")
    keep_heads = [keep_top(s, k) for s, k in zip(importance.heads, heads)]
    keep_neurons = [keep_top(s, k) for s, k in zip(importance.neurons, ffn)]
    return keep_heads, keep_neurons


def _masks(keep: list, widths) -> list:
    """0/1 masks (W_i,) that are 1 at the kept indices of each layer."""
    masks = []
    for k, w in zip(keep, widths):
        m = np.zeros(int(w))                                     # (W_i,)
        m[k] = 1.0
        masks.append(m)
    return masks


def masks_from_keep(config, keep_heads=None, keep_neurons=None):
    """0/1 head masks (L arrays (H_i,)) and FFN masks (L arrays (F_i,)) that keep the given
    indices (None: keep everything), for ``model(..., head_mask=, ffn_mask=)``."""
    keep_heads = check_keep(keep_heads, config.heads_per_layer, "keep_heads", "head")
    keep_neurons = check_keep(keep_neurons, config.intermediate_per_layer, "keep_neurons", "neuron")
    return (_masks(keep_heads, config.heads_per_layer),
            _masks(keep_neurons, config.intermediate_per_layer))


def masks_from_importance(importance, heads_per_layer_target, ffn_per_layer_target):
    """0/1 masks ``(head_masks, ffn_masks)`` that keep the top-scoring heads and neurons of
    every layer (see :func:`keep_from_importance` for the targets)."""
    keep_heads, keep_neurons = keep_from_importance(importance, heads_per_layer_target, ffn_per_layer_target)
    return (_masks(keep_heads, [np.size(s) for s in importance.heads]),
            _masks(keep_neurons, [np.size(s) for s in importance.neurons]))


# --------------------------------------------------------------------------- keep lists
def check_keep(keep, widths: Sequence[int], what: str, unit: str) -> list:
    """`keep` (None, or L index arrays / Nones) as L sorted int64 arrays, or a clear error."""
    L = len(widths)
    if keep is None:
        return [np.arange(w) for w in widths]
    keep = list(keep)
    if len(keep) != L:
        raise ValueError(f"{what} has {len(keep)} entries for {L} layers")
    out = []
    for i, (k, w) in enumerate(zip(keep, widths)):
        if k is None:
            out.append(np.arange(w))
            continue
        k = np.asarray(k)
        if k.ndim != 1:
            raise ValueError(f"{what}[{i}] must be a one-dimensional index array, got shape {k.shape}")
        if k.size == 0:
            raise ValueError(f"{what}[{i}] is empty: layer {i} must keep at least one {unit}")
        if not np.issubdtype(k.dtype, np.integer):
            raise TypeError(f"{what}[{i}] must hold integer indices, got dtype {k.dtype}")
        if k.min() < 0 or k.max() >= w:
            bad = int(k.min()) if k.min() < 0 else int(k.max())
            raise ValueError(f"{what}[{i}] has index {bad}, outside 0..{w - 1} (layer {i} has {w} {unit}s)")
        unique, counts = np.unique(k, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{what}[{i}] repeats the {unit} index(es) {unique[counts > 1].tolist()}")
        out.append(np.sort(k).astype(np.int64))
    return out


# --------------------------------------------------------------------------- low-rank embedding
def embedding_rank_of(model: CostEffModel) -> int:
    """The current rank bound of the word embedding: r when factorized, else d."""
    r = model.config.embedding_rank
    return model.config.hidden_size if r is None else r


def _truncated_svd(E: np.ndarray, P: Optional[np.ndarray], rank: int):
    """Best rank-`rank` factors of ``E`` (V, d), or of ``E @ P`` with E (V, r0), P (r0, d).

    Returns ``(U_r * S_r, V_r^T)`` of shapes (V, rank) and (rank, d). For a product, the
    (V, d) matrix is never formed: with ``E = Q R`` (thin QR, Q orthonormal (V, k)), the
    product is ``Q (R P)`` and the SVD of the small (k, d) matrix ``R P = U' S Vt`` gives the
    SVD of the product, ``(Q U') S Vt``, since Q U' has orthonormal columns too.
    """
    if P is None:
        U, S, Vt = np.linalg.svd(E, full_matrices=False)      # (V, k), (k,), (k, d)
    else:
        Q, R = np.linalg.qr(E)                                 # (V, k), (k, r0)
        U_small, S, Vt = np.linalg.svd(R @ P, full_matrices=False)   # (k, m), (m,), (m, d)
        U = Q @ U_small                                        # (V, m), orthonormal columns
    return U[:, :rank] * S[:rank], Vt[:rank]                   # (V, r), (r, d)


def factorize_embedding(model: CostEffModel, rank) -> CostEffModel:
    """A new model whose word embedding is the best rank-`rank` approximation of the current one.

    * unfactorized E (V, d): truncated SVD ``E ~ U_r S_r V_r^T``; the new parameters are
      ``word_embeddings.weight = U_r S_r`` (V, r) and ``word_embeddings.projection = V_r^T``
      (r, d), so ``word = E'[ids] @ P``;
    * factorized ``E @ P`` (V, r0) (r0, d): the product is re-factorized to rank r <= r0.

    By Eckart-Young the squared Frobenius error is the sum of the dropped squared singular
    values. ``rank`` must lie in 1..min(V, current rank) (current rank: d, or r0). The SVD is
    computed in float64 and stored in the model's dtype. Every other parameter is copied.
    """
    if not isinstance(model, CostEffModel):
        raise TypeError(f"model must be a CostEffModel, got {type(model).__name__}")
    rank = _integer(rank, "rank")
    c = model.config
    current = embedding_rank_of(model)
    limit = min(current, c.vocab_size)
    if not 1 <= rank <= limit:
        what = f"the current rank r0 = {current}" if c.embedding_rank is not None else f"hidden_size d = {current}"
        raise ValueError(f"embedding rank {rank} is outside 1..{limit} ({what}, vocab_size V = {c.vocab_size})")
    E = model.params["embeddings.word_embeddings.weight"].astype(np.float64)         # (V, d) or (V, r0)
    P = model.params.get("embeddings.word_embeddings.projection")
    P = None if P is None else P.astype(np.float64)                                  # (r0, d)
    factor, projection = _truncated_svd(E, P, rank)                                  # (V, r), (r, d)
    params = {n: p.copy() for n, p in model.params.items() if n != "embeddings.word_embeddings.projection"}
    params["embeddings.word_embeddings.weight"] = factor
    params["embeddings.word_embeddings.projection"] = projection
    return CostEffModel(c.replace(embedding_rank=rank), params, dtype=model.dtype)
