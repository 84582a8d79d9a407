"""One results file per task from the seeded evidence set: every seed kept, means and sds added.

    python experiments/aggregate.py                 # every task with seeds in results/evidence/
    python experiments/aggregate.py mrpc stsb --results-dir results

Reads ``<results>/evidence/<task>/seed-*.json`` (written by ``experiments/report.py`` from
``experiments/evidence.sh``; the protocol is ``results/evidence/protocol.json``) and writes
``<results>/<task>.json`` and ``<results>/<task>.md``, replacing the task's earlier single-run
file. A task without seed files is skipped, and so is one that lacks some of the seeds the
protocol fixed (``--partial`` aggregates it anyway).

The file keeps every seed's numbers (``models[i].seeds``: exits, exit average, operating point
and curve as in that seed's file), and adds, per model, the mean over seeds of its exits, exit
average and operating point, and their sample standard deviations (``*_sd``, ddof=1; null with
one seed). Seeds of one task must share the task, the dev set, the protocol and the teacher
(its dev metric within 1e-6: one teacher per task), else nothing is written.
docs/results.md lists the keys.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:                      # evidence_stats beside this file, also when loaded by path
    sys.path.insert(0, HERE)

from evidence_stats import mean_sd  # noqa: E402

TASKS = ("mrpc", "stsb", "rte", "cola", "sst2")      # the protocol's order
PROTOCOL = "results/evidence/protocol.json"
SAME_TEACHER = 1e-6           # as experiments/report.py: one teacher, its dev metric to float32 rounding
# Top-level keys every seed of a task must share (the teacher's metric is compared with a tolerance).
SHARED = ("task", "metric", "dev_examples", "pad_to", "target")
# Operating-point fields that are numbers (averaged); `threshold` differs by seed and becomes
# null, `criterion` is kept.
OP_NUMBERS = ("metric", "metric_ratio", "flops_ratio", "flops_ratio_padded", "mean_exit_layer", "speedup_measured")


def load_seeds(evidence_dir: str, task: str) -> list:
    """The per-seed results dicts of a task, sorted by seed (empty when it has none)."""
    runs = []
    for path in glob.glob(os.path.join(evidence_dir, task, "seed-*.json")):
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        r["_path"] = path
        runs.append(r)
    return sorted(runs, key=lambda r: r["seed"])


def check_same(runs: list) -> None:
    """Raise ValueError unless every seed file describes the same task, dev set, protocol and teacher."""
    first = runs[0]
    where = lambda r: r.get("_path", f"seed {r.get('seed')}")
    for r in runs[1:]:
        for key in SHARED:
            if r.get(key) != first.get(key):
                raise ValueError(f"{where(r)} has {key} {r.get(key)!r}, {where(first)} {first.get(key)!r}: "
                                 "seeds of one task must share it")
        if abs(r["teacher"] - first["teacher"]) > SAME_TEACHER:
            raise ValueError(f"{where(r)}: the teacher scores {r['teacher']:.6f} on dev, in {where(first)} "
                             f"{first['teacher']:.6f}: the seeds of a task share one teacher, these do not")
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed appears twice among the files: {seeds}")


def _numbers(values, what):
    """`values` (one per seed) when all are numbers, None when all are null; mixed is an error
    (a model whose exits or fields differ between seeds is not one model)."""
    present = [v is not None for v in values]
    if all(present):
        return values
    if not any(present):
        return None
    raise ValueError(f"{what} is null in some seeds and not in others: {values}")


def _mean_and_sd(values, what):
    """(mean, sd) over seeds of one number (None, None when it is null in every seed)."""
    values = _numbers(values, what)
    if values is None:
        return None, None
    _, mean, sd = mean_sd(values)
    return mean, sd


def aggregate_model(name: str, entries: list) -> dict:
    """One model's entry: its fixed description, every seed's numbers, their means and sds.

    entries: (seed, model entry of that seed's file) pairs, sorted by seed.
    """
    first = entries[0][1]
    for seed, m in entries:
        if m["role"] != first["role"]:
            raise ValueError(f"{name!r} is a {m['role']} in seed {seed} and a {first['role']} in "
                             f"seed {entries[0][0]}")
    n = len(entries)
    out = {k: first.get(k) for k in ("name", "role", "parameters", "params_ratio", "selection")}
    out["seeds"] = [{"seed": seed, "exits": m["exits"], "exit_average": m["exit_average"],
                     "operating_point": m["operating_point"], "curve": m["curve"]} for seed, m in entries]
    # The exits, layer by layer (null where the model has no exit).
    L = len(first["exits"])
    if any(len(m["exits"]) != L for _, m in entries):
        raise ValueError(f"{name!r}: the seeds' models have different numbers of layers")
    exits = [_mean_and_sd([m["exits"][l] for _, m in entries], f"{name!r} exit {l + 1}") for l in range(L)]
    out["exits"] = [mean for mean, _ in exits]
    out["exits_sd"] = [sd for _, sd in exits] if n > 1 else None
    out["exit_average"], out["exit_average_sd"] = _mean_and_sd([m["exit_average"] for _, m in entries],
                                                               f"{name!r} exit average")
    # The operating point: numbers averaged, the per-seed thresholds left to `seeds`.
    criteria = {m["operating_point"].get("criterion") for _, m in entries}
    if len(criteria) > 1:
        raise ValueError(f"{name!r}: the seeds' operating points use different criteria {sorted(map(str, criteria))}")
    op, op_sd = {"threshold": None, "criterion": criteria.pop()}, {}
    for key in OP_NUMBERS:
        op[key], op_sd[key] = _mean_and_sd([m["operating_point"].get(key) for _, m in entries],
                                           f"{name!r} operating_point.{key}")
    out["operating_point"] = op
    out["operating_point_sd"] = op_sd if n > 1 else None
    return out


def aggregate(runs: list) -> dict:
    """The aggregated results dict of one task from its per-seed results dicts."""
    if not runs:
        raise ValueError("no seed files")
    check_same(runs)
    runs = sorted(runs, key=lambda r: r["seed"])
    first = runs[0]
    out = {k: first.get(k) for k in ("task", "metric", "teacher", "majority", "probe", "target", "pad_to",
                                     "dev_examples", "operating_point_rule")}
    # The seeds are listed below: drop the seed from the recipe, flat (the recipe keys of the
    # version that ran the seeded set, `seed`) or in sections (`training.seed`).
    recipe = {k: dict(v) if isinstance(v, dict) else v for k, v in (first.get("recipe") or {}).items()}
    recipe.pop("seed", None)
    if isinstance(recipe.get("training"), dict):
        recipe["training"].pop("seed", None)
    out["recipe"] = recipe
    out["rates_searched_on"] = first.get("rates_searched_on")
    out["seeds"] = [r["seed"] for r in runs]
    out["commits"] = sorted({r.get("commit") for r in runs}, key=lambda c: (c is None, c or ""))
    out["protocol"] = PROTOCOL
    # Models in the per-seed order (the first seed's, then any name a later seed adds).
    names = []
    for r in runs:
        names += [m["name"] for m in r["models"] if m["name"] not in names]
    out["models"] = []
    for name in names:
        entries = [(r["seed"], m) for r in runs for m in r["models"] if m["name"] == name]
        out["models"].append(aggregate_model(name, entries))
    return out


# --------------------------------------------------------------------------- the table
def _pm(mean, sd, scale=100.0, digits=1, suffix=""):
    """'mean ± sd' (scaled), '-' for a null mean, the mean alone without an sd."""
    if mean is None:
        return "-"
    text = f"{scale * mean:.{digits}f}"
    if sd is not None:
        text += f" ± {scale * sd:.{digits}f}"
    return text + suffix


def _one_over(mean, sd):
    """A FLOPs ratio as 1/x: x = 1 / (mean ratio), its sd carried to 1/x to first order (sd / mean^2)."""
    if mean is None or mean <= 0:
        return "-"
    text = f"1/{1 / mean:.1f}"
    if sd is not None:
        text += f" ± {sd / mean ** 2:.1f}"
    return text


def markdown(results: dict) -> str:
    """The table of an aggregated file: one row per model, mean ± sd over its seeds."""
    L = max(len(m["exits"]) for m in results["models"])
    head = (["model", "role", "params", "n"] + [f"exit {l}" for l in range(1, L + 1)]
            + ["avg", "metric / teacher", "FLOPs @128", "speed-up"])
    seeds = ", ".join(map(str, results["seeds"]))
    lines = [f"{results['task']}: mean ± sample sd over seeds {seeds} (the protocol: {results['protocol']}); "
             f"dev {results['metric']} x100, the operating point cross-fitted on dev.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    if results.get("probe"):
        lines.append("| " + " | ".join(["linear probe (frozen)", "-", "-", "-"] + [_pm(v, None) for v in results["probe"]]
                                       + ["-"] * 4) + " |")
    for m in results["models"]:
        op, op_sd = m["operating_point"], m.get("operating_point_sd") or {}
        ex_sd = m.get("exits_sd") or [None] * len(m["exits"])
        cells = [m["name"], m["role"], f"{m['parameters'] / 1e6:.2f}M (1/{1 / m['params_ratio']:.1f})",
                 str(len(m["seeds"]))]
        cells += [_pm(e, s) for e, s in zip(m["exits"], ex_sd)] + ["-"] * (L - len(m["exits"]))
        cells += [_pm(m["exit_average"], m.get("exit_average_sd")),
                  _pm(op["metric_ratio"], op_sd.get("metric_ratio"), scale=1, digits=3),
                  _one_over(op["flops_ratio_padded"], op_sd.get("flops_ratio_padded")),
                  _pm(op["speedup_measured"], op_sd.get("speedup_measured"), scale=1, digits=2, suffix="x")]
        lines.append("| " + " | ".join(cells) + " |")
    if results.get("majority") is not None:
        lines.append("| " + " | ".join(["majority class", "-", "-", "-"] + ["-"] * L + [_pm(results["majority"], None)]
                                       + ["-"] * 3) + " |")
    lines += ["", "n: seeds. FLOPs @128: the operating point's FLOPs per example on inputs padded to 128 tokens, "
                  "1/x of the mean ratio to the teacher's, ± its sd carried to x (sd / mean²). Each seed's own "
                  "numbers, thresholds and curves are in the JSON file (`models[i].seeds`)."]
    searched = results.get("rates_searched_on")
    if searched and searched != results["task"]:
        lines += ["", f"Learning rates not searched on {results['task']}: taken from the search on {searched} "
                      "(docs/search.md)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line
def write(results: dict, results_dir: str) -> tuple:
    """Write <results_dir>/<task>.json and .md; their paths."""
    task = results["task"]
    out, md = os.path.join(results_dir, f"{task}.json"), os.path.join(results_dir, f"{task}.md")
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    os.replace(out + ".tmp", out)
    with open(md, "w", encoding="utf-8") as f:
        f.write(markdown(results))
    return out, md


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tasks", nargs="*", help=f"tasks (default: {' '.join(TASKS)})")
    p.add_argument("--results-dir", default=os.path.join(ROOT, "results"),
                   help="holds evidence/<task>/seed-*.json; the aggregated files go here")
    p.add_argument("--partial", action="store_true",
                   help="also aggregate a task that has only some of the protocol's seeds (by default it is "
                        "skipped, so that its earlier results file is not replaced by fewer seeds than the "
                        "protocol fixed)")
    a = p.parse_args(argv)
    evidence_dir = os.path.join(a.results_dir, "evidence")
    protocol = os.path.join(evidence_dir, "protocol.json")
    required = []
    if os.path.isfile(protocol):
        with open(protocol, encoding="utf-8") as f:
            required = json.load(f).get("seeds", [])
    for task in a.tasks or TASKS:
        runs = load_seeds(evidence_dir, task)
        if not runs:
            print(f"{task}: no seed files in {os.path.join(evidence_dir, task)}, skipped")
            continue
        missing = sorted(set(required) - {r["seed"] for r in runs})
        if missing and not a.partial:
            print(f"{task}: seeds {', '.join(str(r['seed']) for r in runs)} of the protocol's "
                  f"{', '.join(map(str, required))} (missing {', '.join(map(str, missing))}), skipped; "
                  "--partial aggregates them anyway")
            continue
        try:
            results = aggregate(runs)
        except ValueError as e:
            p.error(f"{task}: {e}")
        out, md = write(results, a.results_dir)
        print(f"{task}: seeds {', '.join(map(str, results['seeds']))} -> {out}, {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
