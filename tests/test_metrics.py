"""GLUE metrics against their textbook formulas, written out here with NumPy."""

import numpy as np
import pytest

from npcosteff.data.glue import GLUE_TASKS
from npcosteff.metrics import compute_metrics, main_metric, predictions_from_logits

# Every reference below is float64 arithmetic on at most a few hundred terms; results agree
# with scikit-learn/SciPy to rounding, far inside 1e-12.
TOL = 1e-12


def confusion(predictions, labels):
    """(tp, tn, fp, fn) of a binary problem, class 1 positive."""
    tp = np.sum((predictions == 1) & (labels == 1))
    tn = np.sum((predictions == 0) & (labels == 0))
    fp = np.sum((predictions == 1) & (labels == 0))
    fn = np.sum((predictions == 0) & (labels == 1))
    return float(tp), float(tn), float(fp), float(fn)


def pearson_reference(x, y):
    """Covariance over the product of standard deviations, from centered vectors."""
    xc, yc = x - x.mean(), y - y.mean()
    return float(xc @ yc / np.sqrt((xc @ xc) * (yc @ yc)))


def average_ranks(x):
    """Ranks 1..n; tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    while start < len(x):
        stop = start
        while stop + 1 < len(x) and sorted_x[stop + 1] == sorted_x[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("task,num_labels", [("sst2", 2), ("mnli", 3), ("qnli", 2),
                                             ("rte", 2), ("wnli", 2)])
def test_accuracy_is_mean_of_equality(rng, task, num_labels):
    labels = rng.integers(0, num_labels, size=101)
    predictions = np.where(rng.random(101) < 0.7, labels, rng.integers(0, num_labels, 101))
    result = compute_metrics(task, predictions, labels)
    assert set(result) == {"accuracy"}
    assert abs(result["accuracy"] - np.mean(predictions == labels)) < TOL
    assert 0.5 < result["accuracy"] < 1.0    # a case that is neither trivial nor degenerate


def test_matthews_correlation_from_the_confusion_matrix(rng):
    labels = rng.integers(0, 2, size=200)
    predictions = np.where(rng.random(200) < 0.8, labels, 1 - labels)
    tp, tn, fp, fn = confusion(predictions, labels)
    expected = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    result = compute_metrics("CoLA", predictions, labels)
    assert set(result) == {"mcc"}
    assert abs(result["mcc"] - expected) < TOL
    # Hand-sized case: tp=2, tn=1, fp=1, fn=0 -> (2 - 0) / sqrt(3 * 2 * 2 * 1) = 2 / sqrt(12).
    small = compute_metrics("cola", np.array([1, 1, 1, 0]), np.array([1, 1, 0, 0]))
    assert abs(small["mcc"] - 2 / np.sqrt(12)) < TOL


def test_mcc_of_constant_predictions_is_zero():
    # The formula's denominator is 0 (no predicted negatives); the convention is 0.
    assert compute_metrics("cola", np.ones(6, int), np.array([0, 1, 0, 1, 1, 1]))["mcc"] == 0.0


@pytest.mark.parametrize("task", ["mrpc", "qqp", "MRPC"])
def test_f1_accuracy_and_their_mean(rng, task):
    labels = rng.integers(0, 2, size=150)
    predictions = np.where(rng.random(150) < 0.75, labels, 1 - labels)
    tp, tn, fp, fn = confusion(predictions, labels)
    f1 = 2 * tp / (2 * tp + fp + fn)
    accuracy = (tp + tn) / len(labels)
    result = compute_metrics(task, predictions, labels)
    assert list(result) == ["f1", "accuracy", "combined"]
    assert abs(result["f1"] - f1) < TOL
    assert abs(result["accuracy"] - accuracy) < TOL
    assert abs(result["combined"] - (f1 + accuracy) / 2) < TOL


def test_f1_without_any_positive_is_zero():
    assert compute_metrics("qqp", np.zeros(4, int), np.zeros(4, int))["f1"] == 0.0


def test_stsb_pearson_and_spearman(rng):
    labels = rng.uniform(0, 5, size=80)
    predictions = labels + rng.normal(0, 1.0, size=80)     # correlated, not perfectly
    result = compute_metrics("STS-B", predictions, labels.astype(np.float32))
    labels32 = labels.astype(np.float32).astype(np.float64)
    pearson = pearson_reference(predictions, labels32)
    spearman = pearson_reference(average_ranks(predictions), average_ranks(labels32))
    assert list(result) == ["pearson", "spearmanr", "combined"]
    assert abs(result["pearson"] - pearson) < TOL
    assert abs(result["spearmanr"] - spearman) < TOL
    assert abs(result["combined"] - (pearson + spearman) / 2) < TOL
    assert 0.5 < pearson < 0.99


def test_spearman_with_ties():
    # Ranks by hand: predictions [1, 2, 2, 4] -> [1, 2.5, 2.5, 4]; labels [1, 3, 2, 5] ->
    # [1, 3, 2, 4]. Centered: [-1.5, 0, 0, 1.5] and [-1.5, 0.5, -0.5, 1.5]; dot 4.5,
    # norms^2 4.5 and 5 -> 4.5 / sqrt(22.5).
    result = compute_metrics("stsb", np.array([1.0, 2.0, 2.0, 4.0]), np.array([1.0, 3, 2, 5]))
    assert abs(result["spearmanr"] - 4.5 / np.sqrt(22.5)) < TOL
    np.testing.assert_array_equal(average_ranks(np.array([1.0, 2, 2, 4])), [1, 2.5, 2.5, 4])


def test_correlation_of_a_constant_prediction_is_zero():
    result = compute_metrics("stsb", np.full(5, 2.5), np.array([0.0, 1, 2, 3, 4]))
    assert result == {"pearson": 0.0, "spearmanr": 0.0, "combined": 0.0}


def test_keys_and_main_metric_of_every_task(rng):
    for name, spec in GLUE_TASKS.items():
        n = 30
        if spec.is_regression:
            labels, predictions = rng.uniform(0, 5, n), rng.uniform(0, 5, n)
        else:
            labels = rng.integers(0, spec.num_labels, n)
            predictions = rng.integers(0, spec.num_labels, n)
        result = compute_metrics(name, predictions, labels)
        assert tuple(result) == spec.metric_names
        assert main_metric(name) in result
        assert all(isinstance(v, float) for v in result.values())
    assert main_metric("CoLA") == "mcc" and main_metric("sst-2") == "accuracy"


def test_predictions_from_logits(rng):
    logits = rng.normal(size=(7, 3))
    predictions = predictions_from_logits(logits, regression=False)
    assert predictions.dtype == np.int64
    for b in range(7):
        assert logits[b, predictions[b]] == logits[b].max()
    scores = rng.normal(size=(7, 1))
    np.testing.assert_array_equal(predictions_from_logits(scores, regression=True), scores[:, 0])


def test_bad_input():
    with pytest.raises(ValueError, match="same length"):
        compute_metrics("sst2", np.zeros(3, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="same length"):
        compute_metrics("sst2", np.zeros((3, 2), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics("sst2", np.zeros(0, int), np.zeros(0, int))
    with pytest.raises(ValueError, match=r"labels of task mnli must lie in \[0, 3\)"):
        compute_metrics("mnli", np.zeros(3, int), np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="must be integer class ids, got dtype float64"):
        compute_metrics("rte", np.array([0.2, 0.9]), np.array([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        compute_metrics("stsb", np.array([1.0, np.nan, 2.0]), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="unknown GLUE task"):
        compute_metrics("squad", np.zeros(2, int), np.zeros(2, int))
    with pytest.raises(ValueError, match=r"shape \(B, C\)"):
        predictions_from_logits(np.zeros(4), regression=False)
    with pytest.raises(ValueError, match="one output"):
        predictions_from_logits(np.zeros((4, 2)), regression=True)
    with pytest.raises(ValueError, match="C >= 2"):
        predictions_from_logits(np.zeros((4, 1)), regression=False)


def test_binomial_interval_is_the_wilson_interval():
    from npcosteff.metrics import binomial_interval

    low, high = binomial_interval(8, 10)
    # 8 of 10 at 95%: the textbook Wilson interval (0.4902, 0.9433).
    assert abs(low - 0.4902) < 1e-4 and abs(high - 0.9433) < 1e-4
    # Its ends are where the score test |k/n - p| = z sqrt(p (1 - p) / n) holds with equality.
    for k, n in [(8, 10), (430, 500), (1, 7)]:
        for p in binomial_interval(k, n):
            assert abs(abs(k / n - p) - 1.96 * np.sqrt(p * (1 - p) / n)) < 1e-12
    assert binomial_interval(0, 20)[0] == 0.0 and binomial_interval(20, 20)[1] == 1.0
    assert binomial_interval(0, 20)[1] > 0.0                      # not empty at 0 right answers
    with pytest.raises(ValueError, match="0 <= correct <= n"):
        binomial_interval(11, 10)
