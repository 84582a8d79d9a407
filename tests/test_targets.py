"""experiments/targets.py: the reproduction's targets read from results files."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("targets", Path(__file__).parents[1] / "experiments" / "targets.py")
targets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(targets)


def _model(role, exits, params_ratio=1.0, metric=0.8, metric_ratio=1.0, flops_padded=1.0):
    return {"name": role, "role": role, "params_ratio": params_ratio, "exits": exits,
            "exit_average": sum(exits) / len(exits),
            "operating_point": {"metric": metric, "metric_ratio": metric_ratio, "flops_ratio_padded": flops_padded}}


def _write(folder, task, teacher, probe, models, majority=0.5):
    (folder / f"{task}.json").write_text(json.dumps(
        {"task": task, "teacher": teacher, "majority": majority, "probe": probe, "models": models}))


def test_each_target_is_read_as_met_not_met_or_missing(tmp_path):
    _write(tmp_path, "mrpc", 0.84, [0.7, 0.7], [
        _model("teacher", [0.84]),
        _model("ta", [0.75, 0.80]), _model("naive", [0.70, 0.80]),
        # 1/9 params and 1/20 padded FLOPs, 97% of the teacher, 31 points above the majority: met
        _model("student", [0.75, 0.81], params_ratio=1 / 9, metric=0.815, metric_ratio=0.97, flops_padded=1 / 20)])
    _write(tmp_path, "cola", 0.30, [0.10, 0.20], [
        _model("teacher", [0.30]),
        _model("ta", [0.15, 0.185]),                            # exit 2: 0.185 < 0.20 - 0.01
        _model("naive", [0.16, 0.30]),
        _model("student", [0.1, 0.29], params_ratio=1 / 9, metric=0.29, metric_ratio=0.967, flops_padded=1 / 12)],
        majority=0.0)
    rows = {(name, text.split(":")[0]): met for name, met, text in targets.report(targets.load(str(tmp_path)))}
    assert rows[("1 teacher", "MRPC teacher 0.840 (target >= 0.834)")] is True
    assert rows[("2 probe", "cola")] is False
    assert rows[("2 probe", "sst2")] is None
    assert rows[("4 student", "mrpc")] is True
    assert rows[("4 student", "cola")] is False                 # 1/12 of the FLOPs, not 1/19
    assert rows[("4 student", "rte")] is None
    naive = [met for name, met, _ in targets.report(targets.load(str(tmp_path))) if name == "3 TA vs naive"]
    assert naive == [None]                                      # one won, one lost, three missing


def test_teacher_target_fails_below_the_pytorch_number(tmp_path):
    _write(tmp_path, "mrpc", 0.833, [0.7], [_model("teacher", [0.833])])
    met, text = targets.teacher_target(targets.load(str(tmp_path)))
    assert met is False and "0.833" in text


def test_ta_is_compared_with_the_strongest_naive_baseline(tmp_path):
    # Two naive rows (exits at the stage's rate and at 100 times it): the TA beats the weaker
    # (0.60) but not the stronger (0.80), so the task counts as lost whatever the rows' order.
    for task in ("mrpc", "rte"):
        weak, strong = _model("naive", [0.55, 0.65]), _model("naive", [0.75, 0.85])
        _write(tmp_path, task, 0.8, [0.5, 0.5], [_model("teacher", [0.8]), _model("ta", [0.70, 0.80]),
                                                 *((weak, strong) if task == "mrpc" else (strong, weak))])
    met, text = targets.naive_target(targets.load(str(tmp_path)))
    assert met is False                                         # two lost: four of five out of reach
    assert "mrpc 0.750 <= 0.800" in text and "rte 0.750 <= 0.800" in text
