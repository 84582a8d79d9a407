"""Stage 2, the teacher-assistant (TA): the pretrained model with an exit after every layer
learns from the fine-tuned teacher, ``hidden`` distillation first, then ``pred_ta``
((prediction distillation + hard loss) / 2 over all exits, with gradient equilibrium). The
slender student starts as a copy of the TA, and the TA teaches it."""

from __future__ import annotations

import os

import numpy as np

from ..data.task import TaskData
from ..model import CostEffModel
from ..recipe import TeacherAssistant, Training
from ..train import Trainer, training_arguments
from .common import chosen, num_layers, task_overrides

__all__ = ["train_ta", "ta_parts"]


def ta_parts(settings: TeacherAssistant) -> dict:
    """The TA's two runs: ``{"hidden": (epochs, max_steps), "pred_ta": (epochs, max_steps)}``.

    `hidden` runs ``hidden_fraction`` of the epochs; ``schedule="authors"`` then runs
    `pred_ta` for all the epochs (the authors' scripts: EPOCH/3 of `hidden`, then EPOCH of
    `pred`), ``"split"`` for the rest of them."""
    f, n = settings.hidden_fraction, settings.max_steps
    hidden = (settings.epochs * f, None if n is None else max(1, round(n * f)))
    if settings.schedule == "authors":
        return {"hidden": hidden, "pred_ta": (settings.epochs, n)}
    return {"hidden": hidden, "pred_ta": (settings.epochs * (1 - f), None if n is None else max(1, n - hidden[1]))}


def train_ta(data: TaskData, teacher: CostEffModel, settings: TeacherAssistant, training: Training, output_dir,
             pretrained=None, dtype=np.float32, progress=True):
    """Train the TA from `pretrained` (None: the packaged MiniLM), distilling from `teacher`:
    `hidden`, then `pred_ta` (:func:`ta_parts`), keeping the checkpoint with the best held-out
    metric averaged over exits (the last without a held-out part).

    Returns (TA model, results of both parts)."""
    L = num_layers(pretrained)
    model = CostEffModel.from_pretrained(pretrained, dtype=dtype, seed=training.seed,
                                         **task_overrides(data, False, L, settings.pooler))
    results = {}
    for objective, (epochs, max_steps) in ta_parts(settings).items():
        args = training_arguments(data.task, training, progress, objective=objective, final_only=False,
                                  epochs=epochs, max_steps=max_steps, batch_size=settings.batch_size,
                                  learning_rate=settings.learning_rate, save_best=objective == "pred_ta")
        last = objective == "pred_ta"          # checkpoints are chosen in the second part only
        results[objective] = Trainer(model, args, data.train, data.heldout if last else None, teacher=teacher,
                                     output_dir=output_dir if last else os.path.join(output_dir, "hidden"),
                                     tokenizer_file=data.tokenizer_file).train()
    return chosen(output_dir, model, dtype), results
