"""The pictures of the seeded evidence set, from the aggregated ``results/<task>.json``.

    python experiments/plot_evidence.py [TASK ...] [--results-dir results]

* ``results/forest.png``: one horizontal line per (claim, task): the paired difference a - b
  over seeds (``experiments/targets.py``), its mean as a dot and its 95% interval as the line,
  in points (metric x 100; FLOPs ratios x 100, where lower is better), with 0 marked. Green:
  the claim holds on that task, red: refuted, grey: unresolved (a dot alone: one seed).
* ``results/<task>_curves.png``: dev metric (x 100) against the padded FLOPs ratio (log axis,
  the teacher at 1, a black star) for the TA, the naive exits, the student and the no-exits
  student: each curve's mean over seeds, interpolated on a common FLOPs grid (the part every
  seed covers), with a band of +- one sample sd; each seed's cross-fitted operating point as a
  small marker (the no-exits student is one point per seed, its mean a larger one); the
  majority class as a dotted line, or only in the legend when it lies far below every score
  (a regression's 0).

A task without an aggregated file with seeds is skipped.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:                      # evidence_stats and targets beside this file
    sys.path.insert(0, HERE)

import targets  # noqa: E402
from evidence_stats import curve_points  # noqa: E402

CURVE_MODELS = ("ta", "naive", "student", "no_exits")          # keys of targets.NAMES
COLORS = {"ta": "tab:blue", "naive": "tab:orange", "student": "tab:green", "no_exits": "tab:purple"}
VERDICT_COLORS = {"holds": "tab:green", "refuted": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Short names of the claims and of the models compared, for the forest's labels.
CLAIMS = {"ta_over_naive": "TA - naive exits", "all_exits_over_last_exit": "all-exit - last-exit importance"}
SHORT = {"student: no exits": "no exits", "TA": "TA"}


def _label(row) -> str:
    claim = CLAIMS.get(row["claim"]) or f"student - {SHORT.get(row.get('b'), row.get('b'))}"
    lower = ", lower is better" if row.get("better") == "lower" else ""
    return f"{row['task']} | {claim}: {row['measure']} (n={row['n']}{lower})"


def forest(rows: list, out: str) -> bool:
    """Draw the paired rows of targets.claims() to `out`; False (nothing written) when there are none."""
    rows = [r for r in rows if "diff_mean" in r]
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.28 * len(rows)))
    for y, r in enumerate(rows):
        color = VERDICT_COLORS.get(r["verdict"], "tab:gray")
        if r["ci_low"] is not None:
            ax.plot([100 * r["ci_low"], 100 * r["ci_high"]], [y, y], "-", color=color, lw=2)
        ax.plot([100 * r["diff_mean"]], [y], "o", color=color, ms=5)
    labels = [_label(r) for r in rows]
    for y in range(1, len(rows)):                     # a rule between tasks
        if rows[y]["task"] != rows[y - 1]["task"]:
            ax.axhline(y - 0.5, color="black", lw=0.5, alpha=0.4)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()                                 # the first claim on top
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("paired difference a - b over seeds, in points (metric x 100; FLOPs ratio x 100)\n"
                  "dot: mean; line: 95% interval, mean +- t(0.975, n-1) sd / sqrt(n)")
    ax.set_title("Evidence set, each claim per task\ngreen: holds, red: refuted, grey: unresolved")
    ax.grid(True, axis="x", alpha=0.3)
    fig.savefig(out, dpi=110, bbox_inches="tight")       # the long labels widen the figure, not cut
    plt.close(fig)
    return True


def mean_curve(seed_curves: list, points: int = 100):
    """(grid, mean, sd) of several seeds' curves on a common log-spaced padded-FLOPs grid over the
    interval every seed covers (sd None with one seed); None when the seeds share no interval."""
    xy = [curve_points(c) for c in seed_curves if c]
    if not xy:
        return None
    lo, hi = max(x[0] for x, _ in xy), min(x[-1] for x, _ in xy)
    if not hi > lo:
        return None
    grid = np.geomspace(lo, hi, points)
    ys = np.array([np.interp(grid, x, y) for x, y in xy])
    sd = ys.std(axis=0, ddof=1) if len(ys) > 1 else None
    return grid, ys.mean(axis=0), sd


MAJORITY_MARGIN = 15.0        # points: a majority class further below every plotted score stays off the axis


def majority_on_axis(majority: float, ax) -> bool:
    """Whether the majority class's line belongs on the axes: within MAJORITY_MARGIN points of
    the lowest score drawn so far (MRPC's 74.8 under its exits' 75), not a regression's 0 under
    scores of 80 (STS-B), where it would squeeze every curve into the top of the picture."""
    lowest = [np.min(line.get_ydata()) for line in ax.get_lines() if len(line.get_ydata())]
    return not lowest or 100 * majority >= min(lowest) - MAJORITY_MARGIN


def curves(results: dict, out: str) -> None:
    """Draw one task's trade-off curves with their seed bands to `out`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.2))
    models = {m["name"]: m for m in results["models"]}
    ax.plot([1.0], [100 * results["teacher"]], "*", ms=14, color="black", label="teacher")
    for key in CURVE_MODELS:
        m = models.get(targets.NAMES[key])
        if m is None:
            continue
        color, n = COLORS[key], len(m["seeds"])
        ops = [s["operating_point"] for s in m["seeds"]]
        label = f"{m['name']} (n={n}, 1/{1 / m['params_ratio']:.1f} params)"
        fit = mean_curve([s["curve"] for s in m["seeds"]])
        if fit is not None:
            grid, mean, sd = fit
            ax.plot(grid, 100 * mean, "-", color=color, lw=1.5, label=label)
            if sd is not None:
                ax.fill_between(grid, 100 * (mean - sd), 100 * (mean + sd), color=color, alpha=0.2, lw=0)
        elif any(s["curve"] for s in m["seeds"]):       # seeds without a shared interval: each on its own
            for i, s in enumerate(m["seeds"]):
                x, y = curve_points(s["curve"])
                ax.plot(x, 100 * y, "-", color=color, lw=0.8, alpha=0.6, label=label if i == 0 else None)
        else:                                           # one exit: a single point, the mean over seeds
            ax.plot([np.mean([o["flops_ratio_padded"] for o in ops])], [100 * np.mean([o["metric"] for o in ops])],
                    "D", ms=8, color=color, label=label)
        ax.plot([o["flops_ratio_padded"] for o in ops], [100 * o["metric"] for o in ops], "o", ms=4,
                color=color, mec="black", mew=0.5)
    majority = results.get("majority")
    if majority is not None:
        if majority_on_axis(majority, ax):
            ax.axhline(100 * majority, color="grey", ls=":", lw=1, label="majority class")
        else:                                           # a regression's 0: far below, it would flatten the curves
            ax.plot([], [], ls=":", color="grey", lw=1, label=f"majority class: {100 * majority:.1f} (below the axis)")
    ax.axhline(100 * results.get("target", 0.965) * results["teacher"], color="black", ls="--", lw=0.8,
               label=f"{100 * results.get('target', 0.965):.1f}% of the teacher")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per dev example, inputs padded to 128 tokens (fraction of the teacher's)")
    ax.set_ylabel(f"dev {results['metric']} (x100)")
    ax.set_title(f"{results['task']}: mean over seeds {', '.join(map(str, results['seeds']))} +- one sd; "
                 "small dots: each seed's operating point")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tasks", nargs="*", help=f"tasks (default: {' '.join(targets.TASKS)})")
    p.add_argument("--results-dir", default=os.path.join(ROOT, "results"))
    a = p.parse_args(argv)
    loaded = targets.load(a.results_dir)
    chosen = {t: r for t, r in loaded.items() if (not a.tasks or t in a.tasks)}
    for task, r in chosen.items():
        if not r.get("seeds"):
            print(f"{task}: no aggregated seeds (experiments/aggregate.py), skipped")
            continue
        out = os.path.join(a.results_dir, f"{task}_curves.png")
        curves(r, out)
        print(f"{task}: {out}")
    out = os.path.join(a.results_dir, "forest.png")
    if forest(targets.claims({t: r for t, r in chosen.items() if r.get("seeds")}), out):
        print(f"forest: {out}")
    else:
        print("forest: no paired claim yet, nothing drawn")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
