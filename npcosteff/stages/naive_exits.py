"""The baseline the TA is compared with: the fine-tuned teacher with exits attached at every
layer and trained on the hard loss of all exits, without gradient equilibrium (what one does
without the paper's TA)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..data.task import TaskData
from ..model import CostEffModel
from ..surgery import attach_exits
from ..train import Trainer, TrainingArguments
from .common import chosen

__all__ = ["train_naive_exits"]


def train_naive_exits(data: TaskData, teacher: CostEffModel, args: TrainingArguments, output_dir,
                      dtype=np.float32, pooler=None):
    """Attach exits to `teacher` and train them and the encoder, choosing the checkpoint as
    `finetune` does.

    `pooler`: the exits' pooler; give the TA's, so that the two differ in training alone (None:
    the teacher's; another pooler than the teacher's starts every exit fresh)."""
    model = attach_exits(teacher.astype(dtype), exit_start=1, seed=args.seed, pooler=pooler)
    args = dataclasses.replace(args, objective="hard", final_only=False, gradient_equilibrium="off")
    result = Trainer(model, args, data.train, data.heldout, output_dir=output_dir,
                     tokenizer_file=data.tokenizer_file).train()
    return chosen(output_dir, model, dtype), result
