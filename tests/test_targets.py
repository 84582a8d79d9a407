"""experiments/targets.py: the evidence set's claims read from aggregated results files.

The files here are minimal aggregated results (the keys targets.py reads: each model's
params_ratio and its per-seed entries); every expected interval is computed by hand with
scipy.stats.t."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
from scipy import stats

spec = importlib.util.spec_from_file_location("targets", Path(__file__).parents[1] / "experiments" / "targets.py")
targets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(targets)


def _model(name, role, per_seed, params_ratio=1.0):
    """per_seed: seed -> (operating-point metric, metric ratio, padded FLOPs ratio, exits)."""
    seeds = []
    for seed, (metric, ratio, flops, exits) in sorted(per_seed.items()):
        curve = [] if len(exits) == 1 else [{"flops_ratio_padded": f, "metric": metric} for f in (flops, 1.0)]
        seeds.append({"seed": seed, "exits": exits, "exit_average": sum(exits) / len(exits), "curve": curve,
                      "operating_point": {"metric": metric, "metric_ratio": ratio, "flops_ratio_padded": flops}})
    return {"name": name, "role": role, "params_ratio": params_ratio, "seeds": seeds}


def _results(task, models):
    seeds = sorted({s["seed"] for m in models for s in m["seeds"]})
    return {"task": task, "teacher": 0.8, "majority": 0.5, "seeds": seeds, "commits": ["abc"], "models": models}


def _student(ratios, flops, params_ratio=1 / 9.5):
    return _model("student: 2 / 128 / 32", "student",
                  {s: (0.8 * r, r, f, [0.6, 0.8 * r]) for s, (r, f) in enumerate(zip(ratios, flops), start=1)},
                  params_ratio)


def test_the_headline_is_met_only_where_its_interval_is_on_the_papers_side():
    # Metric ratios 0.978, 0.980, 0.982: 0.980 +- 4.303 x 0.002 / sqrt(3) = [0.975, 0.985] >= 0.965: met.
    # FLOPs 0.040, 0.045, 0.050: 0.045 +- 4.303 x 0.005 / sqrt(3) = [0.0326, 0.0574] holds 1/19: unresolved.
    rows = targets.claims({"rte": _results("rte", [_student([0.978, 0.980, 0.982], [0.040, 0.045, 0.050])])})
    head = {r["measure"]: r for r in rows if r["claim"] == "headline"}
    t = stats.t.ppf(0.975, 2)
    assert head["metric_ratio"]["ci_low"] == pytest.approx(0.980 - t * 0.002 / math.sqrt(3))
    assert head["metric_ratio"]["verdict"] == "met" and head["metric_ratio"]["n"] == 3
    assert head["flops_ratio_padded"]["ci_high"] == pytest.approx(0.045 + t * 0.005 / math.sqrt(3))
    assert head["flops_ratio_padded"]["verdict"] == "unresolved"
    assert head["params_ratio"]["verdict"] == "met"
    # 1/7 of the parameters is more than the 1/8 the headline allows.
    rows = targets.claims({"rte": _results("rte", [_student([0.97] * 3, [0.04] * 3, params_ratio=1 / 7)])})
    assert [r["verdict"] for r in rows if r["measure"] == "params_ratio"] == ["not met"]
    # The claims whose models the file lacks say so.
    assert {r["claim"]: r["verdict"] for r in rows if r["claim"] != "headline"} == {
        "ta_over_naive": "no data", "all_exits_over_last_exit": "no data", "slender_early_exit": "no data"}


def test_fewer_flops_is_the_better_direction():
    # The student uses more FLOPs than the no-exits model in every seed (0.12, 0.13, 0.14
    # against 0.10): the difference is +0.03 and the claim of fewer FLOPs is refuted.
    student = _student([0.95, 0.96, 0.97], [0.12, 0.13, 0.14])
    static = _model("student: no exits", "student", {s: (0.76, 0.95, 0.10, [0.76]) for s in (1, 2, 3)}, 1 / 9.5)
    rows = targets.claims({"mrpc": _results("mrpc", [student, static])})
    flops = next(r for r in rows if r["claim"] == "slender_early_exit" and r["measure"].endswith("FLOPs ratio"))
    assert flops["better"] == "lower" and flops["diff_mean"] == pytest.approx(0.03)
    assert flops["ci_low"] == pytest.approx(0.03 - stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3))
    assert flops["verdict"] == "refuted"
    # Its metric ratio is higher (0.96 against 0.95 on average): by 0.01 +- 4.303 x 0.01 / sqrt(3).
    ratio = next(r for r in rows if r["claim"] == "slender_early_exit" and r["measure"].endswith("metric ratio"))
    assert ratio["better"] == "higher" and ratio["diff_mean"] == pytest.approx(0.01)
    assert ratio["verdict"] == "unresolved"


def test_a_single_run_file_is_not_evidence_and_does_not_crash(tmp_path, capsys):
    # A results file of the earlier reproduction: no `seeds`, one value per model.
    (tmp_path / "cola.json").write_text(json.dumps({
        "task": "cola", "teacher": 0.5, "majority": 0.0, "models": [
            {"name": "TA", "role": "ta", "params_ratio": 1.0, "exits": [0.2, 0.3], "exit_average": 0.25,
             "operating_point": {"metric": 0.3, "metric_ratio": 0.6, "flops_ratio_padded": 0.5}}]}))
    loaded = targets.load(str(tmp_path))
    assert list(loaded) == ["cola"]                             # only the tasks with a file
    rows = targets.claims(loaded)
    assert [(r["task"], r["verdict"]) for r in rows] == [("cola", "single run, no seeds: not evidence")]
    assert targets.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== cola: single run, no seeds: not evidence" in out and "== mrpc: no results file yet" in out


def test_every_verdict_is_printed_with_n_and_its_interval(tmp_path, capsys):
    ta = _model("TA", "ta", {s: (0.78 + 0.01 * s, 0.97, 0.30, [0.70 + 0.01 * s, 0.80]) for s in (1, 2, 3)})
    naive = _model("naive exits", "naive", {s: (0.76, 0.95, 0.60, [0.65, 0.79]) for s in (1, 2, 3)})
    student = _student([0.978, 0.980, 0.982], [0.040, 0.045, 0.050])
    (tmp_path / "mrpc.json").write_text(json.dumps(_results("mrpc", [ta, naive, student])))
    # One seed: a difference but no interval, and no verdict.
    (tmp_path / "rte.json").write_text(json.dumps(_results("rte", [
        _model("TA", "ta", {7: (0.6, 0.9, 0.3, [0.55, 0.6])}), _model("naive exits", "naive", {7: (0.5, 0.8, 0.6, [0.5, 0.5])})])))
    rows = targets.claims(targets.load(str(tmp_path)))
    one = next(r for r in rows if r["task"] == "rte" and r["measure"] == "exit average")
    assert one["n"] == 1 and one["ci_low"] is None and one["verdict"] == "unresolved (n=1)"
    assert one["diff_mean"] == pytest.approx(0.075)
    # TA exit 1 above the naive one by 0.06, 0.07, 0.08: holds.
    exit1 = next(r for r in rows if r["task"] == "mrpc" and r["measure"] == "exit 1")
    assert exit1["verdict"] == "holds" and exit1["seeds"] == [1, 2, 3]
    assert targets.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    verdicts = [line for line in lines if line.rstrip().endswith((": holds", ": met", ": refuted", ": not met"))]
    assert verdicts                                             # some were printed, ...
    for line in verdicts:                                       # ... each with n and its interval
        assert " n=" in line and ("95% CI [" in line or "fixed by the width" in line), line
    assert any("n=1" in line and "no interval" in line and "unresolved (n=1)" in line for line in lines)
