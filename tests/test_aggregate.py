"""experiments/aggregate.py, evidence_stats.py and plot_evidence.py on synthetic seed files.

The per-seed files are built here with known numbers (three seeds of MRPC-like results, the
schema of experiments/report.py); every expected value is computed apart from the code under
test (numpy on the tables below, or by hand)."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

EXPERIMENTS = Path(__file__).parents[1] / "experiments"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


aggregate = _load("aggregate")
evidence_stats = _load("evidence_stats")
targets = _load("targets")
plot_evidence = _load("plot_evidence")

SEEDS = (1, 2, 3)
TEACHER = 0.84
TEACHER_PARAMS = 22713986
# Dev metrics of exits 1..4 per seed.
EXITS = {
    "TA": {1: [0.70, 0.75, 0.80, 0.82], 2: [0.72, 0.74, 0.79, 0.83], 3: [0.71, 0.77, 0.81, 0.81]},
    # exits 1-3 below the TA's in every seed, exit 4 above it in seed 2 only
    "naive exits": {1: [0.65, 0.71, 0.77, 0.81], 2: [0.66, 0.70, 0.76, 0.85], 3: [0.67, 0.72, 0.78, 0.805]},
    "student: 2 / 128 / 32": {1: [0.68, 0.70, 0.74, 0.76], 2: [0.69, 0.71, 0.73, 0.77], 3: [0.67, 0.72, 0.75, 0.78]},
    "student: last-exit importance": {1: [0.60, 0.65, 0.73, 0.78], 2: [0.62, 0.66, 0.72, 0.79],
                                      3: [0.61, 0.64, 0.74, 0.775]},
}
# Operating point per seed: (metric, padded FLOPs ratio, measured speed-up).
OPS = {
    "teacher": {s: (TEACHER, 1.0, 1.0) for s in SEEDS},
    "TA": {1: (0.80, 0.35, 2.4), 2: (0.81, 0.33, 2.6), 3: (0.79, 0.36, 2.5)},
    "naive exits": {1: (0.78, 0.70, 1.2), 2: (0.82, 0.72, 1.1), 3: (0.80, 0.69, 1.3)},
    "student: 2 / 128 / 32": {1: (0.75, 0.070, 7.3), 2: (0.76, 0.080, 7.0), 3: (0.74, 0.075, 7.1)},
    "student: last-exit importance": {1: (0.77, 0.09, 7.0), 2: (0.79, 0.10, 6.8), 3: (0.765, 0.095, 6.9)},
    "student: no exits": {1: (0.78, 0.115, 6.0), 2: (0.785, 0.115, 6.1), 3: (0.775, 0.115, 5.9)},
}
PARAMS = {"teacher": TEACHER_PARAMS, "TA": 22569996, "naive exits": 23459000, "student: 2 / 128 / 32": 2390000,
          "student: last-exit importance": 2390000, "student: no exits": 2380000}
ROLES = {"teacher": "teacher", "TA": "ta", "naive exits": "naive", "student: 2 / 128 / 32": "student",
         "student: last-exit importance": "student", "student: no exits": "student"}


def _curve(name, seed):
    """A threshold sweep: the TA above the naive exits wherever both have points (shuffled, with a
    repeated FLOPs value as thresholds that move no sample give)."""
    if name == "TA":
        pts = [(1.0, 0.82), (0.3, 0.69 + 0.01 * seed), (0.5, 0.78), (1.0, 0.82)]
    elif name == "naive exits":
        pts = [(0.4, 0.66), (1.0, 0.80), (0.7, 0.74)]
    elif name.startswith("student: 2") or name.startswith("student: last"):
        pts = [(0.05, 0.70), (0.1, 0.74), (0.2, 0.76)]
    else:
        return []
    return [{"threshold": 0.1 * i, "metric": m, "flops_ratio": f * 0.95, "flops_ratio_padded": f}
            for i, (f, m) in enumerate(pts)]


def _model(name, seed):
    metric, flops, speedup = OPS[name][seed]
    exits = EXITS[name][seed] if name in EXITS else [None, None, None, metric]
    multi = name in EXITS
    return {"name": name, "role": ROLES[name], "parameters": PARAMS[name],
            "params_ratio": PARAMS[name] / TEACHER_PARAMS, "exits": exits,
            "exit_average": float(np.mean([e for e in exits if e is not None])),
            "operating_point": {"threshold": [0.3 + 0.01 * seed, 0.4] if multi else None,
                                "criterion": "entropy" if multi else None, "metric": metric,
                                "metric_ratio": metric / TEACHER, "flops_ratio": flops * 0.95,
                                "flops_ratio_padded": flops, "mean_exit_layer": 4.0 * flops, "speedup_measured": speedup},
            "curve": _curve(name, seed),
            "selection": {"checkpoint": "best exit-average metric on the held-out tenth",
                          "threshold": "2-fold cross-fitted on dev" if multi else None}}


def make_seed(seed, **top):
    """A per-seed results dict as experiments/report.py writes it (top-level keys overridable)."""
    out = {"task": "mrpc", "metric": "combined", "teacher": TEACHER, "majority": 0.748, "probe": [0.74, 0.76, 0.77, 0.75],
           "target": 0.965, "pad_to": 128, "dev_examples": 408, "operating_point_rule": "2-fold cross-fitted on dev",
           "models": [_model(name, seed) for name in OPS],
           "recipe": {"task": "mrpc", "seed": seed, "ta_epochs": 2, "selection": "heldout"},
           "rates_searched_on": "mrpc", "seed": seed, "commit": "bbb222" if seed == 3 else "aaa111",
           "timing": {"repeats": 3, "date": "2026-12-08"}}
    out.update(top)
    return out


def write_seeds(results_dir, seeds=SEEDS, task="mrpc", **top):
    folder = Path(results_dir) / "evidence" / task
    folder.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        (folder / f"seed-{s}.json").write_text(json.dumps(make_seed(s, task=task, **top)))


def aggregated(tmp_path):
    """Write the three seeds, aggregate them with the command line, and read the result back."""
    write_seeds(tmp_path)
    assert aggregate.main(["mrpc", "--results-dir", str(tmp_path)]) == 0
    return json.loads((tmp_path / "mrpc.json").read_text())


# --------------------------------------------------------------------------- aggregate.py
def test_means_and_sds_over_seeds_match_numpy(tmp_path):
    res = aggregated(tmp_path)
    assert res["seeds"] == [1, 2, 3] and res["commits"] == ["aaa111", "bbb222"]
    assert res["protocol"] == "results/evidence/protocol.json"
    assert res["recipe"] == {"task": "mrpc", "ta_epochs": 2, "selection": "heldout"}      # seed removed
    assert "seed" not in res and "timing" not in res
    assert [m["name"] for m in res["models"]] == list(OPS)                                  # per-seed order
    ta = next(m for m in res["models"] if m["name"] == "TA")
    table = np.array([EXITS["TA"][s] for s in SEEDS])
    np.testing.assert_allclose(ta["exits"], table.mean(axis=0))
    np.testing.assert_allclose(ta["exits_sd"], table.std(axis=0, ddof=1))
    np.testing.assert_allclose(ta["exit_average"], table.mean(axis=1).mean())
    np.testing.assert_allclose(ta["exit_average_sd"], table.mean(axis=1).std(ddof=1))
    metric = np.array([OPS["TA"][s][0] for s in SEEDS])
    speedup = np.array([OPS["TA"][s][2] for s in SEEDS])
    assert ta["operating_point"]["threshold"] is None and ta["operating_point"]["criterion"] == "entropy"
    np.testing.assert_allclose(ta["operating_point"]["metric"], metric.mean())
    np.testing.assert_allclose(ta["operating_point_sd"]["metric"], metric.std(ddof=1))
    np.testing.assert_allclose(ta["operating_point"]["metric_ratio"], metric.mean() / TEACHER)
    np.testing.assert_allclose(ta["operating_point_sd"]["speedup_measured"], speedup.std(ddof=1))
    # Every seed's own numbers are kept as they were.
    assert [s["seed"] for s in ta["seeds"]] == [1, 2, 3]
    assert ta["seeds"][1]["operating_point"] == _model("TA", 2)["operating_point"]
    assert ta["seeds"][2]["curve"] == _curve("TA", 3) and ta["seeds"][0]["exits"] == EXITS["TA"][1]
    assert ta["selection"]["threshold"] == "2-fold cross-fitted on dev"
    # The shared teacher: nulls where it has no exit, no spread.
    teacher = res["models"][0]
    assert teacher["exits"][:3] == [None, None, None] and teacher["exits"][3] == pytest.approx(TEACHER)
    assert teacher["exits_sd"][:3] == [None, None, None] and teacher["exits_sd"][3] == pytest.approx(0, abs=1e-12)
    assert teacher["operating_point"]["criterion"] is None
    md = (tmp_path / "mrpc.md").read_text()
    row = next(l for l in md.splitlines() if l.startswith("| TA |"))
    # exit 1: mean 71.0, sd 1.0 (x100); the padded FLOPs 1/(mean 0.3467) = 1/2.9
    assert "| 3 | 71.0 ± 1.0 |" in row and "1/2.9" in row
    assert "| majority class | - | - | - | - | - | - | - | 74.8 |" in md


def test_one_seed_has_no_sd(tmp_path):
    res = aggregate.aggregate([make_seed(2)])
    ta = res["models"][1]
    assert res["seeds"] == [2] and ta["exits_sd"] is None and ta["exit_average_sd"] is None
    assert ta["operating_point_sd"] is None and ta["exits"] == pytest.approx(EXITS["TA"][2])
    assert "| 1 | 72.0 | 74.0 |" in aggregate.markdown(res)


def test_seeds_of_another_teacher_or_dev_set_are_refused(tmp_path):
    # The teacher within float32 rounding (3.9e-7, two CPUs) is the same teacher ...
    same = aggregate.aggregate([make_seed(1), make_seed(2, teacher=TEACHER + 4e-7)])
    assert same["teacher"] == TEACHER
    # ... 1e-4 apart it is not.
    with pytest.raises(ValueError, match="teacher"):
        aggregate.aggregate([make_seed(1), make_seed(2, teacher=TEACHER + 1e-4), make_seed(3)])
    with pytest.raises(ValueError, match="dev_examples"):
        aggregate.aggregate([make_seed(1), make_seed(2, dev_examples=407)])
    with pytest.raises(ValueError, match="twice"):
        aggregate.aggregate([make_seed(1), make_seed(1)])
    # The command line stops with the reason and writes nothing.
    write_seeds(tmp_path, seeds=(1,))
    write_seeds(tmp_path, seeds=(2,), teacher=0.80)
    with pytest.raises(SystemExit):
        aggregate.main(["mrpc", "--results-dir", str(tmp_path)])
    assert not (tmp_path / "mrpc.json").exists()


def test_tasks_without_seed_files_are_skipped(tmp_path):
    write_seeds(tmp_path)
    assert aggregate.main(["--results-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["mrpc.json"]


def test_a_task_short_of_the_protocols_seeds_is_skipped_unless_partial(tmp_path, capsys):
    (tmp_path / "evidence").mkdir(parents=True, exist_ok=True)
    (tmp_path / "evidence" / "protocol.json").write_text(json.dumps({"seeds": [1, 2, 3]}))
    write_seeds(tmp_path, seeds=(1,))
    assert aggregate.main(["mrpc", "--results-dir", str(tmp_path)]) == 0
    assert not (tmp_path / "mrpc.json").exists()
    assert "missing 2, 3" in capsys.readouterr().out
    assert aggregate.main(["mrpc", "--partial", "--results-dir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "mrpc.json").read_text())["seeds"] == [1]
    write_seeds(tmp_path, seeds=(2, 3))
    assert aggregate.main(["mrpc", "--results-dir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "mrpc.json").read_text())["seeds"] == [1, 2, 3]


# --------------------------------------------------------------------------- evidence_stats.py
def test_paired_interval_is_the_t_interval_of_the_differences():
    a, b = {1: 0.80, 2: 0.82, 3: 0.79}, {3: 0.80, 1: 0.78, 2: 0.79}
    d = [0.02, 0.03, -0.01]                                  # a - b, seed by seed
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t = scipy_stats.t.ppf(0.975, 2)
    assert t == pytest.approx(4.302652729911275)            # the table's t(0.975, 2)
    p = evidence_stats.paired(a, b)
    assert p["n"] == 3 and p["diff_mean"] == pytest.approx(mean) and p["diff_sd"] == pytest.approx(sd)
    assert p["ci_low"] == pytest.approx(mean - t * sd / math.sqrt(3))
    assert p["ci_high"] == pytest.approx(mean + t * sd / math.sqrt(3))
    assert p["mean_a"] == pytest.approx((0.80 + 0.82 + 0.79) / 3) and p["mean_b"] == pytest.approx(0.79)
    assert p["verdict"] == "unresolved"                      # the interval holds 0
    # Differences 0.05, 0.04, 0.05: 0.0467 +- 4.30 x 0.0058 / sqrt(3) = [0.032, 0.061], above 0.
    assert evidence_stats.paired({1: 0.9, 2: 0.8, 3: 0.85}, {1: 0.85, 2: 0.76, 3: 0.80})["verdict"] == "holds"
    assert evidence_stats.paired({1: 0.8, 2: 0.7, 3: 0.75}, {1: 0.85, 2: 0.76, 3: 0.80})["verdict"] == "refuted"
    # Two seeds, differences 0.05 and 0.04: t(0.975, 1) = 12.7 makes the interval [-0.019, 0.109].
    assert evidence_stats.paired({1: 0.9, 2: 0.8}, {1: 0.85, 2: 0.76})["verdict"] == "unresolved"
    one = evidence_stats.paired({4: 0.9}, {4: 0.8})
    assert one["ci_low"] is None and one["diff_sd"] is None and one["verdict"] == "unresolved (n=1)"
    with pytest.raises(ValueError, match="same seeds"):
        evidence_stats.paired({1: 0.8, 2: 0.8}, {1: 0.7, 3: 0.7})


def _pts(*pairs):
    return [{"flops_ratio_padded": f, "metric": m} for f, m in pairs]


def test_matched_flops_score_is_the_trapezoid_mean_over_the_shared_flops():
    a = _pts((1.0, 0.84), (0.2, 0.70), (0.5, 0.80))            # unsorted
    b = _pts((0.4, 0.72), (0.8, 0.80), (0.4, 0.76), (1.2, 0.85))  # two points at 0.4: 0.74
    # Shared interval [0.4, 1.0], width 0.6.
    # a: 0.7667 at 0.4 (on 0.2-0.5), then 0.80 at 0.5, 0.84 at 1.0:
    #    (0.1 (0.76667 + 0.80) / 2 + 0.5 (0.80 + 0.84) / 2) / 0.6 = (0.078333 + 0.41) / 0.6
    # b: 0.74 at 0.4, 0.80 at 0.8, 0.825 at 1.0 (on 0.8-1.2):
    #    (0.4 (0.74 + 0.80) / 2 + 0.2 (0.80 + 0.825) / 2) / 0.6 = (0.308 + 0.1625) / 0.6
    score_a, score_b = evidence_stats.matched_flops_score(a, b)
    assert score_a == pytest.approx((0.1 * (0.70 + 0.2 / 0.3 * 0.10 + 0.80) / 2 + 0.41) / 0.6)
    assert score_a == pytest.approx(0.813889, abs=1e-6)
    assert score_b == pytest.approx(0.4705 / 0.6)
    # Curves meeting at one FLOPs value: the metric there; apart: an error.
    assert evidence_stats.matched_flops_score(_pts((0.1, 0.5), (0.4, 0.8)), _pts((0.4, 0.6), (0.9, 0.7))) \
        == pytest.approx((0.8, 0.6))
    with pytest.raises(ValueError, match="share no"):
        evidence_stats.matched_flops_score(_pts((0.1, 0.5), (0.3, 0.8)), _pts((0.4, 0.6), (0.9, 0.7)))


# --------------------------------------------------------------------------- targets.claims
def test_claims_hold_are_refuted_or_unresolved_as_constructed(tmp_path):
    rows = targets.claims({"mrpc": aggregated(tmp_path)})
    by = {(r["claim"], r["measure"]): r for r in rows}
    # TA over naive: exits 1-3 and the average below the TA's in every seed; exit 4 and the
    # operating point go both ways; the TA's curve lies above the naive one.
    assert by[("ta_over_naive", "exit 1")]["verdict"] == "holds"
    assert by[("ta_over_naive", "exit 4")]["verdict"] == "unresolved"
    avg = by[("ta_over_naive", "exit average")]
    d = [0.0325, 0.0275, 0.03125]                          # TA minus naive exit averages, seeds 1-3
    assert avg["diff_mean"] == pytest.approx(np.mean(d)) and avg["verdict"] == "holds"
    assert avg["ci_low"] == pytest.approx(np.mean(d) - scipy_stats.t.ppf(0.975, 2) * np.std(d, ddof=1) / math.sqrt(3))
    assert by[("ta_over_naive", "matched-FLOPs score")]["verdict"] == "holds"
    assert by[("ta_over_naive", "operating-point metric")]["verdict"] == "unresolved"
    # All exits against last-exit importance: a better exit average, a worse operating point.
    assert by[("all_exits_over_last_exit", "exit average")]["verdict"] == "holds"
    assert by[("all_exits_over_last_exit", "operating-point metric")]["verdict"] == "refuted"
    # Early exit against no exits: fewer FLOPs (lower is better: a negative difference holds),
    # a lower metric ratio.
    flops = [r for r in rows if r["claim"] == "slender_early_exit" and r["b"] == "student: no exits"
             and r["measure"] == "operating-point padded FLOPs ratio"][0]
    d = [0.070 - 0.115, 0.080 - 0.115, 0.075 - 0.115]
    assert flops["better"] == "lower" and flops["diff_mean"] == pytest.approx(-0.04)
    assert flops["ci_high"] == pytest.approx(-0.04 + scipy_stats.t.ppf(0.975, 2) * np.std(d, ddof=1) / math.sqrt(3))
    assert flops["verdict"] == "holds"
    ratio = [r for r in rows if r["claim"] == "slender_early_exit" and r["b"] == "student: no exits"
             and r["measure"] == "operating-point metric ratio"][0]
    assert ratio["verdict"] == "refuted"
    # Headline: 0.881-0.905 of the teacher and 1/14.3-1/12.5 of its FLOPs: neither met; 1/9.5 params: met.
    head = {r["measure"]: r for r in rows if r["claim"] == "headline"}
    assert head["metric_ratio"]["mean"] == pytest.approx(0.75 / TEACHER)
    assert head["metric_ratio"]["verdict"] == "not met" and head["flops_ratio_padded"]["verdict"] == "not met"
    assert head["params_ratio"]["verdict"] == "met" and head["params_ratio"]["n"] == 3


# --------------------------------------------------------------------------- plot_evidence.py
PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_are_written_as_png(tmp_path):
    aggregated(tmp_path)
    (tmp_path / "cola.json").write_text(json.dumps({"task": "cola", "models": []}))   # an old single run
    assert plot_evidence.main(["--results-dir", str(tmp_path)]) == 0
    for name in ("forest.png", "mrpc_curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert not (tmp_path / "cola_curves.png").exists()


def test_mean_curve_interpolates_every_seed_on_the_shared_grid():
    grid, mean, sd = plot_evidence.mean_curve([_pts((0.1, 0.5), (1.0, 0.8)), _pts((0.2, 0.6), (0.8, 0.9))], points=5)
    assert grid[0] == pytest.approx(0.2) and grid[-1] == pytest.approx(0.8)
    # At 0.2 the first curve is 0.5 + 0.3 / 9 = 0.5333, the second 0.6.
    assert mean[0] == pytest.approx((0.5 + 0.3 / 9 + 0.6) / 2)
    assert sd[0] == pytest.approx(abs(0.6 - (0.5 + 0.3 / 9)) / math.sqrt(2))



def test_the_majority_line_stays_off_the_axis_only_when_far_below_the_scores():
    """MRPC's majority class (74.8) is drawn under exits scoring 75-84; a regression's 0 under
    scores of 80-86 (STS-B) goes to the legend instead of flattening the curves."""
    plt = plot_evidence._pyplot()
    fig, ax = plt.subplots()
    ax.plot([0.1, 1.0], [75.0, 84.0])
    assert plot_evidence.majority_on_axis(0.748, ax)
    assert plot_evidence.majority_on_axis(0.61, ax)               # 14 points below: still drawn
    assert not plot_evidence.majority_on_axis(0.0, ax)
    plt.close(fig)
    fig, ax = plt.subplots()                                      # nothing drawn yet: drawn
    assert plot_evidence.majority_on_axis(0.0, ax)
    plt.close(fig)
