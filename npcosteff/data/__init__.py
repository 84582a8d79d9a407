"""GLUE data: tasks, where they come from (a TSV folder, the hub, the shipped slices), batching."""

from npcosteff.data.glue import GLUE_TASKS, GlueSplit, TaskSpec, get_task
from npcosteff.data.sources import (GLUE_DIR_ENV, HUB, SHIPPED, SHIPPED_DIR, SliceTooSmall, describe_source,
                                    glue_source, is_shipped, load_glue, shipped_slices, ways_to_get_glue)
from npcosteff.data.batching import (EncodedSplit, encode_split, heldout_split, iterate_batches, length_order,
                                     restore_order)
from npcosteff.data.task import TaskData, load_task_data

__all__ = ["GLUE_DIR_ENV", "GLUE_TASKS", "HUB", "SHIPPED", "SHIPPED_DIR", "GlueSplit", "SliceTooSmall",
           "TaskSpec", "describe_source", "get_task", "glue_source", "is_shipped", "load_glue",
           "shipped_slices", "ways_to_get_glue",
           "EncodedSplit", "encode_split", "heldout_split", "iterate_batches", "length_order", "restore_order",
           "TaskData", "load_task_data"]
