"""Runs of the COST-EFF recipe (docs/method.md, 6) over folders: what the ``npcosteff`` command
line, the experiments and the tutorials call.

* `npcosteff.runs.folders`: the console and its logs, user errors, models and GLUE data by
  folder, and the resume bookkeeping of a stage folder (`StageFolder`: stage.json, DONE.json);
* `npcosteff.runs.stages`: `run_stage`, the one skip / resume / record skeleton, the four
  stages built on it (teacher, TA, slenderization, recovery) and `run_recipe`;
* `npcosteff.runs.summary`: a model's dev metrics and sizes, the early-exit sweep of several
  models and the run's summary table.

::

    from npcosteff.presets import get_preset
    from npcosteff.runs import run_recipe

    summary = run_recipe(get_preset("quick"), "runs/quick", glue_dir="shipped")

Nothing heavy is imported until a stage runs, so the command line starts quickly.
"""

from __future__ import annotations

from .folders import DONE_FILE, LOG_FILE, RECIPE_FILE, STAGE_FILE, DataUnavailable, StageFolder, UserError, console, \
    link_stages, load_data, load_model, load_tokenizer, model_folder, pretrained_dir, read_config, recorded_task, \
    tokenizer_dir
from .stages import check_targets, run_recipe, run_stage, stage_finetune, stage_recover, stage_slenderize, \
    stage_train_ta
from .summary import build_summary, describe, sweep_models, sweep_table

__all__ = ["DONE_FILE", "LOG_FILE", "RECIPE_FILE", "STAGE_FILE", "DataUnavailable", "StageFolder", "UserError",
           "console", "link_stages", "load_data", "load_model", "load_tokenizer", "model_folder", "pretrained_dir",
           "read_config", "recorded_task", "tokenizer_dir",
           "check_targets", "run_recipe", "run_stage", "stage_finetune", "stage_recover", "stage_slenderize",
           "stage_train_ta", "build_summary", "describe", "sweep_models", "sweep_table"]
