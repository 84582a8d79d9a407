"""The accuracy-efficiency sweep of early exit (docs/method.md, 7): metric, exit layers, speed-up,
FLOPs and wall-clock time for each threshold, written as CSV/JSON and plotted as metric
against FLOPs (one curve per model)."""

from __future__ import annotations

import csv
import json
import os
import time

import numpy as np

from .early_exit import DEFAULT_ENTROPY_THRESHOLDS, early_exit_predict
from .flops import count_parameters, model_flops
from .metrics import compute_metrics, main_metric, predictions_from_logits
from .weights import write_text


def mean_flops(config, n_tokens, exit_layers=None) -> float:
    """Mean analytic FLOPs per sample; exit_layers None = the full model."""
    if exit_layers is None:
        return float(np.mean([model_flops(config, int(n)) for n in n_tokens]))
    return float(np.mean([model_flops(config, int(n), int(l)) for n, l in zip(n_tokens, exit_layers)]))


def evaluate_threshold(model, batches, labels, task, threshold, criterion="entropy", patience=None) -> dict:
    """One row of the sweep: the early-exit run at one threshold (or patience)."""
    t0 = time.perf_counter()
    res = early_exit_predict(model, batches, criterion=criterion, threshold=threshold, patience=patience)
    seconds = time.perf_counter() - t0
    preds = predictions_from_logits(res.logits, model.config.is_regression)
    metrics = compute_metrics(task, preds, labels)
    full = mean_flops(model.config, res.n_tokens)
    flops = mean_flops(model.config, res.n_tokens, res.exit_layers)
    return {
        "criterion": criterion,
        "threshold": float(threshold) if criterion != "patience" else None,
        "patience": patience,
        "metric": float(metrics[main_metric(task)]),
        **{f"metric_{k}": float(v) for k, v in metrics.items()},
        "mean_exit_layer": float(res.exit_layers.mean()),
        "exit_histogram": res.exit_histogram().tolist(),
        "expected_speedup": res.expected_speedup,
        "flops_per_sample": flops,
        "flops_full_model": full,
        "flops_ratio": flops / full,
        "parameters": int(count_parameters(model.config)["total"]),
        "seconds": seconds,
        "ms_per_sample": 1e3 * seconds / len(res.exit_layers),
    }


def threshold_sweep(model, batches, labels, task, thresholds=DEFAULT_ENTROPY_THRESHOLDS, criterion="entropy",
                    progress=True, repeats: int = 1) -> list:
    """Rows of `evaluate_threshold` for each threshold (patience values for criterion='patience').

    `batches` is a list (it is iterated once per threshold and round). With ``repeats > 1``
    every threshold is timed that many times, the thresholds taking turns round after round
    (so a busy moment slows all of them alike), and ``seconds`` is the median of its rounds
    (``seconds_all`` keeps every round)."""
    from .progress import progress_bar as tqdm

    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a whole number >= 1, got {repeats!r}")
    batches = list(batches)
    early_exit_predict(model, batches[:1], criterion=criterion, threshold=0.0,      # warm-up: every timed
                       patience=1 if criterion == "patience" else None)             # pass starts warm

    def run(t):
        if criterion == "patience":
            return evaluate_threshold(model, batches, labels, task, 0.0, criterion, patience=int(t))
        return evaluate_threshold(model, batches, labels, task, t, criterion)

    thresholds = list(thresholds)
    rounds = [[] for _ in thresholds]
    for _ in tqdm(range(repeats), desc=f"{criterion} sweep", disable=not progress):
        for k, t in enumerate(thresholds):
            rounds[k].append(run(t))
    rows = []
    for runs in rounds:
        row = dict(runs[0])                      # everything but the time is the same in every round
        row["seconds_all"] = [r["seconds"] for r in runs]
        row["seconds"] = float(np.median(row["seconds_all"]))
        row["ms_per_sample"] = 1e3 * row["seconds"] / len(labels)
        rows.append(row)
    return rows


def write_sweep(rows, folder, name="sweep") -> dict:
    """Write rows as <folder>/<name>.csv and .json (atomically); returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = {"json": os.path.join(folder, f"{name}.json"), "csv": os.path.join(folder, f"{name}.csv")}
    write_text(paths["json"], json.dumps(rows, indent=2) + "\n")
    keys = [k for k in rows[0] if k != "exit_histogram"] + ["exit_histogram"]
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({**r, "exit_histogram": " ".join(map(str, r["exit_histogram"]))})
    write_text(paths["csv"], buf.getvalue())
    return paths


def plot_sweeps(curves: dict, path, metric_name="metric", title=None, marks=None, reference=None) -> str:
    """PNG of metric against mean FLOPs per sample, one curve per model (name -> rows).

    marks: name -> (row, label) points to mark on a model's curve with a star, e.g. the
    operating point chosen on held-out data; a label (at most one, or they overlap) goes in a
    box at the top left (the legend then goes to the bottom right), None for a star alone.
    reference: (score, share) draws the teacher's score and `share` of it as horizontal lines
    and keeps both in view, so that a small difference is not blown up to the plot's height."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, rows in curves.items():
        xs = [r["flops_per_sample"] / 1e9 for r in rows]
        ys = [r["metric"] for r in rows]
        order = np.argsort(xs)
        line, = ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], marker="o", label=name)
        if marks and name in marks:
            row, text = marks[name]
            x, y = row["flops_per_sample"] / 1e9, row["metric"]
            ax.plot([x], [y], marker="*", markersize=16, color=line.get_color(), markeredgecolor="black", zorder=5)
            if text:                                  # the label in a box low in the plot, a line to the star
                ax.annotate(text, (x, y), xytext=(0.03, 0.95), textcoords="axes fraction", fontsize=8, va="top",
                            bbox=dict(boxstyle="round", fc="white", ec="gray"),
                            arrowprops=dict(arrowstyle="-", color="gray"))
    if reference is not None:
        score, share = reference
        ax.axhline(score, color="gray", linestyle="--", linewidth=1)
        ax.axhline(share * score, color="gray", linestyle=":", linewidth=1)
        ax.text(1.0, score, "teacher ", transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=8,
                color="gray")
        ax.text(1.0, share * score, f"{100 * share:g}% of the teacher ", transform=ax.get_yaxis_transform(),
                ha="right", va="bottom", fontsize=8, color="gray")
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, share * score - 0.02), max(high, score + 0.02))
    ax.set_xlabel("GFLOPs per sample (analytic, with early exit)")
    ax.set_ylabel(metric_name)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))   # labels even on a short range
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())          # minor labels of a log axis overlap
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right" if marks and any(text for _, text in marks.values()) else "best")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
