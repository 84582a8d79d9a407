"""The baseline the TA is compared with: the fine-tuned teacher with exits attached at every
layer and trained on the hard loss of all exits, without gradient equilibrium (what one does
without the paper's TA)."""

from __future__ import annotations

import numpy as np

from ..data.task import TaskData
from ..model import CostEffModel
from ..recipe import TeacherAssistant, Training
from ..surgery import attach_exits
from ..train import Trainer, training_arguments
from .common import chosen
from .teacher_assistant import ta_parts

__all__ = ["train_naive_exits"]


def train_naive_exits(data: TaskData, teacher: CostEffModel, settings: TeacherAssistant, training: Training,
                      output_dir, dtype=np.float32, progress=True):
    """Attach exits to `teacher` and train them and the encoder with the TA's settings, so that
    the two differ in training alone: the TA's pooler (another pooler than the teacher's starts
    every exit fresh), rate, batch size and number of steps (its two parts together), choosing
    the checkpoint as the TA does."""
    model = attach_exits(teacher.astype(dtype), exit_start=1, seed=training.seed, pooler=settings.pooler)
    parts = ta_parts(settings).values()
    steps = None if settings.max_steps is None else sum(n for _, n in parts)
    args = training_arguments(data.task, training, progress, objective="hard", final_only=False,
                              gradient_equilibrium="off", epochs=sum(e for e, _ in parts), max_steps=steps,
                              batch_size=settings.batch_size, learning_rate=settings.learning_rate)
    result = Trainer(model, args, data.train, data.heldout, output_dir=output_dir,
                     tokenizer_file=data.tokenizer_file).train()
    return chosen(output_dir, model, dtype), result
