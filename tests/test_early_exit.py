"""Early exit: batched per-sample exit equals batch size 1, tau = 0 equals the full model,
the bookkeeping (speed-up, histogram) follows its definitions, and bad input is refused."""

import numpy as np
import pytest

from npcosteff.config import CostEffConfig
from npcosteff.early_exit import early_exit_forward, early_exit_predict
from npcosteff.losses import entropy
from npcosteff.model import CostEffModel


def _model(num_labels=3, problem_type="single_label_classification", exit_start=1, seed=0):
    cfg = CostEffConfig(vocab_size=60, hidden_size=16, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=24, max_position_embeddings=32, heads_per_layer=[4, 3, 2, 4],
                        intermediate_per_layer=[24, 12, 8, 24], num_labels=num_labels, exit_start=exit_start,
                        problem_type=problem_type, initializer_range=0.3)
    return CostEffModel(cfg, dtype=np.float64, seed=seed)


def _batch(B=12, T=10, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 60, (B, T))
    lengths = rng.integers(2, T + 1, B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)   # right padding, uneven
    ids = ids * mask
    tt = (rng.random((B, T)) < 0.5).astype(np.int64) * mask
    return ids, mask, tt


def _one_by_one(model, ids, mask, tt, **kw):
    """Batch size 1, each sample cut to its own length (no padding at all)."""
    rows = []
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        rows.append(early_exit_forward(model, ids[b:b + 1, :n], mask[b:b + 1, :n], tt[b:b + 1, :n], **kw))
    return rows


def _median_entropy_threshold(model, ids, mask, tt):
    """A threshold inside the spread of exit entropies, so that samples leave at several exits."""
    out = model(ids, mask, tt)
    ent = np.concatenate([entropy(z) for z in out.logits])
    return float(np.median(ent))


@pytest.mark.parametrize("criterion", ["entropy", "max_prob", "patience"])
def test_batched_equals_batch_size_one(criterion):
    model = _model()
    ids, mask, tt = _batch()
    if criterion == "entropy":
        kw = dict(threshold=_median_entropy_threshold(model, ids, mask, tt))
    elif criterion == "max_prob":
        kw = dict(threshold=0.4)
    else:
        kw = dict(patience=1)
    batched = early_exit_forward(model, ids, mask, tt, criterion=criterion, **kw)
    single = _one_by_one(model, ids, mask, tt, criterion=criterion, **kw)
    layers1 = np.array([r.exit_layers[0] for r in single])
    np.testing.assert_array_equal(batched.exit_layers, layers1)
    # The batch must really have split across exits, or the test proves little.
    assert len(set(layers1.tolist())) >= 2, layers1
    logits1 = np.concatenate([r.logits for r in single])
    # float64: cutting padding changes only BLAS summation order, ~1e-15 relative.
    np.testing.assert_allclose(batched.logits, logits1, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(batched.logits.argmax(1), logits1.argmax(1))


def test_threshold_zero_is_the_full_model():
    model = _model()
    ids, mask, tt = _batch(seed=3)
    res = early_exit_forward(model, ids, mask, tt, criterion="entropy", threshold=0.0)
    full = model(ids, mask, tt)
    assert np.all(res.exit_layers == model.config.num_hidden_layers)
    # The last exit ran on a batch cut to the same rows; exact up to summation order.
    np.testing.assert_allclose(res.logits, full.logits[-1], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(res.logits.argmax(1), full.logits[-1].argmax(1))
    assert res.expected_speedup == pytest.approx(1.0)


def test_entropy_exit_rule_matches_definition():
    """Each sample leaves at the first exit with entropy < tau (checked on the full forward)."""
    model = _model(exit_start=2)
    ids, mask, tt = _batch(seed=5)
    tau = _median_entropy_threshold(model, ids, mask, tt)
    res = early_exit_forward(model, ids, mask, tt, threshold=tau)
    full = model(ids, mask, tt)
    ents = np.stack([entropy(z) for z in full.logits], axis=1)               # (B, exits)
    layers = np.array(full.exit_layers)
    for b in range(ids.shape[0]):
        below = np.nonzero(ents[b] < tau)[0]
        expected = layers[below[0]] if below.size else layers[-1]
        assert res.exit_layers[b] == expected
    assert res.expected_speedup == pytest.approx(4 * len(ids) / res.exit_layers.sum())
    assert res.exit_histogram().sum() == len(ids)
    assert res.exit_histogram()[0] == 0                                       # no exit at layer 1


def test_per_layer_thresholds_and_predict_over_batches():
    model = _model()
    ids, mask, tt = _batch(B=10, seed=7)
    taus = [0.5, 0.8, 0.9, 0.0]
    whole = early_exit_forward(model, ids, mask, tt, threshold=taus)
    parts = early_exit_predict(model, [dict(input_ids=ids[:4], attention_mask=mask[:4], token_type_ids=tt[:4]),
                                       dict(input_ids=ids[4:], attention_mask=mask[4:], token_type_ids=tt[4:])],
                               threshold=taus)
    np.testing.assert_array_equal(whole.exit_layers, parts.exit_layers)


def test_regression_uses_patience():
    model = _model(num_labels=1, problem_type="regression")
    ids, mask, tt = _batch(seed=9)
    res = early_exit_forward(model, ids, mask, tt, criterion="patience", patience=1, regression_tolerance=0.05)
    single = _one_by_one(model, ids, mask, tt, criterion="patience", patience=1, regression_tolerance=0.05)
    np.testing.assert_array_equal(res.exit_layers, [r.exit_layers[0] for r in single])
    with pytest.raises(ValueError, match="regression"):
        early_exit_forward(model, ids, mask, tt, criterion="entropy", threshold=0.1)


def test_bad_input():
    model = _model()
    ids, mask, tt = _batch(B=3)
    with pytest.raises(ValueError, match="thresholds must be finite and >= 0"):
        early_exit_forward(model, ids, mask, tt, threshold=-0.1)
    with pytest.raises(ValueError, match="patience must be an integer >= 1"):
        early_exit_forward(model, ids, mask, tt, criterion="patience", patience=0)
    with pytest.raises(ValueError, match="exit_start 5 is outside"):
        early_exit_forward(model, ids, mask, tt, threshold=0.1, exit_start=5)
    with pytest.raises(ValueError, match="unknown early-exit criterion"):
        early_exit_forward(model, ids, mask, tt, criterion="confidence")
    with pytest.raises(ValueError, match="3 thresholds given for 4 exits"):
        early_exit_forward(model, ids, mask, tt, threshold=[0.1, 0.2, 0.3])
    left_padded = mask[:, ::-1].copy()
    if (left_padded[:, 1:] > left_padded[:, :-1]).any():
        with pytest.raises(ValueError, match="right padding"):
            early_exit_forward(model, ids, left_padded, tt, threshold=0.1)
    with pytest.raises(ValueError, match="exit_start 5 is outside"):
        CostEffConfig(num_hidden_layers=4, exit_start=5, num_labels=2)


def test_threshold_sweep_repeats_take_turns_and_report_the_median():
    from npcosteff.sweep import threshold_sweep

    model = _model(exit_start=1)
    ids, mask, tt = _batch(B=12)
    batches = [dict(input_ids=ids[:6], attention_mask=mask[:6], token_type_ids=tt[:6]),
               dict(input_ids=ids[6:], attention_mask=mask[6:], token_type_ids=tt[6:])]
    labels = np.arange(12) % 2
    once = threshold_sweep(model, batches, labels, "sst2", [0.0, 0.5], progress=False)
    thrice = threshold_sweep(model, batches, labels, "sst2", [0.0, 0.5], progress=False, repeats=3)
    for a, b in zip(once, thrice):
        assert len(b["seconds_all"]) == 3 and b["seconds"] == float(np.median(b["seconds_all"]))
        assert b["ms_per_sample"] == 1e3 * b["seconds"] / 12
        assert (a["metric"], a["mean_exit_layer"], a["exit_histogram"]) == \
            (b["metric"], b["mean_exit_layer"], b["exit_histogram"])     # only the time differs between rounds
    with pytest.raises(ValueError, match="repeats must be"):
        threshold_sweep(model, batches, labels, "sst2", [0.0], progress=False, repeats=0)
