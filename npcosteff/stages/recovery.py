"""Stage 4, recovery: the slender student learns from the TA again, ``hidden`` distillation
then ``pred`` (docs/method.md, 6, step 4), keeping the checkpoint with the best metric
averaged over exits on the held-out part of the training set (never on dev; the last
checkpoint without one)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

from ..model import CostEffModel
from ..train import Trainer, TrainingArguments, evaluate

__all__ = ["RecoverArguments", "recover"]


@dataclass
class RecoverArguments:
    """Hyperparameters of recovery after slenderization (defaults: docs/method.md, 6).

    Two stages, each with its own epochs and learning rate; everything else they share is one
    ``TrainingArguments`` in `training` (None: the defaults).
    """
    task: str
    hidden_epochs: float = 3.0
    pred_epochs: float = 3.0
    hidden_learning_rate: float = 3e-5
    pred_learning_rate: float = 2e-5
    hidden_max_steps: Optional[int] = None     # override the epochs when set
    pred_max_steps: Optional[int] = None
    training: Optional[TrainingArguments] = None   # shared settings of both stages

    def __post_init__(self):
        if self.training is None:
            self.training = TrainingArguments(task=self.task)
        if self.training.task != self.task:
            raise ValueError(f"the training arguments are for task {self.training.task!r}, not {self.task!r}")

    def training_arguments(self):
        """The ``(hidden, pred)`` TrainingArguments of the two stages."""
        hidden = dataclasses.replace(self.training, objective="hidden", epochs=self.hidden_epochs,
                                     max_steps=self.hidden_max_steps, learning_rate=self.hidden_learning_rate,
                                     save_best=False)
        pred = dataclasses.replace(self.training, objective="pred", epochs=self.pred_epochs,
                                   max_steps=self.pred_max_steps, learning_rate=self.pred_learning_rate,
                                   save_best=True)
        return hidden, pred


def recover(student: CostEffModel, teacher: CostEffModel, train_data, eval_data, args: RecoverArguments,
            output_dir=None, tokenizer_file=None):
    """Recover a slender student: ``hidden`` distillation, then ``pred`` (docs/method.md, 6, step 4).

    `student` is trained in place. With `eval_data` (the held-out part of the training set,
    never the dev set that is reported), the ``pred`` stage scores every exit on it and the
    checkpoint with the best average over exits is returned (a new model);
    without it, the trained student is. `output_dir` keeps the runs (``hidden/``, ``pred/``,
    resumable by the Trainer); without it, a temporary folder holds the best checkpoint.
    Returns ``(model, result)`` with the two trainers' results and, with `eval_data`, the
    returned model's metrics on it (``heldout``).
    """
    if teacher is None:
        raise ValueError("recovery distills from the TA: pass teacher=")
    hidden_args, pred_args = args.training_arguments()
    with tempfile.TemporaryDirectory(prefix="npcosteff-recover-") as scratch:
        root = scratch if output_dir is None else os.fspath(output_dir)
        hidden = Trainer(student, hidden_args, train_data, None, teacher=teacher,
                         output_dir=os.path.join(root, "hidden"), tokenizer_file=tokenizer_file)
        hidden_result = hidden.train()
        pred = Trainer(student, pred_args, train_data, eval_data, teacher=teacher,
                       output_dir=os.path.join(root, "pred"), tokenizer_file=tokenizer_file)
        pred_result = pred.train()
        result = {"hidden": hidden_result, "pred": pred_result, "best_average": pred.best}
        best_dir = os.path.join(root, "pred", "best")
        model = student
        if eval_data is not None and os.path.isfile(os.path.join(best_dir, "model.safetensors")):
            model = CostEffModel.from_pretrained(best_dir, dtype=student.dtype)
            result["heldout"] = evaluate(model, eval_data, args.task, args.training.eval_batch_size)
    return model, result
