"""The method's four stages (docs/method.md, 6), one module each, in the order they run:

1. :func:`finetune` (``fine_tuning.py``): the teacher;
2. :func:`train_ta` (``teacher_assistant.py``): the multi-exit teacher-assistant;
3. :func:`slenderize` (``slenderization.py``): prune the TA in width, distilling from it;
4. :func:`recover` (``recovery.py``): the slender student learns from the TA again.

Each takes the task's data (`npcosteff.data.TaskData`), the model it starts from, its own
section of the recipe and the recipe's shared `training` section (npcosteff.recipe), and
chooses its checkpoint on the held-out part of the training set, never on the dev set that is
reported. :func:`train_naive_exits` (``naive_exits.py``) is the baseline the
TA is compared with. Run folders, resuming and summaries are a layer over these
(`npcosteff.runs`); evaluation and the early-exit sweep live in `npcosteff.train.evaluate`
and `npcosteff.sweep`.
"""

from .fine_tuning import finetune
from .naive_exits import train_naive_exits
from .recovery import recover
from .slenderization import HISTORY_FILE, PruneStep, prune_schedule, slenderize
from .teacher_assistant import ta_parts, train_ta

__all__ = ["finetune", "train_ta", "slenderize", "recover", "train_naive_exits", "PruneStep", "prune_schedule",
           "ta_parts", "HISTORY_FILE"]
