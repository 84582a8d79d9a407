"""The reproduction's targets, checked from ``results/<task>.json`` alone.

    python experiments/targets.py            # a line per target and task: met, not met, or no result yet

The targets (docs/results.md has the file's keys; metrics are fractions, one point is 0.01):

1. the MRPC teacher scores at least 0.834 combined (what PyTorch fine-tuning reaches on the
   same checkpoint);
2. on SST-2, CoLA and STS-B every TA exit scores at least the linear probe of its layer minus
   one point;
3. the TA's exit average beats the naive exits' on at least four of the five tasks (where a
   file has several naive baselines, e.g. at two exit learning rates, the strongest);
4. a student with at most 1/8 of the teacher's parameters and at most 1/19 of its FLOPs
   (inputs padded to 128 tokens) keeps at least 96.5% of the teacher's score at its
   operating point and scores more than two points above the majority class.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TASKS = ("sst2", "mrpc", "cola", "stsb", "rte")
POINT = 0.01


def load(results_dir: str) -> dict:
    """task -> results dict, for the tasks with a results file."""
    out = {}
    for task in TASKS:
        path = os.path.join(results_dir, f"{task}.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                out[task] = json.load(f)
    return out


def _role(results, role):
    return next((m for m in results["models"] if m["role"] == role), None)


def _strongest(results, role):
    """The row of `role` with the highest exit average (None if the file has none)."""
    rows = [m for m in results["models"] if m["role"] == role]
    return max(rows, key=lambda m: m["exit_average"], default=None)


def teacher_target(results: dict):
    """(met or None, text) for target 1."""
    r = results.get("mrpc")
    if r is None:
        return None, "no results/mrpc.json yet"
    return r["teacher"] >= 0.834, f"MRPC teacher {r['teacher']:.3f} (target >= 0.834)"


def probe_target(results: dict, task: str):
    """(met or None, text) for target 2 on one task."""
    r = results.get(task)
    ta = None if r is None else _role(r, "ta")
    if ta is None or not r.get("probe"):
        return None, f"{task}: no TA or probe result yet"
    short = [(l + 1, e, p) for l, (e, p) in enumerate(zip(ta["exits"], r["probe"])) if e is not None and e < p - POINT]
    text = ", ".join(f"exit {l} {e:.3f} < probe {p:.3f} - 0.01" for l, e, p in short) or "every exit within a point"
    return not short, f"{task}: {text}"


def naive_target(results: dict):
    """(met or None, text) for target 3: met when four tasks are won, not met when two are lost."""
    won, lost, lines = 0, 0, []
    for task in TASKS:
        r = results.get(task)
        ta, naive = (None, None) if r is None else (_role(r, "ta"), _strongest(r, "naive"))
        if ta is None or naive is None:
            lines.append(f"{task} -")
            continue
        win = ta["exit_average"] > naive["exit_average"]
        won, lost = won + win, lost + (not win)
        lines.append(f"{task} {ta['exit_average']:.3f} {'>' if win else '<='} {naive['exit_average']:.3f}")
    met = True if won >= 4 else (False if lost >= 2 else None)
    return met, f"TA over naive on {won} of {won + lost} tasks so far ({'; '.join(lines)}); target 4 of 5"


def student_target(results: dict, task: str):
    """(met or None, text) for target 4 on one task: the best qualifying student."""
    r = results.get(task)
    if r is None:
        return None, f"{task}: no results yet"
    best = None
    for m in r["models"]:
        if m["role"] != "student":
            continue
        op = m["operating_point"]
        ok = (m["params_ratio"] <= 1 / 8 and op["flops_ratio_padded"] <= 1 / 19 and op["metric_ratio"] >= 0.965
              and op["metric"] > r["majority"] + 2 * POINT)
        if ok:
            return True, f"{task}: {m['name']} keeps {op['metric_ratio']:.3f} at 1/{1 / op['flops_ratio_padded']:.1f}"
        small = m["params_ratio"] <= 1 / 8
        if small and (best is None or op["metric_ratio"] > best[1]["metric_ratio"]):
            best = (m, op)
    if best is None:
        return False, f"{task}: no student at <= 1/8 of the parameters"
    m, op = best
    return False, (f"{task}: best student at <= 1/8 parameters, {m['name']}, keeps {op['metric_ratio']:.3f} "
                   f"at 1/{1 / op['flops_ratio_padded']:.1f} padded FLOPs (majority {r['majority']:.3f}, "
                   f"its score {op['metric']:.3f})")


def report(results: dict) -> list:
    """Lines of (target, met or None, text)."""
    rows = [("1 teacher", *teacher_target(results))]
    rows += [("2 probe", *probe_target(results, t)) for t in ("sst2", "cola", "stsb")]
    rows.append(("3 TA vs naive", *naive_target(results)))
    rows += [("4 student", *student_target(results, t)) for t in TASKS]
    return rows


def main(argv=None):
    results_dir = (argv or sys.argv[1:] or [os.path.join(ROOT, "results")])[0]
    for name, met, text in report(load(results_dir)):
        status = {True: "met", False: "NOT MET", None: "no result yet"}[met]
        print(f"{name:14s} {status:14s} {text}")


if __name__ == "__main__":
    main()
