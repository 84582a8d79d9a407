"""The trade-off of a reproduction task as a picture: dev score against FLOPs, every model.

Reads ``results/<task>.json`` (written by ``experiments/report.py``) and draws, per model,
its early-exit sweep (``curve``: dev score at each threshold (entropy, or patience for regression) against FLOPs on inputs
padded to 128 tokens, as a fraction of the teacher's), its cross-fitted operating point as
a filled marker, the teacher as a black star at (1, its score), and the majority class and
the 96.5%-of-the-teacher target as horizontal lines. The x axis is logarithmic, so 1/19 of the FLOPs
(the paper's headline) sits as far from 1/2 as 1/2 from 1/10.

    python experiments/plot_results.py mrpc cola      # -> docs/images/<task>_tradeoff.png
"""

from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def plot(results: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11.5, 5.2))
    teacher = results["teacher"]
    # The teacher is a black star; every other model gets a colour of its own (tab20 once the
    # default cycle of 10 would repeat one).
    others = [m for m in results["models"] if m["role"] != "teacher"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(others) > len(colors):
        colors = list(plt.get_cmap("tab20").colors)
    ax.plot([1.0], [100 * teacher], "*", ms=14, color="black", label="teacher")
    for k, m in enumerate(others):
        color = colors[k % len(colors)]
        op = m["operating_point"]
        curve = sorted(m.get("curve") or [], key=lambda p: p["flops_ratio_padded"])
        if curve:
            ax.plot([p["flops_ratio_padded"] for p in curve], [100 * p["metric"] for p in curve], "-",
                    color=color, lw=1.3, alpha=0.8)
        label = f"{m['name']} (1/{1 / m['params_ratio']:.1f} params)"
        ax.plot([op["flops_ratio_padded"]], [100 * op["metric"]], "o", ms=8, color=color, label=label)
    if results.get("majority") is not None:
        ax.axhline(100 * results["majority"], color="grey", ls=":", lw=1, label="majority class")
    ax.axhline(100 * results.get("target", 0.965) * teacher, color="black", ls="--", lw=0.8,
               label=f"{100 * results.get('target', 0.965):.1f}% of the teacher")
    ax.axvline(1 / 19, color="black", ls="-.", lw=0.8, label="1/19 of the FLOPs")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per dev example, inputs padded to 128 tokens (fraction of the teacher's)")
    ax.set_ylabel(f"dev {results['metric']} (%)")
    criteria = {m["operating_point"].get("criterion") for m in results["models"]} - {None}
    criterion = criteria.pop() if len(criteria) == 1 else "entropy"   # regression tasks: patience
    ax.set_title(f"{results['task']}: sweeps over {criterion} thresholds; dots: cross-fitted operating points")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # beside the axes: over them it hid points
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tasks", nargs="+")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "images"))
    a = p.parse_args(argv)
    os.makedirs(a.out_dir, exist_ok=True)
    for task in a.tasks:
        path = os.path.join(ROOT, "results", f"{task}.json")
        if not os.path.isfile(path):
            raise SystemExit(f"no results file {path}: run experiments/report.py for {task} first")
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        out = os.path.join(a.out_dir, f"{task}_tradeoff.png")
        plot(results, out)
        print(f"{task}: {out}")


if __name__ == "__main__":
    main()
