"""Pruning in width: slicing gives exactly the masked model, the SVD embedding is the best
low-rank one, sliced models round-trip through checkpoints, and bad requests are refused."""

import numpy as np
import pytest

from npcosteff.config import CostEffConfig
from npcosteff.importance import Importance
from npcosteff.model import CostEffModel
from npcosteff.prune import factorize_embedding, keep_from_importance, keep_top, masks_from_importance, masks_from_keep
from npcosteff.surgery import slice_model

# Slicing removes exact zeros from sums (a masked head multiplies 0 * V, a masked neuron
# 0 * column); only BLAS's summation order over the remaining terms can differ: ~1e-16 of
# values of order 1, far below 1e-12.
EXACT = 1e-12


def _config(**kw):
    base = dict(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=20,
                max_position_embeddings=24, num_labels=3, exit_start=1, initializer_range=0.3)
    base.update(kw)
    return CostEffConfig(**base)


def _batch(seed=0, B=3, T=7, lengths=(7, 5, 3), vocab=40):
    """Random ids with padding: sample b has lengths[b] real tokens, the rest is padding."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)   # (B, T)
    ids = np.where(mask > 0, rng.integers(1, vocab, (B, T)), 0)                      # (B, T)
    types = (np.arange(T)[None, :] >= 2).astype(np.int64).repeat(B, axis=0)           # two segments
    return ids, mask, types


# Uneven per-layer targets: 2, 1 and 4 of 4 heads, 3, 1 and 10 of 20 neurons.
KEEP_HEADS = [np.array([0, 2]), np.array([3]), np.array([0, 1, 2, 3])]
KEEP_NEURONS = [np.array([1, 5, 7]), np.array([19]), np.arange(0, 20, 2)]


# --------------------------------------------------------------------------- keep_top
def test_keep_top_takes_highest_and_breaks_ties_by_lower_index():
    assert keep_top([3.0, 1.0, 3.0, 2.0], 2).tolist() == [0, 2]
    assert keep_top([1.0, 5.0, 5.0, 5.0], 2).tolist() == [1, 2]       # a three-way tie: lowest two indices
    assert keep_top([0.5, 0.1, 0.9], 3).tolist() == [0, 1, 2]
    assert keep_top(np.array([2, 9, 4]), 1).tolist() == [1]          # integer scores work too
    scores = np.random.default_rng(0).random(50)
    kept = keep_top(scores, 7)
    # Explicitly: every kept score beats every dropped one.
    dropped = np.setdiff1d(np.arange(50), kept)
    assert scores[kept].min() > scores[dropped].max()
    assert np.all(np.diff(kept) > 0)                                   # sorted, no duplicates


@pytest.mark.parametrize("scores, k, error, match", [
    ([1.0, 2.0], 0, ValueError, "outside 1..2"),
    ([1.0, 2.0], 3, ValueError, "outside 1..2"),
    ([[1.0, 2.0]], 1, ValueError, "one-dimensional"),
    ([1.0, np.nan], 1, ValueError, "NaN"),
    ([1.0, 2.0], 1.5, TypeError, "integer"),
])
def test_keep_top_refuses_bad_input(scores, k, error, match):
    with pytest.raises(error, match=match):
        keep_top(scores, k)


# --------------------------------------------------------------------------- slicing == masking
def _assert_outputs_equal(a, b, tol=EXACT):
    assert len(a.hidden_states) == len(b.hidden_states) and len(a.logits) == len(b.logits)
    for l, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states)):
        np.testing.assert_allclose(x, y, rtol=0, atol=tol, err_msg=f"hidden state {l}")
    for k, (x, y) in enumerate(zip(a.logits, b.logits)):
        np.testing.assert_allclose(x, y, rtol=0, atol=tol, err_msg=f"exit {k}")


@pytest.mark.parametrize("pooler", ["cls_tanh", "mean", "dense"])
@pytest.mark.parametrize("embedding_rank", [None, 6])
def test_slicing_equals_masking_on_every_exit_and_hidden_state(pooler, embedding_rank):
    config = _config(pooler=pooler, embedding_rank=embedding_rank)
    model = CostEffModel(config, dtype=np.float64, seed=1)
    head_masks, ffn_masks = masks_from_keep(config, KEEP_HEADS, KEEP_NEURONS)
    sliced = slice_model(model, KEEP_HEADS, KEEP_NEURONS)
    assert sliced.config.heads_per_layer == [2, 1, 4]
    assert sliced.config.intermediate_per_layer == [3, 1, 10]
    assert sliced.num_parameters() < model.num_parameters()

    ids, mask, types = _batch()
    masked_out = model(ids, mask, types, head_mask=head_masks, ffn_mask=ffn_masks, output_attentions=True)
    sliced_out = sliced(ids, mask, types, output_attentions=True)
    _assert_outputs_equal(masked_out, sliced_out)
    # The attention maps of the kept heads are the masked model's maps (before the mask).
    for i, keep in enumerate(KEEP_HEADS):
        np.testing.assert_allclose(sliced_out.attentions[i], masked_out.attentions[i][:, keep], rtol=0, atol=EXACT)
    # Masking really changed something: the unmasked model differs.
    full = model(ids, mask, types)
    assert np.abs(full.logits[-1] - masked_out.logits[-1]).max() > 1e-3


def test_sliced_gradients_are_the_masked_gradients_of_the_kept_entries():
    """Backward of the sliced model equals backward of the masked model, restricted to the kept
    rows and columns (random upstream gradients on every hidden state and exit)."""
    config = _config()
    model = CostEffModel(config, dtype=np.float64, seed=2)
    head_masks, ffn_masks = masks_from_keep(config, KEEP_HEADS, KEEP_NEURONS)
    sliced = slice_model(model, KEEP_HEADS, KEEP_NEURONS)
    ids, mask, types = _batch(seed=3)
    rng = np.random.default_rng(4)
    out_m = model(ids, mask, types, head_mask=head_masks, ffn_mask=ffn_masks, return_cache=True)
    out_s = sliced(ids, mask, types, return_cache=True)
    g_hidden = [rng.standard_normal(h.shape) for h in out_m.hidden_states]      # loss = sum(out * dout)
    g_logits = [rng.standard_normal(z.shape) for z in out_m.logits]
    model.zero_grad()
    sliced.zero_grad()
    model.backward(out_m.cache, g_hidden, g_logits)
    sliced.backward(out_s.cache, g_hidden, g_logits)
    # Slicing the masked model's gradients the same way gives the sliced model's gradients.
    expected = slice_model(CostEffModel(config, model.grads, dtype=np.float64), KEEP_HEADS, KEEP_NEURONS).params
    for name in sliced.param_names:
        np.testing.assert_allclose(sliced.grads[name], expected[name], rtol=0,
                                   atol=EXACT * max(1.0, np.abs(expected[name]).max()), err_msg=name)


def test_slicing_keeps_the_original_untouched_and_shares_no_memory():
    model = CostEffModel(_config(), dtype=np.float64, seed=5)
    before = {n: p.copy() for n, p in model.params.items()}
    sliced = slice_model(model, KEEP_HEADS, KEEP_NEURONS)
    for name in sliced.param_names:
        sliced.params[name] += 1.0
    for name, p in model.params.items():
        np.testing.assert_array_equal(p, before[name], err_msg=name)


def test_keeping_everything_is_a_copy():
    model = CostEffModel(_config(), dtype=np.float64, seed=6)
    same = slice_model(model, [None, None, None], None)
    assert same.config.heads_per_layer == model.config.heads_per_layer
    for name in model.param_names:
        np.testing.assert_array_equal(same.params[name], model.params[name])


def test_unsorted_keep_lists_are_sorted_into_the_original_order():
    model = CostEffModel(_config(), dtype=np.float64, seed=7)
    a = slice_model(model, [np.array([2, 0]), [3], [3, 1, 0, 2]], [[7, 1, 5], [19], np.arange(18, -1, -2)])
    b = slice_model(model, KEEP_HEADS, KEEP_NEURONS)
    for name in a.param_names:
        np.testing.assert_array_equal(a.params[name], b.params[name])


@pytest.mark.parametrize("keep_heads, keep_neurons, error, match", [
    ([[0], [1]], None, ValueError, "2 entries for 3 layers"),
    (None, [[0]] * 4, ValueError, "4 entries for 3 layers"),
    ([[0], [], [1]], None, ValueError, r"keep_heads\[1\] is empty"),
    ([[0], [4], [1]], None, ValueError, r"index 4, outside 0..3"),
    ([[0], [-1], [1]], None, ValueError, r"index -1, outside 0..3"),
    ([[0, 0], [1], [1]], None, ValueError, r"repeats the head index\(es\) \[0\]"),
    (None, [[3], [2, 2, 5], [1]], ValueError, r"repeats the neuron index\(es\) \[2\]"),
    ([[[0, 1]], [1], [1]], None, ValueError, "one-dimensional"),
    ([[0.0], [1], [1]], None, TypeError, "integer indices"),
    (None, [[20], [1], [1]], ValueError, r"index 20, outside 0..19"),
])
def test_slice_model_refuses_bad_keep_lists(keep_heads, keep_neurons, error, match):
    model = CostEffModel(_config(), dtype=np.float64, seed=0)
    with pytest.raises(error, match=match):
        slice_model(model, keep_heads, keep_neurons)


def test_masks_from_keep_refuses_bad_keep_lists():
    with pytest.raises(ValueError, match="2 entries for 3 layers"):
        masks_from_keep(_config(), [[0], [1]])


# --------------------------------------------------------------------------- masks from importance
def _importance(seed=0, heads=(4, 4, 4), ffn=(20, 20, 20)):
    rng = np.random.default_rng(seed)
    return Importance(weights={}, heads=[rng.random(h) for h in heads], neurons=[rng.random(f) for f in ffn],
                      num_batches=1)


def test_masks_from_importance_keep_the_top_of_each_layer():
    imp = _importance()
    imp.heads[0][:] = [0.3, 0.1, 0.3, 0.2]                      # a tie, broken by the lower index
    head_masks, ffn_masks = masks_from_importance(imp, [2, 1, 3], 5)
    assert head_masks[0].tolist() == [1, 0, 1, 0]
    for scores, target, m in zip(imp.heads, [2, 1, 3], head_masks):
        # Explicit loop: a head is kept iff fewer than `target` heads beat it (ties: lower index wins).
        for h in range(len(scores)):
            better = sum(1 for g in range(len(scores))
                         if scores[g] > scores[h] or (scores[g] == scores[h] and g < h))
            assert m[h] == (1.0 if better < target else 0.0)
    for scores, m in zip(imp.neurons, ffn_masks):
        assert m.sum() == 5
        assert scores[m == 1].min() > scores[m == 0].max()
    keep_heads, keep_neurons = keep_from_importance(imp, [2, 1, 3], 5)
    for m, k in zip(head_masks + ffn_masks, keep_heads + keep_neurons):
        assert np.flatnonzero(m).tolist() == k.tolist()


def test_none_ffn_target_keeps_every_neuron():
    _, ffn_masks = masks_from_importance(_importance(), 2, None)
    assert all(m.sum() == 20 for m in ffn_masks)


@pytest.mark.parametrize("heads, ffn, match", [
    (5, 10, r"heads_per_layer_target\[0\] = 5 is more than the 4 heads"),
    (0, 10, r"heads_per_layer_target\[0\] = 0: a layer must keep at least one head"),
    ([2, 2], 10, "heads_per_layer_target has 2 entries for 3 layers"),
    (2, 21, r"ffn_per_layer_target\[0\] = 21 is more than the 20 neurons"),
    (2, [10, 0, 10], r"ffn_per_layer_target\[1\] = 0: a layer must keep at least one neuron"),
])
def test_masks_from_importance_refuses_bad_targets(heads, ffn, match):
    with pytest.raises(ValueError, match=match):
        masks_from_importance(_importance(), heads, ffn)


# --------------------------------------------------------------------------- checkpoints
def test_sliced_and_factorized_model_round_trips_through_a_checkpoint(tmp_path):
    model = CostEffModel(_config(), dtype=np.float64, seed=8)
    small = factorize_embedding(slice_model(model, KEEP_HEADS, KEEP_NEURONS), 5)
    small.save_pretrained(tmp_path / "small")
    loaded = CostEffModel.from_pretrained(tmp_path / "small", dtype=np.float64)
    assert loaded.config.heads_per_layer == [2, 1, 4]
    assert loaded.config.intermediate_per_layer == [3, 1, 10]
    assert loaded.config.embedding_rank == 5
    assert loaded.param_names == small.param_names
    for name in small.param_names:
        np.testing.assert_array_equal(loaded.params[name], small.params[name], err_msg=name)
    ids, mask, types = _batch()
    _assert_outputs_equal(small(ids, mask, types), loaded(ids, mask, types), tol=0.0)


# --------------------------------------------------------------------------- SVD embedding
def _word(model):
    """The word embedding as one (V, d) matrix: E, or E @ P."""
    E = model.params["embeddings.word_embeddings.weight"]
    P = model.params.get("embeddings.word_embeddings.projection")
    return E if P is None else E @ P


def test_full_rank_factorization_reproduces_the_embedding_and_the_outputs():
    model = CostEffModel(_config(), dtype=np.float64, seed=9)
    full = factorize_embedding(model, 16)
    assert full.params["embeddings.word_embeddings.weight"].shape == (40, 16)
    assert full.params["embeddings.word_embeddings.projection"].shape == (16, 16)
    # A 40 x 16 SVD reconstructs to a few ulps of entries of order 0.3: 1e-10 is generous.
    np.testing.assert_allclose(_word(full), _word(model), rtol=0, atol=1e-10)
    ids, mask, types = _batch()
    _assert_outputs_equal(model(ids, mask, types), full(ids, mask, types), tol=1e-10)


@pytest.mark.parametrize("rank", [1, 5, 11])
def test_truncated_factorization_is_the_best_rank_r_approximation(rank):
    model = CostEffModel(_config(), dtype=np.float64, seed=10)
    E = _word(model)                                            # (V, d)
    U, S, Vt = np.linalg.svd(E, full_matrices=False)
    low = factorize_embedding(model, rank)
    assert low.config.embedding_rank == rank
    approx = _word(low)
    # Eckart-Young: the squared Frobenius error is the sum of the dropped squared singular values.
    err2 = np.linalg.norm(E - approx) ** 2
    np.testing.assert_allclose(err2, np.sum(S[rank:] ** 2), rtol=1e-10)
    # The singular values of this random matrix are distinct, so the best approximation is unique.
    np.testing.assert_allclose(approx, (U[:, :rank] * S[:rank]) @ Vt[:rank], rtol=0, atol=1e-10)
    # Nothing but the word embedding changed.
    for name in model.param_names:
        if not name.startswith("embeddings.word_embeddings"):
            np.testing.assert_array_equal(low.params[name], model.params[name])


def test_refactorizing_a_product_matches_the_svd_of_the_whole_product():
    model = factorize_embedding(CostEffModel(_config(), dtype=np.float64, seed=11), 12)
    E, P = model.params["embeddings.word_embeddings.weight"], model.params["embeddings.word_embeddings.projection"]
    # Perturb the factors so that E is not already U S (the product is then a general rank-12 matrix).
    rng = np.random.default_rng(12)
    model.params["embeddings.word_embeddings.weight"] = E + 0.1 * rng.standard_normal(E.shape)
    model.params["embeddings.word_embeddings.projection"] = P + 0.1 * rng.standard_normal(P.shape)
    product = _word(model)                                       # (V, d), rank 12
    U, S, Vt = np.linalg.svd(product, full_matrices=False)
    for rank in (12, 7, 3):
        low = factorize_embedding(model, rank)
        approx = _word(low)
        np.testing.assert_allclose(np.linalg.norm(product - approx) ** 2 + 1.0, np.sum(S[rank:] ** 2) + 1.0,
                                   rtol=1e-10)   # + 1: at rank 12 the error is 0 up to rounding
        np.testing.assert_allclose(approx, (U[:, :rank] * S[:rank]) @ Vt[:rank], rtol=0, atol=1e-10)
    # Lowering twice (12 -> 7 -> 3) is the same as lowering once: the best rank-3 part survives.
    twice = factorize_embedding(factorize_embedding(model, 7), 3)
    np.testing.assert_allclose(_word(twice), (U[:, :3] * S[:3]) @ Vt[:3], rtol=0, atol=1e-10)


def test_float32_model_stays_float32():
    model = CostEffModel(_config(), dtype=np.float32, seed=13)
    low = factorize_embedding(model, 8)
    assert low.params["embeddings.word_embeddings.weight"].dtype == np.float32
    assert low.params["embeddings.word_embeddings.projection"].dtype == np.float32


@pytest.mark.parametrize("embedding_rank, rank, error, match", [
    (None, 0, ValueError, r"embedding rank 0 is outside 1..16 \(hidden_size d = 16"),
    (None, 17, ValueError, r"embedding rank 17 is outside 1..16"),
    (6, 7, ValueError, r"embedding rank 7 is outside 1..6 \(the current rank r0 = 6"),
    (None, 2.0, TypeError, "rank must be an integer"),
])
def test_factorize_embedding_refuses_bad_ranks(embedding_rank, rank, error, match):
    model = CostEffModel(_config(embedding_rank=embedding_rank), dtype=np.float64, seed=0)
    with pytest.raises(error, match=match):
        factorize_embedding(model, rank)


def test_rank_above_the_vocabulary_is_refused():
    model = CostEffModel(_config(vocab_size=10), dtype=np.float64, seed=0)
    with pytest.raises(ValueError, match=r"outside 1..10 .*vocab_size V = 10"):
        factorize_embedding(model, 12)
