"""The checks of the width exercises (notebook 4): head and FFN neuron scores from the
per-weight Taylor scores, slicing an FFN to its kept neurons, the low-rank word embedding."""

from __future__ import annotations

import numpy as np

from ..config import CostEffConfig
from ..importance import head_scores as _library_head_scores
from ..importance import neuron_scores as _library_neuron_scores
from ..prune import factorize_embedding
from .compare import as_float_array, call, call_returning, compare, name_of, passed


# --------------------------------------------------------------------------- Taylor importance


class _HeadConfig:
    """The three fields of a config that `importance.head_scores` reads."""

    def __init__(self, num_heads, head_size):
        self.num_hidden_layers = 1
        self.heads_per_layer = [num_heads]
        self.attention_head_size = head_size


def check_head_scores(fn, seed: int = 0) -> bool:
    """Check ``fn(W_O, grads, num_heads) -> (H,)``: the Taylor score of each attention head.

    W_O is an attention output weight (d, A), A = H * d_h (head h owns columns h*d_h..(h+1)*d_h-1);
    grads (n_batches, d, A) the gradients of the loss with respect to W_O, one per batch. The
    score of a weight is ``|w * sum_batches |grad||`` and a head's score the sum over its
    columns and all rows; compared with ``importance.head_scores`` of the library.
    """
    rng = np.random.default_rng(seed)
    name = name_of(fn)
    for d, H, dh, n_batches in ((8, 4, 2, 3), (12, 3, 4, 5)):
        W = rng.standard_normal((d, H * dh))
        grads = rng.standard_normal((n_batches, d, H * dh))             # both signs: sum |g| != |sum g|
        weight_scores = {"encoder.layer.0.attention.output.dense.weight": np.abs(W * np.abs(grads).sum(axis=0))}
        expected = _library_head_scores(weight_scores, _HeadConfig(H, dh))[0]
        ok, got = call(fn, W.copy(), grads.copy(), H)
        if not ok:
            return False
        compare(name, "the score vector", got, expected, 1e-10,
                 f" for W_O of shape {(d, H * dh)} ({H} heads of d_h = {dh}) and {n_batches} batches")
    return passed(name, "equals importance.head_scores")


# --------------------------------------------------------------------------- FFN neurons: scores, slicing


class _LayerConfig:
    """The fields of a one-layer config that `importance.neuron_scores` reads."""

    num_hidden_layers = 1


def check_neuron_scores(fn, seed: int = 0) -> bool:
    """Check ``fn(s_in, s_out) -> (F,)``: FFN neuron scores from the per-weight scores.

    s_in (F, d) is the Taylor score of every weight of ``intermediate.dense.weight`` (W_I, one
    row per neuron), s_out (d, F) that of ``output.dense.weight`` (W_O', one column per
    neuron). A neuron's score sums its row of s_in and its column of s_out. Compared with
    ``importance.neuron_scores``.
    """
    rng = np.random.default_rng(seed)
    name = name_of(fn)
    for d, F in ((6, 10), (8, 5)):
        s_in, s_out = np.abs(rng.standard_normal((F, d))), np.abs(rng.standard_normal((d, F)))
        expected = _library_neuron_scores({"encoder.layer.0.intermediate.dense.weight": s_in,
                                           "encoder.layer.0.output.dense.weight": s_out}, _LayerConfig())[0]
        ok, got = call(fn, s_in.copy(), s_out.copy())
        if not ok:
            return False
        where = f" for s_in of shape {(F, d)} and s_out of shape {(d, F)}"
        try:
            compare(name, "the score vector", got, expected, 1e-12, where)
        except AssertionError as e:
            got_arr = as_float_array(got)
            for half, what in ((s_in.sum(axis=1), "W_I's rows only"), (s_out.sum(axis=0), "W_O''s columns only")):
                if got_arr.shape == half.shape and np.allclose(got_arr, half):
                    raise AssertionError(f"{e} It sums {what}: a neuron owns a row of W_I and a column of "
                                         "W_O', and its score adds both.") from None
            raise
    return passed(name, "equals importance.neuron_scores")


def check_ffn_slice(fn, seed: int = 0) -> bool:
    """Check ``fn(W_I, b_I, W_O, keep) -> (W_I', b_I', W_O')``: one FFN cut to the kept neurons.

    W_I (F, d), b_I (F,), W_O (d, F) in torch's (out, in) layout; keep (k,) the indices of the
    neurons to keep, in no particular order. The sliced block (W_I' (k, d), b_I' (k,),
    W_O' (d, k)) must compute exactly what the whole block computes with the 0/1 mask of the
    kept neurons: both are run with ``nn.ffn.ffn_forward`` on random inputs, in float64.
    """
    from ..nn.ffn import ffn_forward

    rng = np.random.default_rng(seed)
    name = name_of(fn)
    d, F, eps = 8, 12, 1e-12
    p = {"intermediate.dense.weight": rng.standard_normal((F, d)), "intermediate.dense.bias": rng.standard_normal(F),
         "output.dense.weight": rng.standard_normal((d, F)), "output.dense.bias": rng.standard_normal(d),
         "output.LayerNorm.weight": 1.0 + 0.3 * rng.standard_normal(d),
         "output.LayerNorm.bias": 0.5 * rng.standard_normal(d)}
    x = rng.standard_normal((2, 5, d))
    for k in (5, 1, F):
        keep = rng.permutation(F)[:k]                                        # not sorted
        mask = np.zeros(F)
        mask[keep] = 1.0
        expected, _ = ffn_forward(x.copy(), p, eps, ffn_mask=mask)
        ok, out = call(fn, p["intermediate.dense.weight"].copy(), p["intermediate.dense.bias"].copy(),
                        p["output.dense.weight"].copy(), keep.copy())
        if not ok:
            return False
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise AssertionError(f"{name} must return three arrays (W_I', b_I', W_O'), got {type(out).__name__}"
                                 + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
        sliced = {}
        for what, got, want in (("W_I'", out[0], (k, d)), ("b_I'", out[1], (k,)), ("W_O'", out[2], (d, k))):
            if got is None or np.shape(got) != want:
                raise AssertionError(f"{name}: {what} has shape {None if got is None else np.shape(got)}, expected "
                                     f"{want} for {k} kept neurons of {F} (W_I is (F, d) = {(F, d)}, W_O is "
                                     f"(d, F) = {(d, F)}: a neuron is a row of W_I and a column of W_O)")
            sliced[what] = np.ascontiguousarray(got, dtype=np.float64)
        q = {**p, "intermediate.dense.weight": sliced["W_I'"], "intermediate.dense.bias": sliced["b_I'"],
             "output.dense.weight": sliced["W_O'"]}
        got_y, _ = ffn_forward(x.copy(), q, eps)
        compare(name, "the output of the sliced FFN", got_y, expected, 1e-10,
                 f" against the whole FFN with the 0/1 mask of keep = {keep.tolist()} (the same neurons, in "
                 "the same order, must come from W_I's rows, b_I and W_O's columns)")
    return passed(name, "the sliced FFN computes what the masked one does (nn.ffn.ffn_forward, ffn_mask)")


# --------------------------------------------------------------------------- low-rank embedding


def check_low_rank_embedding(fn, seed: int = 0) -> bool:
    """Check ``fn(E, r) -> (A, P)``: the best rank-r factorization ``E ~ A @ P`` of an embedding.

    E (V, d); A (V, r), P (r, d). The product must be the best rank-r approximation (truncated
    SVD, Eckart-Young), compared with the product of the factors of ``prune.factorize_embedding``
    on a small model and with the error bound: ``||E - A P||_F^2`` is the sum of the dropped
    squared singular values. (The factors themselves are not unique; their product is.)
    """
    from ..model import CostEffModel

    rng = np.random.default_rng(seed)
    name = name_of(fn)
    for V, d, r in ((40, 12, 4), (25, 16, 9), (30, 8, 8)):
        config = CostEffConfig(vocab_size=V, hidden_size=d, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=8, max_position_embeddings=8)
        model = CostEffModel(config, dtype=np.float64, seed=seed)
        E = rng.standard_normal((V, d))
        model.params["embeddings.word_embeddings.weight"] = E.copy()
        low = factorize_embedding(model, r)
        expected = (low.params["embeddings.word_embeddings.weight"]
                    @ low.params["embeddings.word_embeddings.projection"])           # (V, d)
        sigma = np.linalg.svd(E, compute_uv=False)
        best = float(np.sum(sigma[r:] ** 2))
        ok, out = call_returning(fn, 2, "two arrays (A, P)", E.copy(), r)
        if not ok:
            return False
        where = f" for E of shape {(V, d)} and rank r = {r}"
        for what, got, want in (("A", out[0], (V, r)), ("P", out[1], (r, d))):
            if got is None or np.shape(got) != want:
                raise AssertionError(f"{name}: {what} has shape {None if got is None else np.shape(got)}, "
                                     f"expected {want}{where}")
        product = np.asarray(out[0], dtype=np.float64) @ np.asarray(out[1], dtype=np.float64)
        error = float(np.sum((E - product) ** 2))
        try:
            compare(name, "A @ P", product, expected, 1e-9, where)
        except AssertionError as e:
            raise AssertionError(f"{e} Its squared error ||E - A P||^2 is {error:.6g}; the best rank-{r} "
                                 f"approximation's is {best:.6g}, the sum of the dropped squared singular "
                                 "values (Eckart-Young).") from None
    return passed(name, "A @ P equals prune.factorize_embedding's product, the best rank-r approximation")
