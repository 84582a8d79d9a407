"""experiments/report.py: the early-exit operating point of the README's reproduction tables."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("report", Path(__file__).parents[1] / "experiments" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def rows(*pairs):
    return [{"threshold": t, "metric": m, "flops_per_sample": f} for t, m, f in pairs]


def test_operating_point_takes_the_fewest_flops_that_keep_the_target():
    sweep = rows((0.0, 0.90, 100.0), (0.2, 0.88, 60.0), (0.4, 0.87, 40.0), (0.6, 0.80, 20.0))
    row, reached = report.operating_point(sweep, teacher_metric=0.90, target=0.965)   # needs >= 0.8685
    assert reached and row["threshold"] == 0.4


def test_operating_point_without_a_threshold_at_the_target_takes_the_best_metric():
    sweep = rows((0.0, 0.70, 100.0), (0.3, 0.72, 50.0), (0.6, 0.72, 30.0))
    row, reached = report.operating_point(sweep, teacher_metric=0.90, target=0.965)
    assert not reached and row["threshold"] == 0.6          # the best metric, then the fewest FLOPs


def test_operating_point_stays_above_the_majority_class():
    sweep = rows((0.0, 0.77, 100.0), (0.4, 0.76, 50.0), (0.7, 0.748, 10.0))    # 0.7: everyone leaves at exit 1
    row, reached = report.operating_point(sweep, teacher_metric=0.768, target=0.965, floor=0.748)
    assert reached and row["threshold"] == 0.4
