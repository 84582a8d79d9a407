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
4. train for one pruning period (``prune_period`` epochs) with a fresh AdamW and a fresh
   linear warmup/decay schedule peaking at ``lr * (1 + lr_restore)^t``: the first
   ``repr_proportion`` of the steps with the ``hidden`` stage, the rest with ``pred``;
5. record widths, parameters, FLOPs and the held-out metrics of every exit.
"""

from __future__ import annotations

import dataclasses
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
from ..train import Trainer, TrainingArguments, evaluate

__all__ = ["PruneStep", "prune_schedule", "SlenderizeArguments", "slenderize", "HISTORY_FILE"]

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


# --------------------------------------------------------------------------- arguments
PRUNE_TIMINGS = ("end", "start")
IMPORTANCE_HIDDEN_LOSSES = ("padded", "per_token")


@dataclass
class SlenderizeArguments:
    """Hyperparameters of slenderization (defaults: docs/method.md, 6, the authors' scripts).

    The settings every training stage shares (batch size, learning rate, weight decay,
    warmup, clipping, temperature, gradient equilibrium, seed, ...) are one
    ``TrainingArguments`` in `training`; its ``learning_rate`` is the peak of the first
    period, restored by ``lr_restore`` after each prune (:meth:`period_learning_rate`).
    """
    task: str
    heads: int                                 # target heads per layer H'
    ffn: Optional[int] = None                  # target FFN width F' (None: not pruned)
    embedding_rank: Optional[int] = None       # target word-embedding rank (None: not factorized)
    prune_period: float = 1.0                  # epochs of each pruning period
    prune_timing: str = "end"                  # end: train a period, then prune (the authors'); start: prune, then train
    repr_proportion: float = 0.6               # share of a period's steps on the `hidden` stage
    lr_restore: float = 0.12                   # the period after prune t peaks at learning_rate * (1 + lr_restore)^t
    min_warmup_steps: int = 10                 # a period warms up over max(min_warmup_steps, warmup_proportion)
    importance_examples: Optional[int] = None  # training examples sampled for importance (None: all, the authors')
    importance_hidden_loss: str = "padded"     # padded: MSE over max_length tokens (the authors'); per_token
    importance_equilibrium: str = "authors"    # gradient-equilibrium rule of the importance pass (npcosteff.equilibrium)
    last_exit_only: bool = False               # importance from the final exit only (ablation)
    last_exit_hard: bool = False               # the ablation keeps 0.1 x hard of the last exit (not the authors')
    flops_tokens: int = 128                    # sequence length at which FLOPs are reported
    training: Optional[TrainingArguments] = None   # shared settings (None: the defaults at the paper's 1e-5)

    def __post_init__(self):
        if self.training is None:
            self.training = TrainingArguments(task=self.task, learning_rate=1e-5)
        if self.training.task != self.task:
            raise ValueError(f"the training arguments are for task {self.training.task!r}, not {self.task!r}")
        _positive_int(self.heads, "heads")
        for name in ("ffn", "embedding_rank", "importance_examples"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), name)
        _positive_int(self.flops_tokens, "flops_tokens")
        if self.prune_timing not in PRUNE_TIMINGS:
            raise ValueError(f"prune_timing must be one of {PRUNE_TIMINGS}, got {self.prune_timing!r}")
        if self.importance_hidden_loss not in IMPORTANCE_HIDDEN_LOSSES:
            raise ValueError(f"importance_hidden_loss must be one of {IMPORTANCE_HIDDEN_LOSSES}, "
                             f"got {self.importance_hidden_loss!r}")
        if self.min_warmup_steps < 0:
            raise ValueError(f"min_warmup_steps must be >= 0, got {self.min_warmup_steps}")
        if not (math.isfinite(self.prune_period) and self.prune_period > 0):
            raise ValueError(f"prune_period must be > 0 epochs, got {self.prune_period}")
        if not 0.0 <= self.repr_proportion <= 1.0:
            raise ValueError(f"repr_proportion {self.repr_proportion} is outside [0, 1]")
        if not (math.isfinite(self.training.learning_rate) and self.training.learning_rate >= 0):
            raise ValueError(f"learning_rate must be >= 0, got {self.training.learning_rate}")
        if not (math.isfinite(self.lr_restore) and self.lr_restore >= 0):
            raise ValueError(f"lr_restore must be >= 0, got {self.lr_restore}")

    def period_learning_rate(self, t: int) -> float:
        """The peak learning rate of the period after prune t: ``lr * (1 + lr_restore)^t``."""
        return self.training.learning_rate * (1.0 + self.lr_restore) ** t

    def period_warmup_steps(self, period_steps: int) -> int:
        """Warmup steps of one period: ``max(min_warmup_steps, ceil(warmup_proportion * steps))``,
        at most the period."""
        return min(period_steps, max(self.min_warmup_steps, math.ceil(self.training.warmup_proportion * period_steps)))


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


def _train_period(student, teacher, train_data, args: SlenderizeArguments, t: int, period_steps: int,
                  hidden_steps: int) -> list:
    """One pruning period of the student after t prunes: `hidden` for steps [0, hidden_steps),
    `pred` for the rest, peaking at ``args.period_learning_rate(t)``.

    Both stages share one fresh AdamW and one linear warmup/decay schedule over the whole
    period (each Trainer builds it from ``max_steps = period_steps`` and runs its part of it),
    so the learning rate restarts once per prune. Returns the trainers' training logs.
    """
    period = dataclasses.replace(args.training, max_steps=period_steps, learning_rate=args.period_learning_rate(t),
                                 warmup_steps=args.period_warmup_steps(period_steps), seed=args.training.seed + t,
                                 eval_every=None, save_best=False)
    logs, optimizer = [], None
    for objective, start, stop in (("hidden", 0, hidden_steps), ("pred", hidden_steps, period_steps)):
        if stop <= start:
            continue
        trainer = Trainer(student, dataclasses.replace(period, objective=objective), train_data, None, teacher=teacher)
        trainer.step, trainer.total_steps = start, stop   # this stage's share of the period's schedule
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


def slenderize(ta_model: CostEffModel, teacher: Optional[CostEffModel], train_data, eval_data,
               args: SlenderizeArguments, output_dir=None, tokenizer_file=None, resume: bool = True):
    """Slenderize a copy of `ta_model` to the target widths (docs/method.md, 5); returns ``(student, history)``.

    Args:
        ta_model: the multi-exit TA the student starts from (not changed).
        teacher: the model distilled from (None: `ta_model`, as in the paper).
        train_data: the training ``EncodedSplit`` (importance samples and training batches).
        eval_data: the held-out ``EncodedSplit`` scored after every prune (None: no evaluation).
        args: :class:`SlenderizeArguments`.
        output_dir: when given, ``<output_dir>/student/`` holds the latest student and
            ``slenderize_history.json``, rewritten atomically after every prune; a later call
            with ``resume=True`` continues after the last finished prune.
        tokenizer_file: a ``tokenizer.json`` copied next to the saved student.

    ``history`` holds one record for the TA (``prune`` 0) and one per prune t with the widths,
    ``parameters`` / ``encoder_parameters`` (flops.count_parameters), ``flops`` (one sequence of
    ``args.flops_tokens`` tokens through every layer and exit), the period's learning rate and
    steps, the training logs and the held-out metrics of every exit (train.evaluate).
    """
    if not isinstance(ta_model, CostEffModel):
        raise TypeError(f"ta_model must be a CostEffModel, got {type(ta_model).__name__}")
    if ta_model.config.num_labels == 0:
        raise ValueError("the TA has no exits (num_labels == 0): slenderization distills exit by exit")
    teacher = ta_model if teacher is None else teacher
    schedule = prune_schedule(ta_model.config, args.heads, args.ffn, args.embedding_rank)
    steps_per_epoch = math.ceil(len(train_data) / args.training.batch_size)
    period_steps = max(1, math.ceil(args.prune_period * steps_per_epoch))
    hidden_steps = int(math.floor(args.repr_proportion * period_steps + 0.5))   # rounded, halves up
    folder = None if output_dir is None else os.path.join(os.fspath(output_dir), "student")

    def heldout_metrics(model):
        return None if eval_data is None else evaluate(model, eval_data, args.task, args.training.eval_batch_size)

    student, history = None, []
    if folder is not None and resume and os.path.isfile(os.path.join(folder, HISTORY_FILE)):
        with open(os.path.join(folder, HISTORY_FILE), encoding="utf-8") as f:
            history = json.load(f)
        student = CostEffModel.from_pretrained(folder, dtype=ta_model.dtype)
    if student is None:
        student = ta_model.copy()
        history = [{"prune": 0, **_widths(student.config), **_size(student.config, args.flops_tokens),
                    "heldout": heldout_metrics(student)}]
    done = int(history[-1]["prune"])
    if done > len(schedule) or (done > 0 and (
            list(student.config.heads_per_layer) != list(schedule[done - 1].heads_per_layer)
            or list(student.config.intermediate_per_layer) != list(schedule[done - 1].intermediate_per_layer))):
        raise ValueError(f"the student saved in {folder} (after prune {done}) does not follow the schedule "
                         f"of these arguments; use another output_dir or resume=False")

    pad_to = train_data.max_length if args.importance_hidden_loss == "padded" else None

    def train_period(prunes_done):
        clock = time.perf_counter()
        logs = _train_period(student, teacher, train_data, args, prunes_done, period_steps, hidden_steps)
        return logs, time.perf_counter() - clock

    for step in schedule[done:]:
        t = step.t
        # "end" (the authors'): the period of the student after t-1 prunes, then prune t;
        # "start": prune t, then the period of the student after t prunes.
        trained = t - 1 if args.prune_timing == "end" else t
        if args.prune_timing == "end":
            logs, train_seconds = train_period(trained)
        clock = time.perf_counter()
        batches = importance_batches(train_data, args.importance_examples, args.training.batch_size,
                                     seed=(args.training.seed, t))
        importance = taylor_importance(student, batches, teacher, last_exit_only=args.last_exit_only,
                                       temperature=args.training.temperature,
                                       gradient_equilibrium=args.importance_equilibrium, hidden_pad_to=pad_to,
                                       last_exit_hard=args.last_exit_hard, progress=args.training.progress)
        keep_heads, keep_neurons = keep_from_importance(importance, list(step.heads_per_layer),
                                                        list(step.intermediate_per_layer))
        student = slice_model(student, keep_heads, keep_neurons)
        if step.embedding_rank is not None and step.embedding_rank != student.config.embedding_rank:
            student = factorize_embedding(student, step.embedding_rank)
        importance_seconds = time.perf_counter() - clock

        if args.prune_timing == "start":
            logs, train_seconds = train_period(trained)
        history.append({
            "prune": t, **_widths(student.config), **_size(student.config, args.flops_tokens),
            "kept_heads": [k.tolist() for k in keep_heads], "prune_timing": args.prune_timing,
            "learning_rate": args.period_learning_rate(trained), "steps": period_steps,
            "hidden_steps": hidden_steps, "pred_steps": period_steps - hidden_steps,
            "importance_batches": importance.num_batches, "importance_seconds": importance_seconds,
            "train_seconds": train_seconds, "train": logs, "heldout": heldout_metrics(student),
        })
        if folder is not None:
            _save(student, history, folder, tokenizer_file)
    return student, history
