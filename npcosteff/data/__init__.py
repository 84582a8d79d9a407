"""GLUE data: tasks, loading from the hub or a TSV folder, batching."""

from npcosteff.data.glue import (GLUE_DIR_ENV, GLUE_TASKS, GlueSplit, TaskSpec, get_task,
                                 load_glue)
from npcosteff.data.batching import (EncodedSplit, encode_split, iterate_batches, length_order,
                                     restore_order)

__all__ = ["GLUE_DIR_ENV", "GLUE_TASKS", "GlueSplit", "TaskSpec", "get_task", "load_glue",
           "EncodedSplit", "encode_split", "iterate_batches", "length_order", "restore_order"]
