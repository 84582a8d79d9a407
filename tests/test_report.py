"""experiments/report.py: the results file of a task, built from measured models."""

import importlib.util
from pathlib import Path

import numpy as np

from npcosteff.config import CostEffConfig
from npcosteff.flops import count_parameters, model_flops

spec = importlib.util.spec_from_file_location("report", Path(__file__).parents[1] / "experiments" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def _config(heads, exit_start):
    return CostEffConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=24, max_position_embeddings=64, heads_per_layer=[heads] * 2,
                         num_labels=2, exit_start=exit_start)


def _models(N=100, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, N)
    onehot = np.eye(2)[y] * 6.0
    teacher_cfg, student_cfg = _config(4, 2), _config(1, 1)
    shallow = np.where(rng.random((N, 1)) < 0.8, onehot, onehot[:, ::-1])   # right 80% of the time, confident
    n_tokens = rng.integers(5, 30, N)
    models = {
        "teacher": dict(role="teacher", config=teacher_cfg, parameters=count_parameters(teacher_cfg)["total"],
                        logits=onehot[None], exit_layers=[2], n_tokens=n_tokens, num_layers=2),
        "student": dict(role="student", config=student_cfg, parameters=count_parameters(student_cfg)["total"],
                        logits=np.stack([shallow, onehot]), exit_layers=[1, 2], n_tokens=n_tokens, num_layers=2),
    }
    return models, y, n_tokens


def test_results_file_has_the_schema_and_the_definitions():
    models, y, n_tokens = _models()
    res = report.build("sst2", models, y, target=0.7, floor=0.5, thresholds=[0.0, 0.01, 0.5], probe=[0.6, 0.7],
                       majority_metric=0.5)
    assert {"task", "metric", "teacher", "majority", "probe", "models"} <= set(res)
    assert res["teacher"] == 1.0 and res["metric"] == "accuracy"
    teacher, student = res["models"]
    assert teacher["role"] == "teacher" and teacher["params_ratio"] == 1.0
    assert teacher["operating_point"]["flops_ratio"] == 1.0 and teacher["operating_point"]["threshold"] is None
    assert student["exits"][1] == 1.0 and 0.7 < student["exits"][0] < 0.9
    op = student["operating_point"]
    # Every sample leaves at exit 1 under the reached threshold: FLOPs of one layer of the student.
    assert op["mean_exit_layer"] == 1.0 and op["metric"] == student["exits"][0]
    expected = np.mean([model_flops(models["student"]["config"], int(n), 1) for n in n_tokens]) / \
        np.mean([model_flops(models["teacher"]["config"], int(n)) for n in n_tokens])
    assert abs(op["flops_ratio"] - expected) < 1e-12
    padded = model_flops(models["student"]["config"], 128, 1) / model_flops(models["teacher"]["config"], 128)
    assert abs(op["flops_ratio_padded"] - padded) < 1e-12
    assert "| linear probe (frozen)" in report.markdown(res)
    # The curve replays every threshold on all of dev: at 0 nobody leaves early (the last exit's
    # metric and the student's full FLOPs), at 0.5 everyone leaves at exit 1 (as above).
    assert teacher["curve"] == []
    by_threshold = {c["threshold"]: c for c in student["curve"]}
    assert sorted(by_threshold) == [0.0, 0.01, 0.5]
    assert by_threshold[0.0]["metric"] == student["exits"][1]
    full = np.mean([model_flops(models["student"]["config"], int(n)) for n in n_tokens]) / \
        np.mean([model_flops(models["teacher"]["config"], int(n)) for n in n_tokens])
    assert abs(by_threshold[0.0]["flops_ratio"] - full) < 1e-12
    assert by_threshold[0.5]["metric"] == student["exits"][0]
    assert abs(by_threshold[0.5]["flops_ratio_padded"] - padded) < 1e-12


def test_markdown_says_when_the_rates_come_from_another_tasks_search():
    models, y, _ = _models()
    res = report.build("sst2", models, y, target=0.7, floor=0.5, thresholds=[0.0, 0.5], majority_metric=0.5)
    assert "not searched" not in report.markdown(res)
    res["rates_searched_on"] = "sst2"
    assert "not searched" not in report.markdown(res)
    res["rates_searched_on"] = "mrpc"
    assert "Learning rates not searched on sst2: taken from the search on mrpc" in report.markdown(res)


def test_plot_results_draws_a_results_file(tmp_path):
    spec_plot = importlib.util.spec_from_file_location(
        "plot_results", Path(__file__).parents[1] / "experiments" / "plot_results.py")
    plot_results = importlib.util.module_from_spec(spec_plot)
    spec_plot.loader.exec_module(plot_results)
    models, y, _ = _models()
    res = report.build("sst2", models, y, target=0.7, floor=0.5, thresholds=[0.0, 0.01, 0.5], majority_metric=0.5)
    out = tmp_path / "sst2_tradeoff.png"
    plot_results.plot(res, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_regression_task_with_the_patience_rule():
    # STS-B: one output per exit, early exit by patience (a regression exit has no class
    # probabilities), the metric the mean of Pearson and Spearman, and a constant "majority"
    # prediction (the training mean) that scores a correlation of 0.
    rng = np.random.default_rng(1)
    N = 200
    y = rng.uniform(0, 5, N)
    cfg_t = CostEffConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=24, max_position_embeddings=64, num_labels=1, exit_start=2)
    cfg_s = CostEffConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=24, max_position_embeddings=64, heads_per_layer=[1, 1],
                          num_labels=1, exit_start=1)
    exact = y[:, None]
    near = exact + 0.05 * rng.standard_normal((N, 1))            # within the 0.1 tolerance of exit 2
    n_tokens = rng.integers(5, 30, N)
    models = {
        "teacher": dict(role="teacher", config=cfg_t, parameters=count_parameters(cfg_t)["total"],
                        logits=exact[None], exit_layers=[2], n_tokens=n_tokens, num_layers=2),
        "student": dict(role="student", config=cfg_s, parameters=count_parameters(cfg_s)["total"],
                        logits=np.stack([near, exact]), exit_layers=[1, 2], n_tokens=n_tokens, num_layers=2),
    }
    maj, value = report.majority("stsb", y, y)
    assert maj == 0.0 and abs(value - y.mean()) < 1e-12
    res = report.build("stsb", models, y, target=0.965, floor=maj, thresholds=[1, 2], criterion="patience",
                       majority_metric=maj)
    assert res["metric"] == "combined" and res["teacher"] == 1.0
    teacher, student = res["models"]
    assert student["exits"][1] == 1.0 and 0.99 < student["exits"][0] < 1.0
    # Patience 1 asks exit 1 to agree with an earlier exit: there is none, so with two exits
    # nobody leaves early and the student costs its full depth at every threshold.
    assert [c["threshold"] for c in student["curve"]] == [1.0, 2.0]
    assert all(c["metric"] == 1.0 for c in student["curve"])
    op = student["operating_point"]
    assert op["criterion"] == "patience" and op["mean_exit_layer"] == 2.0 and op["metric"] == 1.0
    assert "| student | student |" in report.markdown(res)


def test_an_unfinished_run_gives_its_finished_stages(tmp_path):
    import json
    run = tmp_path / "run"
    assert report.unfinished_run_summary(str(run)) is None                 # not a run
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps({"task": "sst2"}))
    assert report.unfinished_run_summary(str(run)) is None                 # nothing finished yet
    for stage in ("teacher", "ta", "slenderize"):
        (run / stage).mkdir()
    (run / "teacher" / "DONE.json").write_text("{}")
    (run / "ta" / "DONE.json").write_text("{}")                             # the TA finished, the student not
    summary = report.unfinished_run_summary(str(run))
    assert summary["unfinished"] and summary["recipe"] == {"task": "sst2"}
    assert [m["name"] for m in summary["models"]] == ["teacher", "ta"]
    assert summary["models"][1]["folder"] == str(run / "ta")


def test_markdown_says_when_the_run_had_not_finished():
    models, y, _ = _models()
    del models["student"]
    results = report.build("sst2", models, y, target=0.7, floor=0.5, thresholds=[0.0, 0.5], majority_metric=0.5)
    results["unfinished_run"] = True
    assert "had not finished" in report.markdown(results)


def test_add_students_joins_a_file_only_with_the_same_teacher():
    import copy

    import pytest

    models, y, _ = _models()
    existing = report.build("sst2", models, y, target=0.7, floor=0.5, thresholds=[0.0, 0.5], majority_metric=0.5)
    # A second report: the same teacher, a new student (named apart) that keeps exit 2 only.
    narrow = copy.deepcopy(models)
    narrow["student"]["logits"] = narrow["student"]["logits"][1:]
    narrow["student"]["exit_layers"] = [2]
    narrow["narrow"] = narrow.pop("student")
    new = report.build("sst2", narrow, y, target=0.7, floor=0.5, thresholds=[0.0, 0.5], majority_metric=0.5)
    merged = report.add_students(existing, new, {"timing": {"date": "2026-12-06"}})
    assert [m["name"] for m in merged["models"]] == ["teacher", "student", "narrow"]
    assert merged["models"][:2] == existing["models"]                      # the file's rows untouched
    assert merged["added"] == [{"timing": {"date": "2026-12-06"}, "models": ["narrow"], "teacher": 1.0}]
    assert existing.get("added") is None                                   # the input is not modified
    assert "Added later (`report.py --add-to`, 2026-12-06): narrow" in report.markdown(merged)
    # Another teacher (one dev answer changed: 1/100 of accuracy) is refused, naming both scores.
    other = copy.deepcopy(new)
    other["teacher"] = 0.99
    with pytest.raises(ValueError, match="scores 0.990000 on dev, the file's 1.000000: not the same teacher"):
        report.add_students(existing, other, {})
    other = dict(new, dev_examples=99)
    with pytest.raises(ValueError, match="another dev_examples: 100 in the file, 99"):
        report.add_students(existing, other, {})
    with pytest.raises(ValueError, match="no student or naive-exits baseline to add"):
        report.add_students(existing, dict(new, models=new["models"][:1]), {})


def test_add_students_puts_an_added_naive_baseline_after_the_naive_rows():
    import copy

    models, y, _ = _models()
    with_naive = copy.deepcopy(models)
    with_naive["naive exits"] = dict(copy.deepcopy(models["student"]), role="naive")
    existing = report.build("sst2", with_naive, y, target=0.7, floor=0.5, thresholds=[0.0, 0.5], majority_metric=0.5)
    assert [m["name"] for m in existing["models"]] == ["teacher", "student", "naive exits"]
    again = copy.deepcopy(models)
    again["naive exits, exits x100"] = dict(again.pop("student"), role="naive")
    new = report.build("sst2", again, y, target=0.7, floor=0.5, thresholds=[0.0, 0.5], majority_metric=0.5)
    merged = report.add_students(existing, new, {"timing": {"date": "2026-12-06"}})
    assert [(m["name"], m["role"]) for m in merged["models"]] == [
        ("teacher", "teacher"), ("student", "student"), ("naive exits", "naive"),
        ("naive exits, exits x100", "naive")]
    assert merged["added"][0]["models"] == ["naive exits, exits x100"]
    # The same report again, now with the file's student in it too (its run holds the teacher):
    # the student measures the same, so the file's row (and its timing) stays.
    again["student"] = copy.deepcopy(models["student"])
    new = report.build("sst2", again, y, target=0.7, floor=0.5, thresholds=[0.0, 0.5], majority_metric=0.5)
    new["models"][-1]["operating_point"]["speedup_measured"] = 99.0   # retimed in the new report
    merged = report.add_students(existing, new, {"timing": {"date": "2026-12-06"}})
    assert merged["models"][1] is existing["models"][1]
    assert merged["added"][0]["models"] == ["naive exits, exits x100"]
