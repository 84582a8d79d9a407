"""The claims of the seeded evidence set, checked from the aggregated ``results/<task>.json``.

    python experiments/targets.py [RESULTS_DIR]     # per task and claim: n, means, sds, the interval, the verdict

The claims are those of ``results/evidence/protocol.json`` ("claims"), each a difference of two
models paired by seed (``experiments/aggregate.py`` keeps every seed's numbers under
``models[i].seeds``):

(a) ``ta_over_naive``: TA minus naive exits: each exit's dev metric, the exit average, the
    matched-FLOPs score (``evidence_stats.matched_flops_score`` of the two curves, per seed)
    and the cross-fitted operating point's metric;
(b) ``all_exits_over_last_exit``: the student minus the student pruned with the last exit's
    importance only: exit average and operating-point metric;
(c) ``slender_early_exit``: the student (early exit) against the no-exits student and against
    the TA: the operating point's metric ratio (higher is better) and padded FLOPs ratio
    (lower is better);
(d) ``headline``: the student's operating-point metric ratio and padded FLOPs ratio, mean and
    95% interval of the mean over seeds, and its parameter ratio, against the paper's 96.5% of
    the teacher at 1/19 of the FLOPs with at most 1/8 of the parameters.

A paired claim holds on a task when the 95% interval of the difference, mean +- t(0.975, n-1)
x sd / sqrt(n), lies on the better side of 0 (above for higher-is-better, below for
lower-is-better), is refuted when it lies on the other side, and is unresolved otherwise; one
seed gives no interval and no verdict. A part of the headline is met when its whole interval
is on the right side of the paper's number. Every line shows n and the interval. A file
without ``seeds`` (a single run, before the evidence set) is reported as not evidence.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:                      # evidence_stats beside this file, also when loaded by path
    sys.path.insert(0, HERE)

from evidence_stats import mean_interval, matched_flops_score, paired, verdict  # noqa: E402

TASKS = ("mrpc", "stsb", "rte", "cola", "sst2")      # the protocol's order
# The evidence set's model names (experiments/evidence.sh).
NAMES = {"ta": "TA", "naive": "naive exits", "student": "student: 2 / 128 / 32",
         "last_exit": "student: last-exit importance", "no_exits": "student: no exits"}
# The paper's headline: 96.5% of the teacher at 1/19 of the padded FLOPs, at most 1/8 of the parameters.
PAPER_METRIC_RATIO, PAPER_FLOPS, MAX_PARAMS = 0.965, 1 / 19, 1 / 8
NOT_EVIDENCE = "single run, no seeds: not evidence"


def load(results_dir: str) -> dict:
    """task -> results dict, for the tasks with a results file."""
    out = {}
    for task in TASKS:
        path = os.path.join(results_dir, f"{task}.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                out[task] = json.load(f)
    return out


# --------------------------------------------------------------------------- rows
def _values(model, get) -> dict:
    """seed -> get(that seed's entry), leaving out seeds where it is null."""
    out = {}
    for s in model["seeds"]:
        v = get(s)
        if v is not None:
            out[s["seed"]] = v
    return out


def _no_data(task, claim, measure, why):
    return {"task": task, "claim": claim, "measure": measure, "n": 0, "verdict": "no data", "note": why}


def _paired_row(task, claim, measure, a_name, b_name, a: dict, b: dict, better="higher", note=""):
    """A row of a - b paired by seed (the seeds both have). With better="lower" the verdict is
    about a being lower: it holds when the interval lies below 0."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return _no_data(task, claim, measure, f"no seed with both {a_name!r} and {b_name!r}")
    row = {"task": task, "claim": claim, "measure": measure, "a": a_name, "b": b_name, "better": better,
           "seeds": seeds, "note": note}
    row.update(paired({s: a[s] for s in seeds}, {s: b[s] for s in seeds}))
    if better == "lower" and row["ci_low"] is not None:          # b - a above 0 means a is lower
        row["verdict"] = verdict(-row["ci_high"], -row["ci_low"], row["n"])
    return row


def _op(key):
    return lambda s: s["operating_point"].get(key)


def _ta_over_naive(task, ta, naive) -> list:
    rows, claim = [], "ta_over_naive"
    L = len(ta["seeds"][0]["exits"])
    for l in range(L):
        get = lambda s, l=l: s["exits"][l] if l < len(s["exits"]) else None
        a, b = _values(ta, get), _values(naive, get)
        if a and b:
            rows.append(_paired_row(task, claim, f"exit {l + 1}", ta["name"], naive["name"], a, b))
    rows.append(_paired_row(task, claim, "exit average", ta["name"], naive["name"],
                            _values(ta, lambda s: s["exit_average"]), _values(naive, lambda s: s["exit_average"])))
    # The matched-FLOPs score: each seed's two curves over the FLOPs they share.
    a, b, skipped = {}, {}, []
    curves = {s["seed"]: s["curve"] for s in naive["seeds"]}
    for s in ta["seeds"]:
        if s["seed"] not in curves:
            continue
        try:
            a[s["seed"]], b[s["seed"]] = matched_flops_score(s["curve"], curves[s["seed"]])
        except ValueError as e:
            skipped.append(f"seed {s['seed']}: {e}")
    rows.append(_paired_row(task, claim, "matched-FLOPs score", ta["name"], naive["name"], a, b,
                            note="; ".join(skipped)))
    rows.append(_paired_row(task, claim, "operating-point metric", ta["name"], naive["name"],
                            _values(ta, _op("metric")), _values(naive, _op("metric"))))
    return rows


def _headline(task, student) -> list:
    """The student's operating point against the paper's numbers: met when the whole interval is
    on the right side, not met when it is on the wrong side, unresolved otherwise."""
    rows = []
    for key, bound, better in (("metric_ratio", PAPER_METRIC_RATIO, "higher"),
                               ("flops_ratio_padded", PAPER_FLOPS, "lower")):
        vals = _values(student, _op(key))
        if not vals:
            rows.append(_no_data(task, "headline", key, f"{student['name']!r} has no {key}"))
            continue
        row = {"task": task, "claim": "headline", "measure": key, "a": student["name"], "better": better,
               "bound": bound, "seeds": sorted(vals), "note": ""}
        row.update(mean_interval([vals[s] for s in sorted(vals)]))
        lo, hi = row["ci_low"], row["ci_high"]
        if lo is None:
            row["verdict"] = "unresolved (n=1)"
        else:                          # "at least 96.5%", "at most 1/19": the bound itself counts as met
            good, bad = (lo >= bound, hi < bound) if better == "higher" else (hi <= bound, lo > bound)
            row["verdict"] = "met" if good else ("not met" if bad else "unresolved")
        rows.append(row)
    ratio = student["params_ratio"]
    rows.append({"task": task, "claim": "headline", "measure": "params_ratio", "a": student["name"], "better": "lower",
                 "bound": MAX_PARAMS, "n": len(student["seeds"]), "seeds": [s["seed"] for s in student["seeds"]],
                 "mean": ratio, "sd": None, "ci_low": None, "ci_high": None,
                 "verdict": "met" if ratio <= MAX_PARAMS else "not met",
                 "note": "exact: fixed by the width, the same in every seed"})
    return rows


def claims(results_by_task: dict) -> list:
    """The rows of every claim on every task (a list of dicts; see the module docstring).

    A paired row has task, claim, measure, a, b, better, seeds, note and paired()'s n, mean_a,
    mean_b, sd_a, sd_b, diff_mean, diff_sd, ci_low, ci_high, verdict; a headline row has a, n,
    seeds, mean, sd, ci_low, ci_high, bound, better, verdict ("met", "not met", "unresolved");
    a claim whose models a file lacks gives a "no data" row; a file without seeds one row
    with the verdict NOT_EVIDENCE.
    """
    order = [t for t in TASKS if t in results_by_task] + sorted(set(results_by_task) - set(TASKS))
    rows = []
    for task in order:
        r = results_by_task[task]
        if "seeds" not in r:
            rows.append({"task": task, "claim": "all", "measure": None, "n": 1, "verdict": NOT_EVIDENCE,
                         "note": "this file is a single run written before the evidence set; "
                                 "run experiments/aggregate.py once its seeds are in"})
            continue
        models = {m["name"]: m for m in r["models"]}
        m = {key: models.get(name) for key, name in NAMES.items()}

        def need(claim, *keys):
            missing = [NAMES[k] for k in keys if m[k] is None]
            if missing:
                rows.append(_no_data(task, claim, None, f"no model named {', '.join(map(repr, missing))}"))
            return not missing

        if need("ta_over_naive", "ta", "naive"):
            rows += _ta_over_naive(task, m["ta"], m["naive"])
        if need("all_exits_over_last_exit", "student", "last_exit"):
            s, le = m["student"], m["last_exit"]
            rows.append(_paired_row(task, "all_exits_over_last_exit", "exit average", s["name"], le["name"],
                                    _values(s, lambda x: x["exit_average"]), _values(le, lambda x: x["exit_average"])))
            rows.append(_paired_row(task, "all_exits_over_last_exit", "operating-point metric", s["name"], le["name"],
                                    _values(s, _op("metric")), _values(le, _op("metric"))))
        for other in ("no_exits", "ta"):
            if need("slender_early_exit", "student", other):
                s, o = m["student"], m[other]
                for key, what, better in (("metric_ratio", "metric ratio", "higher"),
                                          ("flops_ratio_padded", "padded FLOPs ratio", "lower")):
                    rows.append(_paired_row(task, "slender_early_exit", f"operating-point {what}", s["name"],
                                            o["name"], _values(s, _op(key)), _values(o, _op(key)), better=better))
        if need("headline", "student"):
            rows += _headline(task, m["student"])
    return rows


# --------------------------------------------------------------------------- printing
def _x(v, signed=False):
    """A fraction as points (x100)."""
    return "-" if v is None else (f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}")


def _inv(v):
    """A FLOPs ratio as 1/x ("0" when an interval reaches 0)."""
    return f"1/{1 / v:.1f}" if v > 0 else "0"


def _sd(v):
    return "no sd" if v is None else f"sd {100 * v:.2f}"


def line(row) -> str:
    """One row as text: always n and the interval (or why there is none) beside the verdict."""
    head = f"  {row['claim']:25s} {str(row.get('measure') or ''):34s} n={row['n']}"
    if row["verdict"] in ("no data", NOT_EVIDENCE):
        return f"{head}  {row['verdict']}: {row.get('note', '')}"
    ci = "no interval" if row.get("ci_low") is None else None
    if row["claim"] == "headline":
        if row["measure"] == "params_ratio":
            return (f"{head}  {row['a']}: 1/{1 / row['mean']:.1f} of the parameters ({row['note']}) "
                    f"against <= 1/{1 / row['bound']:.0f}: {row['verdict']}")
        if row["measure"] == "flops_ratio_padded":
            val = f"{_inv(row['mean'])} ({_x(row['mean'])}%, {_sd(row['sd'])})"
            ci = ci or (f"[{_x(row['ci_low'])}, {_x(row['ci_high'])}]% "
                        f"({_inv(row['ci_high'])} to {_inv(row['ci_low'])})")
            bound = f"<= 1/{1 / row['bound']:.0f}"
        else:
            val = f"{_x(row['mean'])} ({_sd(row['sd'])})"
            ci = ci or f"[{_x(row['ci_low'])}, {_x(row['ci_high'])}]"
            bound = f">= {_x(row['bound'])}"
        return f"{head}  {row['a']}: mean {val}, 95% CI {ci}, against the paper's {bound}: {row['verdict']}"
    ci = ci or f"[{_x(row['ci_low'], True)}, {_x(row['ci_high'], True)}]"
    text = (f"{head}  {row['a']} {_x(row['mean_a'])} ({_sd(row['sd_a'])}) - {row['b']} {_x(row['mean_b'])} "
            f"({_sd(row['sd_b'])}) = {_x(row['diff_mean'], True)} ({_sd(row['diff_sd'])}), 95% CI {ci}"
            f"{', lower is better' if row['better'] == 'lower' else ''}: {row['verdict']}")
    return text + (f" ({row['note']})" if row.get("note") else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results_dir", nargs="?", default=os.path.join(ROOT, "results"))
    a = p.parse_args(argv)
    results = load(a.results_dir)
    print("Values x100 (points; ratios in % of the teacher). Paired claims: a - b over the seeds both have, "
          "95% interval mean +- t(0.975, n-1) sd / sqrt(n); holds when it lies on the better side of 0, "
          "refuted on the other, unresolved across it. Headline: met when the whole interval is on the "
          "paper's side.")
    rows = claims(results)
    for task in TASKS:
        if task not in results:
            print(f"== {task}: no results file yet")
            continue
        r = results[task]
        seeds = r.get("seeds")
        print(f"== {task}: " + (f"seeds {', '.join(map(str, seeds))} (n={len(seeds)}), commits "
                                f"{', '.join(str(c) for c in r.get('commits', []))}" if seeds else NOT_EVIDENCE))
        for row in rows:
            if row["task"] == task:
                print(line(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
