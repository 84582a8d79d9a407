"""Stage 4, recovery: the slender student learns from the TA again, ``hidden`` distillation
then ``pred`` (docs/method.md, 6, step 4), keeping the checkpoint with the best metric
averaged over exits on the held-out part of the training set (never on dev; the last
checkpoint without one)."""

from __future__ import annotations

import os
import tempfile

from ..data.task import TaskData
from ..model import CostEffModel
from ..recipe import Recover, Training
from ..train import Trainer, evaluate, training_arguments

__all__ = ["recover"]


def recover(student: CostEffModel, teacher: CostEffModel, data: TaskData, settings: Recover, training: Training,
            output_dir=None, progress=True):
    """Recover a slender student with the recipe's `recover` section: `hidden`, then `pred`.

    `student` is trained in place. With a held-out part in `data`, the ``pred`` run scores
    every exit on it and the checkpoint with the best average over exits is returned (a new
    model); without one, the trained student is. `output_dir` keeps the runs (``hidden/``,
    ``pred/``, resumable by the Trainer); without it, a temporary folder holds them.
    Returns ``(model, result)`` with the two trainers' results and, with a held-out part, the
    returned model's metrics on it (``heldout``).
    """
    if teacher is None:
        raise ValueError("recovery distills from the TA: pass teacher=")
    runs = {"hidden": (settings.hidden_epochs, settings.hidden_max_steps, settings.hidden_learning_rate),
            "pred": (settings.pred_epochs, settings.pred_max_steps, settings.pred_learning_rate)}
    result = {}
    with tempfile.TemporaryDirectory(prefix="npcosteff-recover-") as scratch:
        root = scratch if output_dir is None else os.fspath(output_dir)
        for objective, (epochs, max_steps, learning_rate) in runs.items():
            chooses = objective == "pred"                 # checkpoints are chosen in the second run only
            args = training_arguments(data.task, training, progress, objective=objective, epochs=epochs,
                                      max_steps=max_steps, learning_rate=learning_rate,
                                      batch_size=settings.batch_size, save_best=chooses)
            trainer = Trainer(student, args, data.train, data.heldout if chooses else None, teacher=teacher,
                              output_dir=os.path.join(root, objective), tokenizer_file=data.tokenizer_file)
            result[objective] = trainer.train()
        result["best_average"] = trainer.best
        best_dir = os.path.join(root, "pred", "best")
        model = student
        if data.heldout is not None and os.path.isfile(os.path.join(best_dir, "model.safetensors")):
            model = CostEffModel.from_pretrained(best_dir, dtype=student.dtype)
            result["heldout"] = evaluate(model, data.heldout, data.task, training.eval_batch_size)
    return model, result
