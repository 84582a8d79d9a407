"""One table per task from finished `npcosteff run` folders: the README's reproduction tables.

    python experiments/report.py --target 0.965 \\
        --run "2 heads, FFN 256, rank 48=runs/mrpc" --run "6 heads, FFN 768, rank 192=runs/mrpc-w6" \\
        --output runs/report_mrpc.md

Each ``--run LABEL=FOLDER`` names a run folder (with summary.json and sweep/). The teacher
and the TA come from the first folder; every folder adds its student under LABEL. For each
model the table gives the dev metric of every exit and their average, the parameters, and
one early-exit operating point read from the model's full threshold sweep:

* the threshold: the largest FLOPs saving whose dev metric stays at or above ``--target``
  times the teacher's (the paper's claim keeps 96.5%), and with ``--baseline`` above the
  majority class's (a model that always answers the same can keep 96.5% of a weak
  teacher's score on MRPC); when no threshold reaches it, the
  threshold with the best dev metric. The choice is made on the dev set that is reported,
  so it is an optimistic operating point, as in the paper's own sweeps;
* the dev metric there, as a share of the teacher's;
* the FLOPs per example there, as a fraction of the teacher's full forward pass;
* the measured speed-up: the teacher's wall-clock time per dev example over the model's at
  that threshold. By default both come from the sweeps (timed once each, possibly at
  different times); with ``--time`` every model is timed again here, side by side in one
  process: the dev set in batches of the recipe's eval_batch_size, each model in turn for
  ``--repeats`` rounds after a warm-up, the median per model.
"""

from __future__ import annotations

import argparse
import json
import os


def load_run(folder):
    with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    models = {m["name"]: m for m in summary["models"]}
    sweeps = {}
    for name in models:
        with open(os.path.join(folder, "sweep", f"{name}.json"), encoding="utf-8") as f:
            sweeps[name] = json.load(f)
    return summary, models, sweeps


def operating_point(rows, teacher_metric, target, floor=None):
    """(row, reached): the row with the fewest FLOPs among those at >= target * teacher (and
    above `floor`, the majority-class metric, when given), else the best row."""
    good = [r for r in rows if r["metric"] >= target * teacher_metric and (floor is None or r["metric"] > floor)]
    if good:
        return min(good, key=lambda r: (r["flops_per_sample"], -r["metric"])), True
    return max(rows, key=lambda r: (r["metric"], -r["flops_per_sample"])), False


def widths(m):
    w = m["widths"]
    heads, ffn = w["heads_per_layer"], w["intermediate_per_layer"]
    h = heads[0] if len(set(heads)) == 1 else "/".join(map(str, heads))
    f = ffn[0] if len(set(ffn)) == 1 else "/".join(map(str, ffn))
    return f"{h} / {f} / {w['embedding_rank'] or '-'}"


def time_points(runs, points, glue_dir, repeats):
    """Median seconds of one early-exit pass over dev for each (label, folder, threshold) in
    `points`, the models taking turns round by round (a change of machine load hits them all)."""
    import time

    import numpy as np

    from npcosteff.cli import load_data, pretrained_dir, tokenizer_dir
    from npcosteff.data.batching import iterate_batches
    from npcosteff.early_exit import early_exit_predict
    from npcosteff.model import CostEffModel
    from npcosteff.recipe import Recipe

    recipe = Recipe.from_dict(runs[0][1][0]["recipe"])
    data = load_data(recipe, glue_dir, tokenizer_dir(pretrained_dir(recipe.model)), need_train=False)
    batches = list(iterate_batches(data.dev, data.dev.labels, recipe.eval_batch_size, sort_by_length=True))
    models = {label: CostEffModel.from_pretrained(folder) for label, folder, _ in points}
    thresholds = {label: thr for label, _, thr in points}
    for label, model in models.items():                                  # warm-up
        early_exit_predict(model, batches[:1], threshold=thresholds[label])
    seconds = {label: [] for label in models}
    for _ in range(repeats):
        for label, model in models.items():
            t0 = time.perf_counter()
            early_exit_predict(model, batches, threshold=thresholds[label])
            seconds[label].append(time.perf_counter() - t0)
    return {label: float(np.median(s)) for label, s in seconds.items()}


def majority_baseline(summary, glue_dir):
    """The dev metric of always predicting the training set's most frequent label."""
    import numpy as np

    from npcosteff.data.glue import load_glue
    from npcosteff.metrics import compute_metrics

    recipe = summary["recipe"]
    train = np.asarray(load_glue(recipe["task"], "train", glue_dir, recipe.get("max_train")).labels)
    dev = np.asarray(load_glue(recipe["task"], "validation", glue_dir, recipe.get("max_eval")).labels)
    label = np.bincount(train.astype(np.int64)).argmax()
    return compute_metrics(recipe["task"], np.full(len(dev), label), dev)[summary["main_metric"]], int(label)


def table(runs, target, glue_dir=None, repeats=0, baseline=False):
    first_summary, first_models, first_sweeps = runs[0][1]
    key = first_summary["main_metric"]
    teacher = first_models["teacher"]
    t_metric = teacher["dev"]["final"]
    t_ms = first_sweeps["teacher"][0]["ms_per_sample"]
    entries = [("teacher", teacher, first_sweeps["teacher"])]
    if "ta" in first_models:
        entries.append(("TA", first_models["ta"], first_sweeps["ta"]))
    for label, (_, models, sweeps) in runs:
        if "student" in models:
            entries.append((f"student: {label}", models["student"], sweeps["student"]))
    L = max(e[1]["widths"]["num_hidden_layers"] for e in entries)
    floor = majority_baseline(first_summary, glue_dir) if baseline else None
    chosen = {label: operating_point(rows, t_metric, target, floor and floor[0]) for label, _, rows in entries}
    timed = None
    if repeats:
        timed = time_points(runs, [(label, m["folder"], chosen[label][0]["threshold"]) for label, m, _ in entries],
                            glue_dir, repeats)
    head = (["model", "heads / FFN / rank", "params"] + [f"exit {l}" for l in range(1, L + 1)] +
            ["avg", "threshold", f"{key} (x teacher)", "FLOPs", "measured speed-up"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    records = []
    for label, m, rows in entries:
        exits = m["dev"]["exits"]
        row, reached = chosen[label]
        thr = row["patience"] if row.get("criterion") == "patience" else row["threshold"]
        flops_frac = row["flops_per_sample"] / teacher["flops_per_sample"]
        speed = timed["teacher"] / timed[label] if timed else t_ms / row["ms_per_sample"]
        cells = [label, widths(m), f"{m['parameters'] / 1e6:.2f}M (1/{teacher['parameters'] / m['parameters']:.1f})"]
        cells += [f"{100 * exits[str(l)][key]:.1f}" if str(l) in exits else "-" for l in range(1, L + 1)]
        cells += [f"{100 * m['dev']['average']:.1f}", f"{thr:g}" + ("" if reached else " *"),
                  f"{100 * row['metric']:.1f} ({row['metric'] / t_metric:.3f})",
                  f"1/{1 / flops_frac:.1f}", f"{speed:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
        records.append({"model": label, "parameters": m["parameters"], "dev": m["dev"], "threshold": thr,
                        "reached_target": reached, "metric": row["metric"], "metric_vs_teacher": row["metric"] / t_metric,
                        "flops_fraction": flops_frac, "measured_speedup": speed,
                        "mean_exit_layer": row["mean_exit_layer"]})
    if baseline:
        value, label = floor
        cells = [f"majority class (always {label})", "-", "-"] + ["-"] * L + [f"{100 * value:.1f}", "-",
                                                                                 f"{100 * value:.1f} ({value / t_metric:.3f})", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
        records.append({"model": "majority class", "metric": value, "metric_vs_teacher": value / t_metric})
    legend = (f"Dev {key} (%) per exit of {first_summary['task']}; params with exits (1/x: fraction of the "
              f"teacher's); threshold: entropy threshold with the fewest FLOPs at >= {100 * target:.1f}% of the "
              f"teacher's dev {key}" + (" and above the majority class" if baseline else "") + f" (* none reaches it: the best threshold); FLOPs per dev example there as a "
              f"fraction of the teacher's; measured speed-up: the teacher's wall-clock time per dev example over "
              f"the model's at that threshold" + (f", timed side by side (median of {repeats} passes over dev)."
                                                 if repeats else ", from the sweeps."))
    return "\n".join(lines) + "\n\n" + legend + "\n", records


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER")
    p.add_argument("--target", type=float, default=0.965, help="share of the teacher's dev metric to keep")
    p.add_argument("--output", help="write the markdown (and a .json beside it) here")
    p.add_argument("--plot", help="also write a PNG of dev metric against FLOPs, one curve per model, from the "
                                  "sweeps (npcosteff.sweep.plot_sweeps, the plot `npcosteff sweep` writes)")
    p.add_argument("--baseline", action="store_true", help="add the majority-class row (needs the data)")
    p.add_argument("--time", action="store_true", help="time every model again here, side by side")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per model with --time")
    p.add_argument("--glue-dir", help="GLUE TSV folder for --time and --baseline (default: $NPCOSTEFF_GLUE_DIR, else the hub)")
    args = p.parse_args(argv)
    runs = []
    for spec in args.run:
        label, sep, folder = spec.rpartition("=")
        if not sep or not label:
            p.error(f"--run takes LABEL=FOLDER, got {spec!r}")
        if not os.path.isfile(os.path.join(folder, "summary.json")):
            p.error(f"{folder} has no summary.json: run `npcosteff run` there to the end first")
        runs.append((label, load_run(folder)))
    md, records = table(runs, args.target, args.glue_dir, args.repeats if args.time else 0, args.baseline)
    if args.plot:
        from npcosteff.sweep import plot_sweeps

        summary, models, sweeps = runs[0][1]
        curves = {"teacher": sweeps["teacher"]}
        if "ta" in sweeps:
            curves["TA"] = sweeps["ta"]
        curves.update({f"student: {label}": s["student"] for label, (_, _, s) in runs if "student" in s})
        plot_sweeps(curves, args.plot, metric_name=f"dev {summary['main_metric']}",
                    title=f"{summary['task']}: early exit ({summary['criterion']}), every model")
        print(f"plot: {args.plot}")
    print(md)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(md)
        with open(os.path.splitext(args.output)[0] + ".json", "w", encoding="utf-8") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
