"""Stage 1, fine-tuning: the pretrained model with one classifier after its last layer, trained
on the hard loss (plain fine-tuning). The result is the teacher every later stage learns from."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..data.task import TaskData
from ..model import CostEffModel
from ..train import Trainer, TrainingArguments
from .common import chosen, num_layers, task_overrides

__all__ = ["finetune"]


def finetune(data: TaskData, args: TrainingArguments, output_dir, pretrained=None, dtype=np.float32,
             pooler=None):
    """Fine-tune `pretrained` (None: the packaged MiniLM) on `data`.

    `pooler` is the classifier's pooler (``cls_tanh``, ``mean``, ``dense``; None: the default).

    Returns (chosen model, training result): the checkpoint with the best held-out metric,
    in <output_dir>/best, or the last one when `data` has no held-out part."""
    L = num_layers(pretrained)
    model = CostEffModel.from_pretrained(pretrained, dtype=dtype, seed=args.seed,
                                         **task_overrides(data, True, L, pooler))
    args = dataclasses.replace(args, objective="hard", final_only=True)
    result = Trainer(model, args, data.train, data.heldout, output_dir=output_dir,
                     tokenizer_file=data.tokenizer_file).train()
    return chosen(output_dir, model, dtype), result
