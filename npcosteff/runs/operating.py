"""A run's operating point: the early-exit threshold of each multi-exit model, chosen on the
held-out tenth of the training set and then reported on dev, with its speed-up measured.

The sweep (:func:`~npcosteff.runs.summary.sweep_models`) shows every threshold on dev, which
describes the trade-off but cannot say which threshold to deploy: picking the best-looking
point of a dev curve and reporting its dev score is tuning on the test data. Here the choice
never sees dev:

1. one full pass over the held-out sentences keeps every exit's logits
   (:func:`~npcosteff.operating_point.exit_logits`), and each threshold of the recipe's sweep is
   replayed on them (:func:`~npcosteff.operating_point.simulate_exit`);
2. the threshold with the fewest FLOPs whose held-out score keeps ``early_exit.target`` of the
   teacher's held-out score is chosen (none does: the one with the best held-out score;
   :func:`~npcosteff.operating_point.choose_threshold`);
3. that threshold's dev score comes from the dev sweep, and its speed-up is timed again: the
   teacher's full forward pass and every model with early exit at its threshold over all of
   dev, in the same rounds (alternating their order), the median of each (the sweep times each
   threshold once, a rough timing).
"""

from __future__ import annotations

import math
import time

import numpy as np

__all__ = ["choose_operating_points", "time_passes"]

ROUNDS = 2          # timed passes over dev of the teacher and of each model at its operating point


def _batches(split, recipe):
    """A split's evaluation batches, longest first (as the sweep's)."""
    from ..data.batching import iterate_batches

    return list(iterate_batches(split, split.labels, recipe.training.eval_batch_size, sort_by_length=True))


def _rule(criterion, t) -> dict:
    """The early-exit keywords of threshold `t`: the number of agreeing exits for patience."""
    return dict(patience=int(t)) if criterion == "patience" else dict(threshold=float(t))


def time_passes(runs: dict, batches, criterion, rounds=ROUNDS) -> dict:
    """name -> seconds for one pass over `batches` of each `runs` entry (name -> (model,
    threshold)), with early exit at that threshold: the median of `rounds` rounds, each running
    every entry once, in turn forwards and backwards. The models should be warm (a run's sweep
    has just run each of them): no warm-up pass."""
    from ..early_exit import early_exit_predict

    def once(model, t):
        kw = {"threshold": 0.0, **_rule(criterion, t)}
        start = time.perf_counter()
        early_exit_predict(model, batches, criterion=criterion, **kw)
        return time.perf_counter() - start

    names = list(runs)
    seconds = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            seconds[name].append(once(*runs[name]))
    return {name: float(np.median(s)) for name, s in seconds.items()}


def choose_operating_points(models: dict, data, recipe, curves: dict) -> dict:
    """name -> the operating point of each model with several exits (module docstring):
    ``threshold``, ``heldout`` (its held-out score), ``heldout_teacher``, ``reached`` (whether it
    kept the target there), ``dev`` (its dev sweep row) and ``timing`` (the re-timed
    speed-up). Empty when the run has no held-out split (``data.selection = "last"``)."""
    from ..flops import model_flops
    from ..metrics import compute_metrics, main_metric, predictions_from_logits
    from ..operating_point import choose_threshold, exit_logits, simulate_exit
    from .folders import console

    if data.heldout is None or "teacher" not in models:
        return {}
    ee = recipe.early_exit
    key = main_metric(recipe.task)
    criterion = ee.criterion
    batches = _batches(data.heldout, recipe)
    labels = np.asarray(data.heldout.labels)
    teacher = models["teacher"]
    t_logits, _ = exit_logits(teacher, batches)
    regression = teacher.config.is_regression
    teacher_score = float(compute_metrics(recipe.task, predictions_from_logits(t_logits[-1], regression),
                                          labels)[key])
    points, by = {}, "patience" if criterion == "patience" else "threshold"
    for name, model in models.items():
        if len(model.config.exit_layers) < 2:
            continue
        logits, n_tokens = exit_logits(model, batches)
        runs = []
        for t in ee.thresholds:
            layers, chosen = simulate_exit(logits, [l + 1 for l in model.config.exit_layers], criterion,
                                           **_rule(criterion, t))
            cost = np.array([model_flops(model.config, int(n), int(l)) for n, l in zip(n_tokens, layers)])
            runs.append((t, layers, chosen, cost))
        threshold, score, reached = choose_threshold(recipe.task, runs, labels, ee.target * teacher_score)
        points[name] = {"threshold": threshold, "heldout": score, "heldout_teacher": teacher_score,
                        "heldout_examples": int(len(labels)), "reached": reached, "target": ee.target,
                        "dev": next(r for r in curves[name] if math.isclose(r[by], threshold))}
    if not points:
        return points
    # The teacher (one exit: every layer) and each model at its threshold, timed in the same rounds.
    full = 1 if criterion == "patience" else 0.0
    seconds = time_passes({"teacher": (teacher, full), **{n: (models[n], p["threshold"]) for n, p in points.items()}},
                          _batches(data.dev, recipe), criterion, ROUNDS)
    for name, p in points.items():
        p["timing"] = {"teacher_seconds": seconds["teacher"], "model_seconds": seconds[name],
                       "speedup": seconds["teacher"] / seconds[name], "rounds": ROUNDS}
        console.say(f"[operating point] {name}: threshold {p['threshold']:g} chosen on {len(labels)} held-out "
                    f"sentences ({100 * p['heldout']:.1f} against the teacher's {100 * teacher_score:.1f}"
                    f"{'' if p['reached'] else ', short of the target'}); dev {key} {100 * p['dev']['metric']:.1f}, "
                    f"measured speed-up {p['timing']['speedup']:.2f}x")
    return points
