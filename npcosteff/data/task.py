"""A GLUE task ready for training: its training examples, the held-out part of the training
set that checkpoints are chosen on, and dev, tokenized."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from ..pretrained import resolve_model_dir
from ..tokenizer import Tokenizer
from .batching import EncodedSplit, encode_split, heldout_split
from .glue import get_task
from .sources import load_glue

__all__ = ["TaskData", "load_task_data"]


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
