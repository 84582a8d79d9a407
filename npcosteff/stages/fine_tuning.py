"""Stage 1, fine-tuning: the pretrained model with one classifier after its last layer, trained
on the hard loss (plain fine-tuning). The result is the teacher every later stage learns from."""

from __future__ import annotations

import numpy as np

from ..data.task import TaskData
from ..model import CostEffModel
from ..recipe import Finetune, Training
from ..train import Trainer, training_arguments
from .common import chosen, num_layers, task_overrides

__all__ = ["finetune"]


def finetune(data: TaskData, settings: Finetune, training: Training, output_dir, pretrained=None,
             dtype=np.float32, progress=True):
    """Fine-tune `pretrained` (None: the packaged MiniLM) on `data` with the recipe's `finetune`
    section (its own seed and pooler) and shared `training` settings.

    Returns (chosen model, training result): the checkpoint with the best held-out metric,
    in <output_dir>/best, or the last one when `data` has no held-out part."""
    L = num_layers(pretrained)
    model = CostEffModel.from_pretrained(pretrained, dtype=dtype, seed=settings.seed,
                                         **task_overrides(data, True, L, settings.pooler))
    # The teacher's one classifier learns at the stage's rate (plain fine-tuning).
    args = training_arguments(data.task, training, progress, objective="hard", final_only=True, seed=settings.seed,
                              exit_lr_multiplier=1.0, epochs=settings.epochs, max_steps=settings.max_steps,
                              batch_size=settings.batch_size, learning_rate=settings.learning_rate)
    result = Trainer(model, args, data.train, data.heldout, output_dir=output_dir,
                     tokenizer_file=data.tokenizer_file).train()
    return chosen(output_dir, model, dtype), result
