"""The stages of the COST-EFF recipe (docs/method.md, 6) as functions over run folders.

1. `finetune`: the pretrained model with one classifier, plain fine-tuning (the teacher);
2. `train_ta`: the pretrained model with an exit after every layer, `hidden` distillation from
   the teacher for about a third of the epochs, then `pred_ta` (the teacher-assistant);
3. slenderization and 4. recovery live in `npcosteff.slenderize`;
5. evaluation of every exit and the early-exit sweep live in `npcosteff.train.evaluate` and
   `npcosteff.sweep`.

Every stage chooses its checkpoint on `TaskData.heldout`, a fixed part of the training set
held out from training (`npcosteff.data.heldout_split`), never on the dev set that is
reported; without a held-out part (``heldout=False``) it keeps its last checkpoint.

`train_naive_exits` is the baseline the TA is compared with: the fine-tuned teacher with exits
attached at every layer (with the TA's pooler) and trained on the hard loss only, without
gradient equilibrium.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .data.batching import EncodedSplit, encode_split, heldout_split
from .data.glue import get_task, load_glue
from .model import CostEffModel
from .surgery import attach_exits
from .train import Trainer, TrainingArguments


@dataclass
class TaskData:
    """A GLUE task tokenized for training: the training examples, the held-out part of the
    training set that checkpoints are chosen on (None: keep the last checkpoint), and dev."""
    task: str
    num_labels: int
    is_regression: bool
    train: EncodedSplit
    dev: EncodedSplit
    tokenizer_file: Optional[str] = None
    heldout: Optional[EncodedSplit] = None


def load_task_data(task, data_dir=None, model_dir=None, max_length=128, max_train=None, max_eval=None,
                   heldout=False) -> TaskData:
    """Load and tokenize a GLUE task (`data_dir`: a GLUE TSV folder; None: $NPCOSTEFF_GLUE_DIR or the hub).

    With `heldout`, a fixed tenth of the (first `max_train`) training examples, at most 2,000, is
    taken out of ``train`` into ``heldout`` (`npcosteff.data.heldout_split`)."""
    from .pretrained import resolve_model_dir
    from .tokenizer import Tokenizer

    spec = get_task(task)
    folder = resolve_model_dir(model_dir, required=("tokenizer.json",))
    tok = Tokenizer.from_pretrained(folder)
    dev_split = "validation_matched" if spec.name == "mnli" else "validation"
    train = encode_split(tok, load_glue(spec, "train", data_dir, max_train), max_length)
    dev = encode_split(tok, load_glue(spec, dev_split, data_dir, max_eval), max_length)
    held = None
    if heldout:
        train, held = heldout_split(train)
    return TaskData(spec.name, spec.num_labels, spec.is_regression, train, dev,
                    os.path.join(folder, "tokenizer.json"), held)


def _task_overrides(data: TaskData, exit_start_last: bool, num_layers: int, pooler=None):
    """Config changes for a task: its labels, where the exits start, and the exits' pooler
    (None: keep the checkpoint's, else cls_tanh)."""
    overrides = dict(num_labels=data.num_labels,
                     problem_type="regression" if data.is_regression else "single_label_classification",
                     exit_start=num_layers if exit_start_last else 1)
    if pooler is not None:
        overrides["pooler"] = pooler
    return overrides


def _num_layers(pretrained) -> int:
    from .config import CostEffConfig
    from .pretrained import resolve_model_dir

    return CostEffConfig.from_json(resolve_model_dir(pretrained)).num_hidden_layers


def finetune(data: TaskData, args: TrainingArguments, output_dir, pretrained=None, dtype=np.float32,
             pooler=None):
    """Stage 1: fine-tune the pretrained model (one classifier after the last layer).

    `pooler` is the classifier's pooler (``cls_tanh``, ``mean``, ``dense``; None: the default).

    Returns (chosen model, training result): the checkpoint with the best held-out metric,
    in <output_dir>/best, or the last one when `data` has no held-out part."""
    L = _num_layers(pretrained)
    model = CostEffModel.from_pretrained(pretrained, dtype=dtype, seed=args.seed,
                                         **_task_overrides(data, True, L, pooler))
    args = dataclasses.replace(args, stage="hard", final_only=True)
    result = Trainer(model, args, data.train, data.heldout, output_dir=output_dir,
                     tokenizer_file=data.tokenizer_file).train()
    return _best(output_dir, model, dtype), result


TA_SCHEDULES = ("authors", "split")


def train_ta(data: TaskData, teacher: CostEffModel, args: TrainingArguments, output_dir, pretrained=None,
             hidden_fraction=1 / 3, dtype=np.float32, pooler=None, schedule="authors"):
    """Stage 2: the teacher-assistant. The pretrained model with an exit after every layer learns
    `hidden` distillation from the teacher for ``hidden_fraction * epochs``, then `pred_ta`
    ((prediction distillation + hard loss) / 2 over all exits), keeping the checkpoint with the
    best held-out metric averaged over exits (the last without a held-out part); `pooler` is
    the exits' pooler (None: the default).

    `schedule` ``"authors"``: `pred_ta` then runs the full ``epochs`` (the authors' scripts:
    EPOCH/3 of `hidden`, then EPOCH of `pred`); ``"split"``: the rest of ``epochs``.
    Returns (TA model, results of both parts)."""
    if schedule not in TA_SCHEDULES:
        raise ValueError(f"schedule must be one of {TA_SCHEDULES}, got {schedule!r}")
    L = _num_layers(pretrained)
    model = CostEffModel.from_pretrained(pretrained, dtype=dtype, seed=args.seed,
                                         **_task_overrides(data, False, L, pooler))
    hidden_args = dataclasses.replace(args, stage="hidden", epochs=args.epochs * hidden_fraction,
                                      max_steps=None if args.max_steps is None else
                                      max(1, round(args.max_steps * hidden_fraction)), save_best=False)
    if schedule == "authors":
        pred_args = dataclasses.replace(args, stage="pred_ta", final_only=False)
    else:
        pred_args = dataclasses.replace(args, stage="pred_ta", epochs=args.epochs * (1 - hidden_fraction),
                                        max_steps=None if args.max_steps is None else
                                        max(1, args.max_steps - hidden_args.max_steps), final_only=False)
    r1 = Trainer(model, hidden_args, data.train, None, teacher=teacher,
                 output_dir=os.path.join(output_dir, "hidden"), tokenizer_file=data.tokenizer_file).train()
    r2 = Trainer(model, pred_args, data.train, data.heldout, teacher=teacher, output_dir=output_dir,
                 tokenizer_file=data.tokenizer_file).train()
    return _best(output_dir, model, dtype), {"hidden": r1, "pred_ta": r2}


def train_naive_exits(data: TaskData, teacher: CostEffModel, args: TrainingArguments, output_dir,
                      dtype=np.float32, pooler=None):
    """The baseline: the fine-tuned teacher with exits attached at every layer, trained on the
    hard loss of all exits without gradient equilibrium, choosing its checkpoint as `finetune`.

    `pooler`: the exits' pooler; give the TA's, so that the two differ in training alone (None:
    the teacher's; another pooler than the teacher's starts every exit fresh)."""
    model = attach_exits(teacher.astype(dtype), exit_start=1, seed=args.seed, pooler=pooler)
    args = dataclasses.replace(args, stage="hard", final_only=False, gradient_equilibrium=False)
    result = Trainer(model, args, data.train, data.heldout, output_dir=output_dir,
                     tokenizer_file=data.tokenizer_file).train()
    return _best(output_dir, model, dtype), result


def _best(output_dir, model, dtype):
    """The best checkpoint of a run folder if one was written, else the model as it is."""
    best = os.path.join(output_dir, "best") if output_dir else None
    if best and os.path.isfile(os.path.join(best, "model.safetensors")):
        return CostEffModel.from_pretrained(best, dtype=dtype)
    return model
