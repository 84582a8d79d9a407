"""The stages of the COST-EFF recipe (docs/method.md, 6) over stage folders, and `run_recipe`,
which runs them all into one run folder::

    <output>/recipe.json  teacher/  ta/  slenderize/  recover/  sweep/  summary.md  summary.json  log.txt

Every stage goes through `run_stage`: a finished stage (DONE.json with the same settings) is
skipped and its model loaded, an interrupted one resumes from its last checkpoint, a new one
records its settings first and its results last (npcosteff.runs.folders).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from ..presets import PRESETS_NEEDING_MODEL
from ..recipe import Recipe
from .folders import DONE_FILE, LOG_FILE, StageFolder, UserError, console, dtype_of, link_stages, \
    load_data, load_model, model_folder, pretrained_dir, tokenizer_dir, write_json
from ..config import ConfigError
from ..weights import CheckpointError, json_default
from .operating import choose_operating_points
from .summary import build_summary, describe, metric_line, plot_run, sweep_models

__all__ = ["run_stage", "stage_finetune", "stage_train_ta", "stage_slenderize", "stage_recover", "check_targets",
           "run_recipe"]


def run_stage(name, recipe: Recipe, data, folder, inputs: dict, announce: str, train, note=None):
    """Run stage `name` into `folder` once; returns (model, DONE record).

    `inputs` (the folders and numbers the stage starts from) and the recipe fields of
    `STAGE_KEYS[name]` are the stage's settings. A stage that already finished with them is
    skipped: its model is loaded from the folder its DONE.json names. Otherwise stage.json is
    written (or checked: an interrupted stage resumes from its checkpoints only with the same
    settings), `announce` is printed and ``train()`` runs the stage, returning (model, model
    folder, fields for DONE.json). DONE.json, written last, adds the model's dev metrics and
    sizes (`describe`). What is printed also goes to <folder>/log.txt; `note(summary)` adds
    words to the closing line. The returned model's ``folder`` is its model folder.
    """
    stage = StageFolder(name, folder, recipe, inputs)
    with console.logging_to(os.path.join(folder, LOG_FILE)):
        record = stage.finished()
        if record is not None:
            model_dir = model_folder(stage.folder)
            console.say(f"[{name}] already done ({os.path.join(stage.folder, DONE_FILE)}); model in {model_dir}")
            return load_model(model_dir, dtype_of(recipe), name), record
        stage.begin()
        console.say(f"[{name}] {recipe.task}: {announce} -> {folder}")
        try:
            model, model_dir, extra = train()
        except (CheckpointError, ConfigError, json.JSONDecodeError) as e:
            # A checkpoint, config.json or record it reads (its starting model's, or its own to resume from)
            # that is truncated or corrupt.
            raise UserError(f"[{name}] cannot read a file it needs: {' '.join(str(e).split())}") from None
        summary = describe(model, data.dev, recipe.task, recipe.training.eval_batch_size)
        record = stage.finish(model_dir, summary, extra)
        console.say(f"[{name}] done in {record['seconds']:.0f} s: {metric_line(summary)}; "
                    f"{note(summary) if note else ''}model in {model_dir}")
        model.folder = model_dir
        return model, record


def _saved_model_dir(folder, best_subdir, model, tokenizer_file):
    """The best checkpoint a trainer wrote, or the model saved to <folder>/model."""
    best = os.path.join(folder, best_subdir)
    if os.path.isfile(os.path.join(best, "model.safetensors")):
        return best
    target = os.path.join(folder, "model")
    model.save_pretrained(target, tokenizer_file)
    return target


# --------------------------------------------------------------------------- the four stages
def stage_finetune(recipe: Recipe, data, folder, pretrained, progress=True):
    """Stage 1: the fine-tuned teacher. Returns (model, DONE record)."""
    from ..stages import finetune

    def train():
        model, result = finetune(data, recipe.finetune, recipe.training, folder, pretrained, dtype_of(recipe), progress)
        return model, _saved_model_dir(folder, "best", model, data.tokenizer_file), {"result": result}

    return run_stage("finetune", recipe, data, folder, {"pretrained": pretrained},
                     f"fine-tuning {pretrained} on {len(data.train)} examples", train)


def stage_train_ta(recipe: Recipe, data, teacher, folder, pretrained, progress=True):
    """Stage 2: the multi-exit teacher-assistant. Returns (model, DONE record)."""
    from ..stages import train_ta

    def train():
        model, result = train_ta(data, teacher, recipe.ta, recipe.training, folder, pretrained, dtype_of(recipe),
                                 progress)
        return model, _saved_model_dir(folder, "best", model, data.tokenizer_file), {"result": result}

    return run_stage("train-ta", recipe, data, folder, {"teacher": teacher.folder, "pretrained": pretrained},
                     f"{pretrained} with an exit after every layer, distilled from {teacher.folder}", train)


def check_targets(config, recipe: Recipe):
    """The slenderization targets fit a model with `config` (a UserError otherwise)."""
    from ..stages import prune_schedule

    s = recipe.slenderize
    try:
        return prune_schedule(config, s.heads, s.ffn, s.rank)
    except (TypeError, ValueError) as e:
        raise UserError(f"slenderization targets (heads {s.heads}, ffn {s.ffn}, rank {s.rank}) "
                        f"do not fit the model ({max(config.heads_per_layer)} heads, FFN "
                        f"{max(config.intermediate_per_layer)}, d {config.hidden_size}): {e}") from None


def stage_slenderize(recipe: Recipe, data, start, teacher, folder, progress=True):
    """Stage 3: prune `start` (the TA) to the target widths, distilling from `teacher`."""
    from ..stages import slenderize

    schedule = check_targets(start.config, recipe)
    last = schedule[-1]

    def train():
        student, history = slenderize(start, teacher, data, recipe.slenderize, recipe.training, output_dir=folder,
                                      progress=progress)
        with open(os.path.join(folder, "metrics.jsonl"), "w", encoding="utf-8") as f:
            for h in history:
                rec = {k: v for k, v in h.items() if k != "train"}
                f.write(json.dumps({"type": "prune", **rec}, default=json_default) + "\n")
        model_dir = os.path.join(folder, "student")
        if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
            student.save_pretrained(model_dir, data.tokenizer_file)
        return student, model_dir, {"prunes": len(schedule)}

    return run_stage("slenderize", recipe, data, folder,
                     {"start": start.folder, "teacher": teacher.folder, "start_exits": start.config.exit_start},
                     f"{len(schedule)} prune(s) of {start.folder} to {last.heads_per_layer[0]} heads, FFN "
                     f"{last.intermediate_per_layer[0]}, embedding rank {last.embedding_rank or 'full'}, distilled "
                     f"from {teacher.folder}"
                     f"{' (importance from the last exit only)' if recipe.slenderize.last_exit_only else ''}",
                     train, note=lambda summary: f"{summary['parameters'] / 1e6:.2f}M parameters; ")


def stage_recover(recipe: Recipe, data, student, teacher, folder, progress=True):
    """Stage 4: recover the slender student by `hidden` then `pred` distillation."""
    from ..stages import recover

    def train():
        model, result = recover(student, teacher, data, recipe.recover, recipe.training, output_dir=folder,
                                progress=progress)
        _merge_metrics(folder, ("hidden", "pred"))
        return model, _saved_model_dir(folder, os.path.join("pred", "best"), model, data.tokenizer_file), \
            {"result": result}

    return run_stage("recover", recipe, data, folder, {"student": student.folder, "teacher": teacher.folder},
                     f"{student.folder} distilled from {teacher.folder}", train)


def _merge_metrics(folder, parts):
    """<folder>/metrics.jsonl: the records of the trainers in <folder>/<part>/, tagged with the part."""
    lines = []
    for part in parts:
        path = os.path.join(folder, part, "metrics.jsonl")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                lines += [json.dumps({**json.loads(line), "objective": part}) for line in f if line.strip()]
    from ..weights import write_text

    write_text(os.path.join(folder, "metrics.jsonl"), "".join(line + "\n" for line in lines))


def _with_folder(model, folder):
    model.folder = folder
    return model


# --------------------------------------------------------------------------- the whole recipe
def majority_score(dev, spec):
    """The dev score of always answering dev's most frequent class (None for a regression task
    or a metric other than accuracy)."""
    from ..metrics import main_metric

    if spec.num_labels < 2 or main_metric(spec.name) != "accuracy":
        return None
    labels = np.asarray(dev.labels).astype(np.int64)
    return float(np.bincount(labels).max() / len(labels))


def run_recipe(recipe: Recipe, output, glue_dir=None, progress=True, reuse=None) -> dict:
    """All stages of `recipe` into `output`; returns the summary (also written as summary.md/.json).

    `reuse`: a run folder whose finished teacher and TA this run links instead of training them."""
    from ..config import CostEffConfig
    from ..data.glue import get_task
    from ..surgery import attach_exits, only_final_exit

    if recipe.name in PRESETS_NEEDING_MODEL and recipe.data.model is None:
        raise UserError(f"the {recipe.name} preset needs --model pointing to a {recipe.name} checkpoint folder "
                        f"(config.json, model.safetensors, tokenizer.json)")
    pre = pretrained_dir(recipe.data.model)
    if recipe.use_slenderize:
        try:
            config = CostEffConfig.from_json(pre)
        except ValueError as e:                          # ConfigError: not a BERT config.json
            raise UserError(f"pretrained model {pre}: {e}") from None
        check_targets(config, recipe)
    os.makedirs(output, exist_ok=True)
    if reuse is not None:
        link_stages(reuse, output, recipe, ("teacher", "ta") if recipe.use_ta else ("teacher",))
    with console.logging_to(os.path.join(output, LOG_FILE)):
        write_json(os.path.join(output, "recipe.json"), recipe.to_dict())
        ablations = [name for name, on in (("no TA", not recipe.use_ta), ("no exits", not recipe.use_exits),
                                           ("no slenderization", not recipe.use_slenderize),
                                           ("importance from the last exit only",
                                            recipe.slenderize.last_exit_only)) if on]
        console.say(f"npcosteff run: recipe {recipe.name!r} on {recipe.task} with {pre}"
                    f"{' (' + ', '.join(ablations) + ')' if ablations else ''} -> {output}")
        clock = time.perf_counter()
        data = load_data(recipe, glue_dir, tokenizer_dir(pre))
        from ..data.sources import describe_source, glue_source
        held = (f", {len(data.heldout)} held out of training to choose checkpoints on" if data.heldout is not None
                else ", the last checkpoints kept")
        console.say(f"data: {len(data.train)} training and {len(data.dev)} dev examples of {recipe.task} from "
                    f"{describe_source(glue_source(glue_dir))}, {recipe.data.max_length} tokens at most{held}")
        spec = get_task(recipe.task)
        path = lambda name: os.path.join(output, name)

        teacher, rec = stage_finetune(recipe, data, path("teacher"), pre, progress)
        entries = [{"name": "teacher", "folder": model_folder(path("teacher")), **rec}]
        models = {"teacher": _with_folder(teacher, model_folder(path("teacher")))}
        if recipe.use_ta:
            ta, rec = stage_train_ta(recipe, data, models["teacher"], path("ta"), pre, progress)
            models["ta"] = _with_folder(ta, model_folder(path("ta")))
            entries.append({"name": "ta", "folder": models["ta"].folder, **rec})
        if recipe.use_slenderize:
            source = models["ta"] if recipe.use_ta else models["teacher"]      # what the student learns from
            if not recipe.use_exits:
                start = only_final_exit(source)             # ablation: a student with the final exit only
            elif recipe.use_ta:
                start = source                              # the paper: the student starts as a copy of the TA
            else:
                start = attach_exits(source, exit_start=1, seed=recipe.training.seed)   # ablation: no TA
            start.folder = source.folder
            slender, _ = stage_slenderize(recipe, data, start, source, path("slenderize"), progress)
            slender = _with_folder(slender, model_folder(path("slenderize")))
            student, rec = stage_recover(recipe, data, slender, source, path("recover"), progress)
            models["student"] = _with_folder(student, model_folder(path("recover")))
            entries.append({"name": "student", "folder": models["student"].folder, **rec})
        for m in models.values():
            if m.config.num_labels != spec.num_labels:      # a stage folder from another task
                raise UserError(f"model {m.folder} has {m.config.num_labels} outputs, {spec.name} needs "
                                f"{spec.num_labels}")

        curves, _ = sweep_models(models, data, recipe, path("sweep"), progress, plot=False)
        points = choose_operating_points(models, data, recipe, curves)
        png = plot_run(curves, points, recipe, path("sweep"))
        text, summary = build_summary(entries, recipe, curves, points, majority_score(data.dev, spec))
        summary.update({"sweep_png": png, "seconds": time.perf_counter() - clock})
        from ..weights import write_text
        write_text(path("summary.md"), f"# COST-EFF run: {recipe.name} on {recipe.task}\n\n" + text)
        write_json(path("summary.json"), summary)
        console.say("")
        console.say(text)
        console.say(f"summary: {path('summary.md')} and {path('summary.json')}")
        console.say(f"plot: {png}")
        console.say(f"total time: {summary['seconds']:.0f} s")
    return summary
