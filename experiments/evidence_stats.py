"""The statistics of the seeded evidence set (results/evidence/protocol.json, "statistics").

Pure functions, NumPy and SciPy only, shared by ``experiments/aggregate.py``,
``experiments/targets.py`` and ``experiments/plot_evidence.py``:

* :func:`mean_sd` and :func:`mean_interval`: n, mean, sample standard deviation (ddof=1)
  and the 95% interval of the mean, mean +- t(0.975, n-1) x sd / sqrt(n);
* :func:`paired`: the difference a - b of two models, paired by seed, with that interval and
  the protocol's verdict (holds above 0, refuted below 0, unresolved otherwise);
* :func:`matched_flops_score`: the mean dev metric of two trade-off curves over the
  padded-FLOPs interval they share, each curve linearly interpolated (no point chosen).

With one seed there is no standard deviation and no interval: those come back as None, and
no verdict is given.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LEVEL = 0.95            # the protocol's interval


def mean_sd(values):
    """(n, mean, sd) of a list of numbers; sd is the sample standard deviation (ddof=1), None for n=1."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"need a non-empty list of numbers, got {values!r}")
    sd = float(np.std(x, ddof=1)) if len(x) > 1 else None
    return len(x), float(np.mean(x)), sd


def half_width(sd, n):
    """Half the 95% interval of a mean of n values with sample sd `sd` (None when n < 2)."""
    if sd is None or n < 2:
        return None
    return float(stats.t.ppf(0.5 + LEVEL / 2, n - 1) * sd / math.sqrt(n))


def mean_interval(values) -> dict:
    """dict(n, mean, sd, ci_low, ci_high): the 95% interval of the mean of `values` (None for n=1)."""
    n, mean, sd = mean_sd(values)
    h = half_width(sd, n)
    return {"n": n, "mean": mean, "sd": sd,
            "ci_low": None if h is None else mean - h, "ci_high": None if h is None else mean + h}


def verdict(ci_low, ci_high, n) -> str:
    """The protocol's verdict on a difference whose 95% interval is [ci_low, ci_high]."""
    if n < 2 or ci_low is None:
        return "unresolved (n=1)"
    if ci_low > 0:
        return "holds"
    if ci_high < 0:
        return "refuted"
    return "unresolved"


def paired(a: dict, b: dict) -> dict:
    """a - b paired by seed. `a` and `b` map seed -> value and must hold the same seeds.

    Returns dict(n, mean_a, mean_b, sd_a, sd_b, diff_mean, diff_sd, ci_low, ci_high, verdict):
    the interval is mean +- t(0.975, n-1) x sd / sqrt(n) of the per-seed differences a_i - b_i,
    and the verdict "holds" when it lies above 0, "refuted" below 0, "unresolved" when it holds
    0; with one seed the interval is None and the verdict "unresolved (n=1)".
    """
    if set(a) != set(b):
        raise ValueError(f"paired values need the same seeds: {sorted(a)} against {sorted(b)}")
    seeds = sorted(a)
    va = [float(a[s]) for s in seeds]
    vb = [float(b[s]) for s in seeds]
    n, mean_a, sd_a = mean_sd(va)
    _, mean_b, sd_b = mean_sd(vb)
    d = mean_interval([x - y for x, y in zip(va, vb)])
    return {"n": n, "mean_a": mean_a, "mean_b": mean_b, "sd_a": sd_a, "sd_b": sd_b,
            "diff_mean": d["mean"], "diff_sd": d["sd"], "ci_low": d["ci_low"], "ci_high": d["ci_high"],
            "verdict": verdict(d["ci_low"], d["ci_high"], n)}


# --------------------------------------------------------------------------- trade-off curves
def curve_points(curve):
    """(flops, metric) arrays of a curve (a list of {flops_ratio_padded, metric}), sorted by
    FLOPs, the metrics of points at identical FLOPs averaged (thresholds that move no sample
    repeat a point; averaging keeps the curve a function of FLOPs)."""
    if not curve:
        raise ValueError("an empty curve (a model with one exit has none)")
    by_flops = {}
    for p in curve:
        by_flops.setdefault(float(p["flops_ratio_padded"]), []).append(float(p["metric"]))
    x = np.array(sorted(by_flops))
    y = np.array([np.mean(by_flops[v]) for v in x])
    return x, y


def mean_over(x, y, lo, hi):
    """The mean of the piecewise-linear curve (x, y) over [lo, hi]: its trapezoid integral over
    the interval divided by the interval's width (the value at lo when lo == hi)."""
    if hi < lo:
        raise ValueError(f"empty interval [{lo}, {hi}]")
    if hi == lo:
        return float(np.interp(lo, x, y))
    inside = x[(x > lo) & (x < hi)]
    xs = np.concatenate([[lo], inside, [hi]])
    ys = np.interp(xs, x, y)
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))
    return area / (hi - lo)


def matched_flops_score(curve_a, curve_b):
    """(score_a, score_b): each curve's mean metric over the padded-FLOPs interval both cover,
    [max(min_a, min_b), min(max_a, max_b)], by linear interpolation. The whole shared part of
    each curve counts, so no threshold is chosen. Raises ValueError when the curves share no
    FLOPs (or one is empty)."""
    xa, ya = curve_points(curve_a)
    xb, yb = curve_points(curve_b)
    lo, hi = max(xa[0], xb[0]), min(xa[-1], xb[-1])
    if hi < lo:
        raise ValueError(f"the curves share no padded-FLOPs interval: [{xa[0]:.4g}, {xa[-1]:.4g}] "
                         f"and [{xb[0]:.4g}, {xb[-1]:.4g}]")
    return mean_over(xa, ya, lo, hi), mean_over(xb, yb, lo, hi)
