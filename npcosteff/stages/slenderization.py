"""Stage 3, slenderization: iterative pruning in width with distillation from the TA (docs/method.md, 5).

The student starts as a copy of the multi-exit teacher-assistant (TA), which also teaches it.
With ``max_prunes = H - H_target``, prune t = 1..max_prunes does:

1. Taylor importance (npcosteff.importance) on a fresh sample of the training set, from the
   losses of all exits (or of the last exit alone: the ablation);
2. keep the top ``H - t`` heads of every layer and the top ``F_t`` FFN neurons, where
   ``F_t = F - (F - F_target) * t / max_prunes`` (rounded), and physically slice them
   (npcosteff.surgery.slice_model);
3. factorize the word embedding to rank ``r_t = d - (d - r_target) * t / max_prunes``
   (truncated SVD of E, or of E @ P when it is already factorized);
4. train for one pruning period (``period`` epochs of the `slenderize` section) with a fresh AdamW and a fresh
   linear warmup/decay schedule peaking at ``lr * (1 + lr_restore)^t``: the first
   ``repr_proportion`` of the steps with the ``hidden`` stage, the rest with ``pred``;
5. record widths, parameters, FLOPs and the held-out metrics of every exit.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import weights as W
from ..flops import count_parameters, model_flops
from ..importance import importance_batches, taylor_importance
from ..model import CostEffModel
from ..prune import factorize_embedding, keep_from_importance
from ..surgery import slice_model
from ..data.task import TaskData
from ..recipe import Slenderize, Training
from ..train import Trainer, evaluate, training_arguments

__all__ = ["PruneStep", "prune_schedule", "period_warmup_steps", "slenderize", "HISTORY_FILE"]

HISTORY_FILE = "slenderize_history.json"     # written next to the student's weights


# --------------------------------------------------------------------------- the schedule
@dataclass(frozen=True)
class PruneStep:
    """The widths after prune t (1-based).

    ``embedding_rank`` is None while the word embedding stays unfactorized (r_t = d).
    """
    t: int
    heads_per_layer: tuple
    intermediate_per_layer: tuple
    embedding_rank: Optional[int]


def _round_half_up(numerator: int, denominator: int) -> int:
    """``round(numerator / denominator)`` with halves rounded up, in exact integer arithmetic
    (Python's ``round`` sends halves to the even neighbour)."""
    return (2 * numerator + denominator) // (2 * denominator)


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return int(value)


def prune_schedule(config, heads: int, ffn: Optional[int] = None,
                   embedding_rank: Optional[int] = None) -> list:
    """The widths of every prune t = 1..max_prunes (docs/method.md, 5), for a model with `config`.

    With H_i, F_i the current widths of layer i and r0 the current embedding rank (d when
    unfactorized), ``max_prunes = max_i H_i - heads`` and at prune t:

    * heads of layer i: ``max(heads, H_i - t)`` (one head per layer per prune);
    * FFN of layer i: ``F_i - round((F_i - ffn) * t / max_prunes)`` (None: F_i throughout);
    * embedding rank: ``r0 - round((r0 - embedding_rank) * t / max_prunes)`` (None: unchanged).

    Halves round up. At t = max_prunes every width equals its target.
    """
    H0, F0 = list(config.heads_per_layer), list(config.intermediate_per_layer)
    heads = _positive_int(heads, "heads target")
    if heads > min(H0):
        raise ValueError(f"heads target {heads} is more than the {min(H0)} heads of the narrowest layer")
    max_prunes = max(H0) - heads
    if max_prunes == 0:
        raise ValueError(f"heads target {heads} equals the current number of heads: the schedule "
                         f"(max_prunes = H - H_target) has no pruning step")
    if ffn is not None:
        ffn = _positive_int(ffn, "ffn target")
        if ffn > min(F0):
            raise ValueError(f"ffn target {ffn} is more than the {min(F0)} neurons of the narrowest layer")
    d = config.hidden_size
    r0 = d if config.embedding_rank is None else config.embedding_rank
    if embedding_rank is not None:
        embedding_rank = _positive_int(embedding_rank, "embedding_rank target")
        limit = min(r0, config.vocab_size)
        if embedding_rank > limit:
            raise ValueError(f"embedding_rank target {embedding_rank} is outside 1..{limit} "
                             f"(current rank {r0}, vocab_size {config.vocab_size})")
    steps = []
    for t in range(1, max_prunes + 1):
        heads_t = tuple(max(heads, h - t) for h in H0)
        ffn_t = tuple(F0) if ffn is None else tuple(f - _round_half_up((f - ffn) * t, max_prunes) for f in F0)
        if embedding_rank is None:
            rank_t = config.embedding_rank
        else:
            rank_t = r0 - _round_half_up((r0 - embedding_rank) * t, max_prunes)
            if config.embedding_rank is None and rank_t == d:
                rank_t = None                      # full rank: the plain lookup is cheaper than E @ P
        steps.append(PruneStep(t, heads_t, ffn_t, rank_t))
    return steps


def period_warmup_steps(settings: Slenderize, training: Training, period_steps: int) -> int:
    """Warmup steps of one period: ``max(min_warmup_steps, ceil(warmup_proportion * steps))``,
    at most the period."""
    return min(period_steps, max(settings.min_warmup_steps, math.ceil(training.warmup_proportion * period_steps)))


# --------------------------------------------------------------------------- slenderize
def _widths(config) -> dict:
    """The widths of a config, for the history."""
    return {"heads_per_layer": list(config.heads_per_layer),
            "intermediate_per_layer": list(config.intermediate_per_layer),
            "embedding_rank": config.embedding_rank}


def _size(config, flops_tokens: int) -> dict:
    """Parameters (with and without exits) and FLOPs of one sequence through every layer and exit."""
    return {"parameters": count_parameters(config)["total"],
            "encoder_parameters": count_parameters(config, include_exits=False)["total"],
            "flops": model_flops(config, flops_tokens), "flops_tokens": flops_tokens}


def _train_period(student, teacher, data: TaskData, settings: Slenderize, training: Training, t: int,
                  period_steps: int, hidden_steps: int, progress: bool) -> list:
    """One pruning period of the student after t prunes: `hidden` for steps [0, hidden_steps),
    `pred` for the rest, peaking at ``settings.period_learning_rate(t)``.

    Both objectives share one fresh AdamW and one linear warmup/decay schedule over the whole
    period (each Trainer builds it from ``max_steps = period_steps`` and runs its part of it),
    so the learning rate restarts once per prune. Returns the trainers' training logs.
    """
    logs, optimizer = [], None
    for objective, start, stop in (("hidden", 0, hidden_steps), ("pred", hidden_steps, period_steps)):
        if stop <= start:
            continue
        args = training_arguments(data.task, training, progress, objective=objective, max_steps=period_steps,
                                  batch_size=settings.batch_size, learning_rate=settings.period_learning_rate(t),
                                  warmup_steps=period_warmup_steps(settings, training, period_steps),
                                  seed=training.seed + t, eval_every=None, save_best=False)
        trainer = Trainer(student, args, data.train, None, teacher=teacher)
        trainer.step, trainer.total_steps = start, stop   # this objective's share of the period's schedule
        if optimizer is not None:
            trainer.optimizer = optimizer                # the period's AdamW moments carry over
        trainer.train(resume=False)
        optimizer = trainer.optimizer
        logs.extend({**record, "objective": objective} for record in trainer.history)
    return logs


def _save(student, history, folder, tokenizer_file):
    """The student and the history so far, as one atomic checkpoint folder."""
    text = json.dumps(history, indent=2, default=W.json_default)
    student.save_pretrained(folder, tokenizer_file, extra_files={HISTORY_FILE: lambda p: W.write_text(p, text)})


def slenderize(ta_model: CostEffModel, teacher: Optional[CostEffModel], data: TaskData, settings: Slenderize,
               training: Training, output_dir=None, resume: bool = True, progress: bool = True):
    """Slenderize a copy of `ta_model` to the widths of the recipe's `slenderize` section
    (docs/method.md, 5); returns ``(student, history)``.

    Args:
        ta_model: the multi-exit TA the student starts from (not changed).
        teacher: the model distilled from (None: `ta_model`, as in the paper).
        data: the task's data: importance samples and training batches come from ``train``;
            ``heldout`` (when there is one) is scored after every prune.
        settings, training: the recipe's `slenderize` and shared `training` sections.
        output_dir: when given, ``<output_dir>/student/`` holds the latest student and
            ``slenderize_history.json``, rewritten atomically after every prune; a later call
            with ``resume=True`` continues after the last finished prune.

    ``history`` holds one record for the TA (``prune`` 0) and one per prune t with the widths,
    ``parameters`` / ``encoder_parameters`` (flops.count_parameters), ``flops`` (one sequence of
    ``max_length`` tokens through every layer and exit), the period's learning rate and
    steps, the training logs and the held-out metrics of every exit (train.evaluate).
    """
    if not isinstance(ta_model, CostEffModel):
        raise TypeError(f"ta_model must be a CostEffModel, got {type(ta_model).__name__}")
    if ta_model.config.num_labels == 0:
        raise ValueError("the TA has no exits (num_labels == 0): slenderization distills exit by exit")
    teacher = ta_model if teacher is None else teacher
    schedule = prune_schedule(ta_model.config, settings.heads, settings.ffn, settings.rank)
    steps_per_epoch = math.ceil(len(data.train) / settings.batch_size)
    period_steps = max(1, math.ceil(settings.period * steps_per_epoch))
    hidden_steps = int(math.floor(settings.repr_proportion * period_steps + 0.5))   # rounded, halves up
    flops_tokens = data.train.max_length
    folder = None if output_dir is None else os.path.join(os.fspath(output_dir), "student")

    def heldout_metrics(model):
        return None if data.heldout is None else evaluate(model, data.heldout, data.task, training.eval_batch_size)

    student, history = None, []
    if folder is not None and resume and os.path.isfile(os.path.join(folder, HISTORY_FILE)):
        with open(os.path.join(folder, HISTORY_FILE), encoding="utf-8") as f:
            history = json.load(f)
        student = CostEffModel.from_pretrained(folder, dtype=ta_model.dtype)
    if student is None:
        student = ta_model.copy()
        history = [{"prune": 0, **_widths(student.config), **_size(student.config, flops_tokens),
                    "heldout": heldout_metrics(student)}]
    done = int(history[-1]["prune"])
    if done > len(schedule) or (done > 0 and (
            list(student.config.heads_per_layer) != list(schedule[done - 1].heads_per_layer)
            or list(student.config.intermediate_per_layer) != list(schedule[done - 1].intermediate_per_layer))):
        raise ValueError(f"the student saved in {folder} (after prune {done}) does not follow the schedule "
                         f"of these arguments; use another output_dir or resume=False")

    pad_to = data.train.max_length if settings.importance_hidden_loss == "padded" else None

    def train_period(prunes_done):
        clock = time.perf_counter()
        logs = _train_period(student, teacher, data, settings, training, prunes_done, period_steps, hidden_steps,
                             progress)
        return logs, time.perf_counter() - clock

    for step in schedule[done:]:
        t = step.t
        # "end" (the authors'): the period of the student after t-1 prunes, then prune t;
        # "start": prune t, then the period of the student after t prunes.
        trained = t - 1 if settings.timing == "end" else t
        if settings.timing == "end":
            logs, train_seconds = train_period(trained)
        clock = time.perf_counter()
        batches = importance_batches(data.train, settings.importance_examples, settings.batch_size,
                                     seed=(training.seed, t))
        importance = taylor_importance(student, batches, teacher, last_exit_only=settings.last_exit_only,
                                       temperature=training.temperature,
                                       gradient_equilibrium=training.gradient_equilibrium, hidden_pad_to=pad_to,
                                       last_exit_hard=settings.last_exit_hard, progress=progress)
        keep_heads, keep_neurons = keep_from_importance(importance, list(step.heads_per_layer),
                                                        list(step.intermediate_per_layer))
        student = slice_model(student, keep_heads, keep_neurons)
        if step.embedding_rank is not None and step.embedding_rank != student.config.embedding_rank:
            student = factorize_embedding(student, step.embedding_rank)
        importance_seconds = time.perf_counter() - clock

        if settings.timing == "start":
            logs, train_seconds = train_period(trained)
        history.append({
            "prune": t, **_widths(student.config), **_size(student.config, flops_tokens),
            "kept_heads": [k.tolist() for k in keep_heads], "prune_timing": settings.timing,
            "learning_rate": settings.period_learning_rate(trained), "steps": period_steps,
            "hidden_steps": hidden_steps, "pred_steps": period_steps - hidden_steps,
            "importance_batches": importance.num_batches, "importance_seconds": importance_seconds,
            "train_seconds": train_seconds, "train": logs, "heldout": heldout_metrics(student),
        })
        if folder is not None:
            _save(student, history, folder, data.tokenizer_file)
    return student, history
