"""What a run reports: a model's dev metrics and sizes, the early-exit sweep of several models, and
the run's summary table (docs/method.md, 7 and 8).

`describe` is the record every finished stage keeps in its DONE.json; `sweep_models` writes
<folder>/<name>.csv/.json and <folder>/sweep.png; `build_summary` turns both into summary.md
and summary.json; `sweep_table` prints one model's sweep.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..recipe import Recipe
from .folders import UserError, console

__all__ = ["describe", "metric_line", "sweep_models", "build_summary", "sweep_table", "fmt_count"]


def _n_tokens(split):
    return np.array([len(x) for x in split.input_ids], dtype=np.int64)         # (N,)


def describe(model, dev, task, eval_batch_size=64) -> dict:
    """Dev metrics of every exit, parameters and mean FLOPs per dev sample of a model."""
    from ..flops import count_parameters
    from ..sweep import mean_flops
    from ..train import evaluate

    result = evaluate(model, dev, task, eval_batch_size)
    n = _n_tokens(dev)
    c = model.config
    return {
        "dev": {"exits": {str(k): v for k, v in result["exits"].items()}, "average": result["average"],
                "final": result["final"], "main_metric": result["main_metric"]},
        "parameters": int(count_parameters(c)["total"]),
        "encoder_parameters": int(count_parameters(c, include_exits=False)["total"]),
        "flops_per_sample": mean_flops(c, n),
        "flops_to_exit": {str(i + 1): mean_flops(c, n, np.full(len(n), i + 1)) for i in c.exit_layers},
        "dev_examples": int(len(n)), "mean_tokens": float(n.mean()),
        "widths": {"num_hidden_layers": c.num_hidden_layers, "heads_per_layer": list(c.heads_per_layer),
                   "intermediate_per_layer": list(c.intermediate_per_layer),
                   "embedding_rank": c.embedding_rank, "exit_start": c.exit_start},
    }


def metric_line(summary) -> str:
    """The dev metric of a `describe` record in a few words: its one exit's, or averaged over
    the exits and at the last one."""
    dev = summary["dev"]
    exits = dev["exits"]
    name = dev["main_metric"]
    if len(exits) == 1:
        (layer, m), = exits.items()
        return f"dev {name} {100 * m[name]:.1f} (exit {layer})"
    return (f"dev {name} averaged over {len(exits)} exits {100 * dev['average']:.1f}, "
            f"last exit {100 * dev['final']:.1f}")


# --------------------------------------------------------------------------- sweep and summary
def sweep_models(models: dict, data, recipe: Recipe, folder, progress=True, thresholds=None, criterion=None,
                 plot=True):
    """Early-exit sweep of each model on dev: <folder>/<name>.csv/.json and (`plot`)
    <folder>/sweep.png.

    Returns (curves: name -> rows, png path or None). A model with one exit leaves at its last layer
    whatever the threshold, so its sweep is run once and repeated for every threshold."""
    from ..data.batching import iterate_batches
    from ..metrics import main_metric
    from ..sweep import plot_sweeps, threshold_sweep, write_sweep

    thresholds = list(recipe.early_exit.thresholds if thresholds is None else thresholds)
    criterion = criterion or recipe.early_exit.criterion
    batches = list(iterate_batches(data.dev, data.dev.labels, recipe.training.eval_batch_size, sort_by_length=True))
    labels = np.concatenate([b["labels"] for b in batches])                  # (N,) in batch order
    curves = {}
    for name, model in models.items():
        one_exit = len(model.config.exit_layers) == 1
        try:
            rows = threshold_sweep(model, batches, labels, recipe.task, thresholds[:1] if one_exit else thresholds,
                                   criterion=criterion, progress=progress)
        except ValueError as e:                      # e.g. entropy on a regression model
            raise UserError(f"sweep of {name}: {e}") from None
        if one_exit:
            key = "patience" if criterion == "patience" else "threshold"
            rows = [{**rows[0], key: (int(t) if criterion == "patience" else float(t))} for t in thresholds]
        curves[name] = rows
        paths = write_sweep(rows, folder, name)
        console.say(f"[sweep] {name}: {paths['csv']}, {paths['json']}")
    if not plot:
        return curves, None
    return curves, plot_run(curves, {}, recipe, folder)


def plot_run(curves: dict, points: dict, recipe: Recipe, folder) -> str:
    """<folder>/sweep.png: each model's dev score against FLOPs over the sweep, with each
    operating point chosen on held-out data (:mod:`~npcosteff.runs.operating`) starred and the
    student's (else the first's) labelled."""
    from ..metrics import main_metric
    from ..sweep import plot_sweeps

    teacher = curves["teacher"][0] if "teacher" in curves else None          # its one row: every layer
    reference = teacher["flops_per_sample"] if teacher else None
    marks = {}
    labelled = "student" if "student" in points else next(iter(points), None)     # one label, the others starred
    for name, p in points.items():
        row = p["dev"]
        flops = f", 1/{reference / row['flops_per_sample']:.1f} of the FLOPs" if reference else ""
        text = (f"{name}: threshold {p['threshold']:g}, chosen on held-out data\n"
                f"dev {100 * row['metric']:.1f}{flops}, {p['timing']['speedup']:.1f}x faster (measured)")
        marks[name] = (row, text if name == labelled else None)
    return plot_sweeps(curves, os.path.join(folder, "sweep.png"), metric_name=f"dev {main_metric(recipe.task)}",
                       title=f"{recipe.task}: early exit ({recipe.early_exit.criterion}) against FLOPs",
                       marks=marks, reference=(teacher["metric"], recipe.early_exit.target) if teacher else None)


def fmt_count(n) -> str:
    """A count (parameters, FLOPs) with a k, M or G suffix."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _fmt_threshold(t, criterion) -> str:
    return f"{int(t)}" if criterion == "patience" else f"{t:g}"


def _fmt_ratio(x) -> str:
    """A reduction against the teacher as a fraction: 2.6 -> "1/2.6"."""
    return f"1/{x:.1f}" if x and math.isfinite(x) else "-"


def _table(head, rows) -> list:
    """A markdown table's lines."""
    return (["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def build_summary(entries: list, recipe: Recipe, curves: dict, points: dict | None = None,
                  majority: float | None = None) -> tuple:
    """The run's summary as (markdown, JSON-ready dict): two tables, and with `points` (the
    operating points chosen on held-out data, :mod:`~npcosteff.runs.operating`) a third table
    and three sentences saying what the numbers show (`majority`: the dev score of always
    answering the most frequent class, the floor an exit must clear to have learnt anything).

    `entries`: dicts with ``name``, ``folder`` and the stage's describe() record; the first is
    the teacher, the reference of every ratio. `curves`: each model's sweep rows.

    * The models: parameters (and the teacher's over this model's), mean analytic FLOPs per dev
      example through every layer and exit (the same ratio), the dev metric of each exit and
      their average.
    * The operating points, one row per model and summary threshold: the dev metric with early
      exit at that threshold, its share of the teacher's, the FLOPs reduction against the
      teacher's full forward pass, the measured speed-up (the teacher's wall-clock time per dev
      example in the sweep over this model's at that threshold) and the mean exit layer. A model
      with one exit leaves at its last layer whatever the threshold: one row.

    summary.json keeps, per model, ``early_exit``: threshold -> that row's numbers."""
    from ..metrics import main_metric

    key = main_metric(recipe.task)
    criterion = recipe.early_exit.criterion
    L = max(e["widths"]["num_hidden_layers"] for e in entries)
    teacher = entries[0]
    reference = teacher["flops_per_sample"]                    # the teacher's full forward pass
    reference_params = teacher["parameters"]
    reference_score = teacher["dev"]["final"]
    teacher_rows = curves.get(teacher["name"], [])
    reference_ms = teacher_rows[0]["ms_per_sample"] if teacher_rows else None   # its timed sweep pass
    shown = recipe.early_exit.summary_threshold_values()
    by = "patience" if criterion == "patience" else "threshold"

    model_rows, point_rows, models = [], [], []
    for e in entries:
        exits = e["dev"]["exits"]
        param_ratio = reference_params / e["parameters"]
        flops_ratio = reference / e["flops_per_sample"]
        model_rows.append([e["name"], fmt_count(e["parameters"]), _fmt_ratio(param_ratio),
                           fmt_count(e["flops_per_sample"]), _fmt_ratio(flops_ratio)]
                          + [f"{100 * exits[str(l)][key]:.1f}" if str(l) in exits else "-" for l in range(1, L + 1)]
                          + [f"{100 * e['dev']['average']:.1f}"])
        one_exit = len(exits) == 1
        at = {}
        for t in shown:
            match = [r for r in curves.get(e["name"], []) if math.isclose(r[by], t)]
            if not match:
                continue
            r = match[0]
            reduction = reference / r["flops_per_sample"]
            measured = reference_ms / r["ms_per_sample"] if reference_ms and r.get("ms_per_sample") else None
            share = r["metric"] / reference_score if reference_score > 0 else None
            at[_fmt_threshold(t, criterion)] = {
                "metric": r["metric"], "expected_speedup": r["expected_speedup"], "measured_speedup": measured,
                "ms_per_sample": r.get("ms_per_sample"),
                "flops_per_sample": r["flops_per_sample"], "flops_reduction_vs_teacher": reduction,
                "mean_exit_layer": r["mean_exit_layer"], "score_vs_teacher": share}
            if one_exit and len(at) > 1:
                continue                                   # the same pass at every threshold: one row
            point_rows.append([e["name"], "any (one exit)" if one_exit else _fmt_threshold(t, criterion),
                               f"{100 * r['metric']:.1f}", f"{100 * share:.1f}%" if share is not None else "-",
                               _fmt_ratio(reduction), f"{measured:.2f}x" if measured else "-",
                               f"{r['mean_exit_layer']:.2f} / {e['widths']['num_hidden_layers']}"])
        models.append({"name": e["name"], "folder": e["folder"], "parameters": e["parameters"],
                       "encoder_parameters": e["encoder_parameters"], "flops_per_sample": e["flops_per_sample"],
                       "flops_reduction_vs_teacher": flops_ratio, "parameters_reduction_vs_teacher": param_ratio,
                       "dev": e["dev"], "widths": e["widths"], "early_exit": at})

    n = teacher["dev_examples"]
    name = "patience" if criterion == "patience" else f"{criterion} threshold"
    first = _table(["model", "parameters", "vs teacher", "FLOPs/example", "vs teacher"]
                   + [f"exit {l}" for l in range(1, L + 1)] + ["mean of exits"], model_rows)
    first_legend = (f"The models. Parameters with exits; FLOPs: mean analytic FLOPs per dev example through every "
                    f"layer and exit; 'vs teacher': 1/x is x times fewer than the teacher's. Exit columns: dev {key} "
                    f"(%) of {recipe.task} ({n} examples) at each exit without early exit ('-': no exit there).")
    second = _table(["model", name, f"dev {key}", "of teacher's", "FLOPs vs teacher", "measured speed-up",
                     "mean exit layer"], point_rows)
    second_legend = (f"The operating points: each model with early exit ({criterion}) at the summary's thresholds. "
                     f"Dev {key} (%) and its share of the teacher's ({100 * reference_score:.1f}); FLOPs per dev "
                     f"example against the teacher's full forward pass; measured speed-up: the teacher's wall-clock "
                     f"time per dev example over this model's (batches of {recipe.training.eval_batch_size}, timed "
                     f"once during the sweep: a rough timing); mean exit layer of the dev examples.")
    text = "\n".join(first) + "\n\n" + first_legend + "\n\n" + "\n".join(second) + "\n\n" + second_legend + "\n"
    result = {"task": recipe.task, "main_metric": key, "criterion": criterion,
              "summary_thresholds": list(shown), "models": models, "recipe": recipe.to_dict()}
    if points:
        table, sentences, rows = _operating_points(points, entries, key, reference, reference_score, majority)
        text += "\n" + table + "\n\n" + sentences + "\n"
        result.update({"operating_points": rows, "majority": majority, "headline": sentences})
    return text, result


def _operating_points(points, entries, key, reference_flops, reference_score, majority):
    """The third table (one row per multi-exit model: its operating point chosen on held-out
    data, scored on dev) and the three sentences; returns (table, sentences, JSON rows)."""
    by_name = {e["name"]: e for e in entries}
    rows, lines = {}, []
    for name, p in points.items():
        d = p["dev"]
        share = d["metric"] / reference_score if reference_score > 0 else float("nan")     # nan: no share of 0
        rows[name] = {"threshold": p["threshold"], "heldout": p["heldout"], "heldout_teacher": p["heldout_teacher"],
                      "heldout_examples": p["heldout_examples"], "reached_target_on_heldout": p["reached"],
                      "target": p["target"], "dev": d["metric"], "dev_share_of_teacher": share,
                      "flops_reduction_vs_teacher": reference_flops / d["flops_per_sample"],
                      "mean_exit_layer": d["mean_exit_layer"], "measured_speedup": p["timing"]["speedup"],
                      "timing": p["timing"]}
        lines.append([name, f"{p['threshold']:g}",
                      f"{100 * p['heldout']:.1f}" + (f" ({100 * p['heldout'] / p['heldout_teacher']:.1f}%)"
                                                     if p["heldout_teacher"] > 0 else ""),
                      f"{100 * d['metric']:.1f}", f"{100 * share:.1f}%", _fmt_ratio(rows[name]["flops_reduction_vs_teacher"]),
                      f"{p['timing']['speedup']:.2f}x", f"{d['mean_exit_layer']:.2f}"])
    some = next(iter(points.values()))
    table = "\n".join(_table(["model", "threshold", "held-out (of teacher's)", f"dev {key}", "of teacher's",
                              "FLOPs vs teacher", "measured speed-up", "mean exit layer"], lines))
    table += (f"\n\nThe operating points: for each model with exits, the threshold with the fewest FLOPs whose "
              f"score on the {some['heldout_examples']} held-out training sentences keeps "
              f"{100 * some['target']:g}% of the teacher's there ({100 * some['heldout_teacher']:.1f}); dev never "
              f"enters the choice. Measured speed-up: the teacher's full forward pass over all of dev against the "
              f"model with early exit, median of {some['timing']['rounds']} alternating rounds each.")
    said = []
    teacher = by_name["teacher"]
    if "ta" in by_name:
        exits = [v[key] for v in by_name["ta"]["dev"]["exits"].values()]
        lo, hi = min(exits), max(exits)
        if majority is None:
            verdict = ""
        elif lo >= majority + 0.10:
            verdict = ": every exit has learnt the task, the first ones included"
        else:
            below = sum(v < majority + 0.10 for v in exits)
            verdict = (f": {below} of the {len(exits)} exits are within 10 points of that, so they have learnt "
                       f"little (train longer, or on more data)")
        floor = f", against {100 * majority:.1f} for always answering the most frequent class" if majority else ""
        said.append(f"The teacher scores {100 * teacher['dev']['final']:.1f} on dev, and the TA's exits, one after "
                    f"every layer, score {100 * lo:.1f} to {100 * hi:.1f}{floor}{verdict}.")
    if "student" in rows:
        r, e = rows["student"], by_name["student"]
        chosen = ("chosen on held-out data" if r["reached_target_on_heldout"] else
                  f"with the best held-out score (none kept {100 * r['target']:g}% of the teacher's there)")
        said.append(f"The slender student has 1/{teacher['parameters'] / e['parameters']:.1f} of the teacher's "
                    f"parameters; at the threshold {chosen} it keeps {100 * r['dev_share_of_teacher']:.1f}% "
                    f"of the teacher's dev score ({100 * r['dev']:.1f}) with {r['flops_reduction_vs_teacher']:.1f} "
                    f"times fewer FLOPs, and runs {r['measured_speedup']:.1f} times faster, measured.")
        width = teacher["flops_per_sample"] / e["flops_per_sample"]
        said.append(f"Both halves of the method give speed: each of its layers costs 1/{width:.1f} of a teacher layer "
                    f"(width), and the average sentence leaves after {r['mean_exit_layer']:.1f} of "
                    f"{e['widths']['num_hidden_layers']} layers (depth).")
    return table, " ".join(said), rows


def sweep_table(rows, criterion) -> str:
    """One model's sweep rows as a printed table: per threshold the metric, mean exit layer,
    layer speed-up, FLOPs and time per example."""
    key = "patience" if criterion == "patience" else "threshold"
    out = [f"  {key:>9} | metric | mean exit | speed-up | FLOPs/example | ms/example"]
    for r in rows:
        out.append(f"  {r[key]:>9g} | {100 * r['metric']:6.2f} | {r['mean_exit_layer']:9.2f} | "
                   f"{r['expected_speedup']:7.2f}x | {fmt_count(r['flops_per_sample']):>13} | "
                   f"{r['ms_per_sample']:.2f}")
    return "\n".join(out)
