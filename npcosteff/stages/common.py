"""What the stages share: the config changes a task asks of a pretrained checkpoint, and the
model a run folder's trainer chose."""

from __future__ import annotations

import os

from ..config import CostEffConfig
from ..data.task import TaskData
from ..model import CostEffModel
from ..pretrained import resolve_model_dir


def task_overrides(data: TaskData, exit_start_last: bool, num_layers: int, pooler=None) -> dict:
    """Config changes for a task: its labels, where the exits start, and the exits' pooler
    (None: keep the checkpoint's)."""
    overrides = dict(num_labels=data.num_labels,
                     problem_type="regression" if data.is_regression else "single_label_classification",
                     exit_start=num_layers if exit_start_last else 1)
    if pooler is not None:
        overrides["pooler"] = pooler
    return overrides


def num_layers(pretrained) -> int:
    """The number of layers of a pretrained checkpoint folder (None: the packaged MiniLM)."""
    return CostEffConfig.from_json(resolve_model_dir(pretrained)).num_hidden_layers


def chosen(output_dir, model, dtype):
    """The checkpoint the trainer chose (``<output_dir>/best``) if it wrote one, else the model
    as it is (the last checkpoint: nothing held out to choose on)."""
    best = os.path.join(output_dir, "best") if output_dir else None
    if best and os.path.isfile(os.path.join(best, "model.safetensors")):
        return CostEffModel.from_pretrained(best, dtype=dtype)
    return model
