"""GLUE metrics, computed with scikit-learn and SciPy.

| task | metrics (keys of `compute_metrics`) | `main_metric` |
|---|---|---|
| CoLA | ``mcc`` (Matthews correlation) | ``mcc`` |
| SST-2, MNLI, QNLI, RTE, WNLI | ``accuracy`` | ``accuracy`` |
| MRPC, QQP | ``f1`` (of class 1), ``accuracy``, ``combined`` = their mean | ``combined`` |
| STS-B | ``pearson``, ``spearmanr``, ``combined`` = their mean | ``combined`` |

``combined`` is the mean that Hugging Face's ``run_glue`` reports as its combined score when a
task has two metrics. All values are fractions (0.85, not 85). MNLI is scored separately on
its matched and mismatched validation splits.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from npcosteff.data.glue import TaskSpec, get_task


def predictions_from_logits(logits: np.ndarray, regression: bool) -> np.ndarray:
    """Predictions from model outputs.

    Args:
        logits: (B, C) exit outputs.
        regression: True for STS-B, where C must be 1 and the output is the prediction.

    Returns:
        (B,) int64 class ids (argmax over C), or (B,) float scores for regression.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, C), got {logits.shape}")
    if regression:
        if logits.shape[1] != 1:
            raise ValueError(f"a regression model has one output, got logits of shape "
                             f"{logits.shape}")
        return logits[:, 0].copy()
    if logits.shape[1] < 2:
        raise ValueError(f"classification needs C >= 2 logits, got shape {logits.shape}")
    return np.argmax(logits, axis=1).astype(np.int64)


def main_metric(task: str | TaskSpec) -> str:
    """Key of `compute_metrics` that selects the best checkpoint of a task."""
    return get_task(task).main_metric


def _correlation(statistic, predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson or Spearman correlation; 0.0 when either side is constant.

    A constant vector has no variance, so the correlation is undefined (SciPy returns NaN);
    0.0 says "no measurable relation", as scikit-learn's MCC does for constant predictions,
    and keeps checkpoint selection free of NaN comparisons.
    """
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    return float(statistic(predictions, labels)[0])


def compute_metrics(task: str | TaskSpec, predictions, labels) -> dict[str, float]:
    """GLUE metrics of predictions against gold labels.

    Args:
        task: task name or alias (see `npcosteff.data.glue.get_task`).
        predictions: (N,) class ids, or scores for STS-B (see `predictions_from_logits`).
        labels: (N,) gold label ids, or gold scores for STS-B.

    Returns:
        dict of metric name -> float, with the keys ``get_task(task).metric_names``.
    """
    spec = get_task(task)
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.ndim != 1 or labels.ndim != 1 or predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be "
                         "one-dimensional arrays of the same length")
    if predictions.size == 0:
        raise ValueError("no predictions to score")
    if spec.is_regression:
        predictions = predictions.astype(np.float64)
        labels = labels.astype(np.float64)
        if not (np.all(np.isfinite(predictions)) and np.all(np.isfinite(labels))):
            raise ValueError("regression predictions and labels must be finite numbers")
        pearson = _correlation(stats.pearsonr, predictions, labels)
        spearman = _correlation(stats.spearmanr, predictions, labels)
        return {"pearson": pearson, "spearmanr": spearman,
                "combined": (pearson + spearman) / 2}
    for name, values in (("predictions", predictions), ("labels", labels)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} of task {spec.name} must be integer class ids, got "
                             f"dtype {values.dtype} (use predictions_from_logits)")
        if values.min() < 0 or values.max() >= spec.num_labels:
            raise ValueError(f"{name} of task {spec.name} must lie in [0, {spec.num_labels}), "
                             f"found values in [{values.min()}, {values.max()}]")
    accuracy = float(accuracy_score(labels, predictions))
    if spec.name == "cola":
        return {"mcc": float(matthews_corrcoef(labels, predictions))}
    if spec.name in ("mrpc", "qqp"):
        # F1 of the positive class (paraphrase / duplicate), 0.0 when it is never predicted.
        f1 = float(f1_score(labels, predictions, pos_label=1, average="binary",
                            zero_division=0.0))
        return {"f1": f1, "accuracy": accuracy, "combined": (f1 + accuracy) / 2}
    return {"accuracy": accuracy}


def binomial_interval(correct, n, z: float = 1.96) -> tuple:
    """Wilson score interval of an accuracy: ``correct`` right answers out of ``n``.

    The interval holds every p whose binomial test ``|correct/n - p| <= z sqrt(p (1-p) / n)``
    does not reject it (z = 1.96: 95%); unlike ``p +- z sqrt(p (1-p) / n)`` it stays inside
    [0, 1] and is not empty at 0 or n right answers. Returns (low, high) as fractions.
    """
    correct, n = float(correct), float(n)
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got correct={correct}, n={n}")
    p = correct / n
    scale = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / scale
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return float(max(0.0, center - half)), float(min(1.0, center + half))
