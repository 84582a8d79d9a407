"""The offline replay of early exit equals the real thing, and the cross-fitted operating
point chooses each half's threshold on the other half only."""

import numpy as np
import pytest

from npcosteff.early_exit import early_exit_forward
from npcosteff.operating_point import cross_fit, simulate_exit

from test_early_exit import _batch, _median_entropy_threshold, _model


@pytest.mark.parametrize("criterion,value", [("entropy", None), ("entropy", 0.0), ("max_prob", 0.5),
                                             ("patience", 1), ("patience", 2)])
@pytest.mark.parametrize("exit_start", [1, 2])
def test_replay_equals_early_exit(criterion, value, exit_start):
    model = _model(exit_start=exit_start)
    ids, mask, tt = _batch(B=16)
    if criterion == "entropy" and value is None:
        value = _median_entropy_threshold(model, ids, mask, tt)
    kw = dict(patience=value) if criterion == "patience" else dict(threshold=value)
    real = early_exit_forward(model, ids, mask, tt, criterion=criterion, **kw)
    out = model(ids, mask, tt)
    layers, logits = simulate_exit(np.stack(out.logits), out.exit_layers, criterion, **kw)
    np.testing.assert_array_equal(layers, real.exit_layers)
    # Early exit runs shrinking batches: the same layers on fewer rows, float64 rounding only.
    np.testing.assert_allclose(logits, real.logits, rtol=1e-10, atol=1e-12)
    if criterion == "entropy" and value > 0:
        assert len(set(layers.tolist())) > 1               # the case exercises several exits


def test_replay_regression_patience():
    model = _model(num_labels=1, problem_type="regression")
    ids, mask, tt = _batch(B=16, seed=3)
    real = early_exit_forward(model, ids, mask, tt, criterion="patience", patience=1, regression_tolerance=0.5)
    out = model(ids, mask, tt)
    layers, _ = simulate_exit(np.stack(out.logits), out.exit_layers, "patience", patience=1,
                              regression_tolerance=0.5)
    np.testing.assert_array_equal(layers, real.exit_layers)


def _synthetic(N=200, seed=0):
    """Two exits: the shallow one is right with probability 0.7 and confident when right
    more often; the last one is always right."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, N)
    right = rng.random(N) < 0.7
    shallow = np.where(right, y, 1 - y)
    conf = np.where(right, rng.uniform(1, 4, N), rng.uniform(0, 2, N))
    z1 = np.zeros((N, 2))
    z1[np.arange(N), shallow] = conf
    z2 = np.zeros((N, 2))
    z2[np.arange(N), y] = 5.0
    return np.stack([z1, z2]), (1, 2), y


def test_cross_fit_keeps_the_target_and_uses_the_other_half():
    logits, layers, y = _synthetic()
    thresholds = np.linspace(0, 0.7, 15)
    calls = []

    def teacher_metric_of(idx):
        calls.append(np.asarray(idx))
        return 1.0                                           # the teacher is always right

    fit = cross_fit("sst2", logits, layers, y, thresholds, cost=lambda l: l.astype(float),
                    teacher_metric_of=teacher_metric_of, target=0.9)
    a, b = calls                                             # the two selection halves: disjoint, all of dev
    assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == len(y)
    assert all(fit.reached) and fit.metric >= 0.85           # close to the 0.9 target on unseen halves
    assert 1.0 < fit.exit_layers.mean() < 2.0                # some samples exit early, some do not
    # An unreachable target falls back to the best metric: nobody exits early here.
    best = cross_fit("sst2", logits, layers, y, thresholds, cost=lambda l: l.astype(float),
                     teacher_metric_of=lambda idx: 1.0, target=1.01)
    assert best.reached == (False, False) and best.metric == 1.0


def test_exit_logits_puts_sorted_batches_back_in_the_split_order():
    from npcosteff.data.batching import EncodedSplit, iterate_batches
    from npcosteff.operating_point import exit_logits

    model = _model(exit_start=1)
    rng = np.random.default_rng(3)
    ids = [np.concatenate([[2], rng.integers(4, 30, int(t)), [3]]) for t in rng.integers(1, 9, 13)]
    split = EncodedSplit(ids, [np.zeros(len(x), np.int64) for x in ids], np.zeros(13, np.int64), 12)
    logits, n_tokens = exit_logits(model, iterate_batches(split, split.labels, 4, sort_by_length=True))
    assert logits.shape == (len(model.config.exit_layers), 13, model.config.num_labels)
    np.testing.assert_array_equal(n_tokens, [len(x) for x in ids])
    for i in (0, 5, 12):                                           # each row alone, unpadded
        one = model(ids[i][None], np.ones((1, len(ids[i])), np.int64), np.zeros((1, len(ids[i])), np.int64))
        # Padding changes nothing but float64 rounding (masked keys get weight exactly 0).
        np.testing.assert_allclose(logits[:, i], np.concatenate(one.logits), rtol=1e-10, atol=1e-12)
