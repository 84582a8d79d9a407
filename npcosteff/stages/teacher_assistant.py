"""Stage 2, the teacher-assistant (TA): the pretrained model with an exit after every layer
learns from the fine-tuned teacher, ``hidden`` distillation first, then ``pred_ta``
((prediction distillation + hard loss) / 2 over all exits, with gradient equilibrium). The
slender student starts as a copy of the TA, and the TA teaches it."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ..data.task import TaskData
from ..model import CostEffModel
from ..train import Trainer, TrainingArguments
from .common import chosen, num_layers, task_overrides

__all__ = ["TA_SCHEDULES", "train_ta"]

TA_SCHEDULES = ("authors", "split")


def train_ta(data: TaskData, teacher: CostEffModel, args: TrainingArguments, output_dir, pretrained=None,
             hidden_fraction=1 / 3, dtype=np.float32, pooler=None, schedule="authors"):
    """Train the TA from `pretrained`, distilling from `teacher`: `hidden` for
    ``hidden_fraction * epochs``, then `pred_ta`, keeping the checkpoint with the best
    held-out metric averaged over exits (the last without a held-out part); `pooler` is the
    exits' pooler (None: the default).

    `schedule` ``"authors"``: `pred_ta` then runs the full ``epochs`` (the authors' scripts:
    EPOCH/3 of `hidden`, then EPOCH of `pred`); ``"split"``: the rest of ``epochs``.
    Returns (TA model, results of both parts)."""
    if schedule not in TA_SCHEDULES:
        raise ValueError(f"schedule must be one of {TA_SCHEDULES}, got {schedule!r}")
    L = num_layers(pretrained)
    model = CostEffModel.from_pretrained(pretrained, dtype=dtype, seed=args.seed,
                                         **task_overrides(data, False, L, pooler))
    hidden_args = dataclasses.replace(args, objective="hidden", epochs=args.epochs * hidden_fraction,
                                      max_steps=None if args.max_steps is None else
                                      max(1, round(args.max_steps * hidden_fraction)), save_best=False)
    if schedule == "authors":
        pred_args = dataclasses.replace(args, objective="pred_ta", final_only=False)
    else:
        pred_args = dataclasses.replace(args, objective="pred_ta", epochs=args.epochs * (1 - hidden_fraction),
                                        max_steps=None if args.max_steps is None else
                                        max(1, args.max_steps - hidden_args.max_steps), final_only=False)
    r1 = Trainer(model, hidden_args, data.train, None, teacher=teacher,
                 output_dir=os.path.join(output_dir, "hidden"), tokenizer_file=data.tokenizer_file).train()
    r2 = Trainer(model, pred_args, data.train, data.heldout, teacher=teacher, output_dir=output_dir,
                 tokenizer_file=data.tokenizer_file).train()
    return chosen(output_dir, model, dtype), {"hidden": r1, "pred_ta": r2}
