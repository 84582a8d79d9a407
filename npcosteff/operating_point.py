"""Choosing an early-exit operating point without tuning it on the data it is reported on.

Early exit makes the same prediction for a sample as the full forward pass's exit at the
layer where the sample leaves (`npcosteff.early_exit`). So one full pass that keeps every
exit's logits is enough to replay any threshold offline (:func:`simulate_exit`), and a
threshold can be chosen on one half of dev and scored on the other (:func:`cross_fit`):

1. split dev in two halves A and B (a seeded permutation);
2. on A, take the threshold with the fewest FLOPs whose metric keeps ``target`` of the
   teacher's metric on A (and beats ``floor``, e.g. the majority class); when none does, the
   threshold with the best metric on A;
3. apply it to B; do the same with the roles swapped;
4. report the metric of the combined predictions on all of dev, each sample predicted with
   the threshold chosen on the other half, and the FLOPs averaged over all samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .early_exit import ExitRule
from .metrics import compute_metrics, main_metric, predictions_from_logits

__all__ = ["exit_logits", "simulate_exit", "choose_threshold", "cross_fit", "CrossFit"]


def exit_logits(model, batches):
    """One full pass that keeps every exit: (E, N, C) logits and (N,) real-token counts, in the
    split's order (batches from ``iterate_batches``, which carry each row's ``indices``)."""
    per_exit, order, n_tokens = [[] for _ in model.config.exit_layers], [], []
    for b in batches:
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        for k, z in enumerate(out.logits):
            per_exit[k].append(z)
        order.append(b["indices"])
        n_tokens.append(b["attention_mask"].sum(axis=1))
    order = np.concatenate(order)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    logits = np.stack([np.concatenate(z)[inverse] for z in per_exit])
    return logits, np.concatenate(n_tokens)[inverse]


def simulate_exit(logits, exit_layers, criterion="entropy", threshold=0.0, patience=None,
                  regression_tolerance=0.1):
    """Replay early exit on the logits of every exit.

    logits: (E, N, C) the logits of each of the E exits (shallowest first) for N samples;
    exit_layers: the E 1-based layers of those exits. The rules are those of
    ``early_exit.early_exit_forward``: entropy below ``threshold``, max probability above it,
    or ``patience`` consecutive agreeing exits; the last exit takes everyone left.
    Returns (layer each sample left at (N,), the logits it left with (N, C)).
    """
    logits = np.asarray(logits)
    E, N, _ = logits.shape
    if len(exit_layers) != E:
        raise ValueError(f"{E} exits' logits but {len(exit_layers)} exit layers")
    leave_at = np.full(N, E - 1)                                  # index of the exit each sample takes
    done = np.zeros(N, bool)
    rule = ExitRule(criterion, patience, logits.shape[2] == 1, regression_tolerance)
    for k in range(E - 1):                                        # the last exit takes everyone left
        leave = rule.leave(logits[k], threshold)                  # (N,); rows that left stay in the state
        leave_at[leave & ~done] = k
        done |= leave
    layers = np.asarray(exit_layers)[leave_at]
    return layers, logits[leave_at, np.arange(N)]


@dataclass
class CrossFit:
    """The cross-fitted operating point of one model (see the module docstring).

    metric: on all of dev, each half predicted with the other half's threshold;
    thresholds: the threshold chosen on half A (applied to B) and on half B (applied to A);
    reached: whether each choice met the target; exit_layers (N,): where each dev sample left.
    """
    metric: float
    thresholds: tuple
    reached: tuple
    exit_layers: np.ndarray


def _metric(task, logits, labels, regression):
    return float(compute_metrics(task, predictions_from_logits(logits, regression), labels)[main_metric(task)])


def choose_threshold(task, runs, labels, goal, floor=None):
    """The threshold with the fewest mean cost among those whose metric reaches `goal` (and
    beats `floor`); when none does, the one with the best metric. `runs`: (threshold, layers,
    logits, cost) per candidate, each replayed (:func:`simulate_exit`) on the samples `labels`
    belong to, cost (N,) per sample. Returns (threshold, its metric, whether it reached the goal)."""
    regression = np.asarray(runs[0][2]).shape[-1] == 1
    scored = [(t, _metric(task, chosen, labels, regression), float(np.mean(cost))) for t, _, chosen, cost in runs]
    good = [s for s in scored if s[1] >= goal and (floor is None or s[1] > floor)]
    best = min(good, key=lambda s: (s[2], -s[1])) if good else max(scored, key=lambda s: (s[1], -s[2]))
    return best[0], best[1], bool(good)


def cross_fit(task, logits, exit_layers, labels, thresholds, cost, teacher_metric_of, target=0.965, floor=None,
              criterion="entropy", seed=0) -> CrossFit:
    """Choose a threshold on each half of dev and score it on the other.

    logits (E, N, C), exit_layers (E,), labels (N,); thresholds: the candidates (patience
    values for ``criterion="patience"``); cost(layers (N,)) -> the (N,) per-sample cost to
    minimize (e.g. FLOPs) for all of dev; teacher_metric_of(index array) -> the teacher's metric
    on those samples; floor: a metric every choice must beat (None: no floor).
    """
    labels = np.asarray(labels)
    N = len(labels)
    regression = np.asarray(logits).shape[2] == 1
    order = np.random.default_rng(seed).permutation(N)
    halves = (np.sort(order[: N // 2]), np.sort(order[N // 2:]))
    runs = []
    for t in thresholds:
        kw = dict(patience=int(t)) if criterion == "patience" else dict(threshold=float(t))
        layers, chosen = simulate_exit(logits, exit_layers, criterion, **kw)
        runs.append((t, layers, chosen))
    final_layers = np.zeros(N, np.int64)
    final_logits = np.zeros(np.asarray(logits).shape[1:], np.asarray(logits).dtype)
    picked, reached = [], []
    for select, apply in (halves, halves[::-1]):
        goal = target * teacher_metric_of(select)
        t, _, ok = choose_threshold(task, [(t, layers[select], chosen[select], cost(layers)[select])
                                           for t, layers, chosen in runs], labels[select], goal, floor)
        _, layers, chosen = next(r for r in runs if r[0] == t)
        picked.append(t)
        reached.append(ok)
        final_layers[apply] = layers[apply]
        final_logits[apply] = chosen[apply]
    return CrossFit(_metric(task, final_logits, labels, regression), tuple(picked), tuple(reached), final_layers)
