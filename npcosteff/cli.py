"""The ``npcosteff`` command line: each stage of the COST-EFF recipe (docs/method.md, 6) as a subcommand.

::

    npcosteff demo                                         # quick preset, SST-2, packaged MiniLM
    npcosteff run --preset quick --output runs/quick       # all stages from one recipe
    npcosteff run --config my_recipe.toml --no-ta          # ... with an ablation

    npcosteff finetune   --task sst2 --output runs/t/teacher
    npcosteff train-ta   --task sst2 --teacher runs/t/teacher --output runs/t/ta
    npcosteff slenderize --task sst2 --ta runs/t/ta --output runs/t/slenderize --heads 2 --ffn 256 --rank 64
    npcosteff recover    --task sst2 --student runs/t/slenderize --teacher runs/t/ta --output runs/t/recover
    npcosteff evaluate   --task sst2 --model runs/t/recover
    npcosteff sweep      --task sst2 --model ta=runs/t/ta --model student=runs/t/recover --output runs/t/sweep

Every stage writes one folder::

    <stage>/stage.json    the settings it runs with (a rerun with other settings is refused)
    <stage>/log.txt       what it printed, with times
    <stage>/metrics.jsonl training and dev records (npcosteff.train.Trainer)
    <stage>/best/ ...     checkpoints: config.json, model.safetensors, tokenizer.json
    <stage>/DONE.json     written last: the results and where the final model is

A model argument (``--teacher``, ``--ta``, ``--student``, ``--model``) is either a model folder
(config.json, model.safetensors) or a finished stage folder (its DONE.json names the model).
An interrupted stage resumes from its last checkpoint when the same command is run again; a
finished one (DONE.json) is skipped. ``run`` lays its stages out as::

    <output>/recipe.json  teacher/  ta/  slenderize/  recover/  sweep/  summary.md  summary.json  log.txt

GLUE comes from ``--glue-dir SOURCE``: a folder in GLUE's TSV layout, ``hub`` (``nyu-mll/glue``
through `datasets`) or ``shipped`` (the small GLUE slices inside the package). Without it,
``$NPCOSTEFF_GLUE_DIR`` decides when set, else the hub; ``demo`` runs on the shipped slices.

User errors (unknown task or preset, missing folder, a folder that is not a model, no data)
end with exit code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from typing import Optional

import numpy as np

from .recipe import PRESETS, PRESETS_NEEDING_MODEL, Recipe, RecipeError, default_thresholds, get_preset, \
    load_recipe, parse_override

__all__ = ["main", "build_parser", "UserError", "DONE_FILE", "STAGE_FILE", "LOG_FILE"]

DONE_FILE = "DONE.json"
STAGE_FILE = "stage.json"
LOG_FILE = "log.txt"
DEMO_OUTPUT = "npcosteff-demo"


class UserError(Exception):
    """A mistake in the command's input: reported as one line, exit code 2, no traceback."""


class DataUnavailable(UserError):
    """The GLUE task could not be loaded (no folder, no network, no cache, a slice too small).

    The message is one line and lists every way to get GLUE (`npcosteff.data.ways_to_get_glue`)."""

    def __init__(self, task, reason):
        self.task, self.reason = task, " ".join(str(reason).split())
        text = self.reason if self.reason.startswith("could not load GLUE") else \
            f"could not load GLUE task {task}: {self.reason}"
        super().__init__(text)


# --------------------------------------------------------------------------- console and logs
class Console:
    """Prints to stdout and appends the same lines, with the time, to the open log files."""

    def __init__(self):
        self.logs = []

    def say(self, text=""):
        print(text, flush=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for f in self.logs:
            for line in str(text).splitlines() or [""]:
                f.write(f"[{stamp}] {line}\n")
            f.flush()

    @contextlib.contextmanager
    def logging_to(self, path):
        """Also write to `path` (appended) inside the block."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        f = open(path, "a", encoding="utf-8")
        self.logs.append(f)
        try:
            yield
        finally:
            self.logs.remove(f)
            f.close()


console = Console()


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def _write_json(path, obj):
    from .weights import write_text

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); delete it to rerun that stage") from None


def _normalized(obj):
    """`obj` as it reads back from JSON (tuples -> lists, numpy -> Python), for comparisons."""
    return json.loads(json.dumps(obj, default=_json_default))


# --------------------------------------------------------------------------- models and data
def resolve_model_dir(path, what="model") -> str:
    """A model folder (config.json + model.safetensors), or the model named by a finished stage
    folder's DONE.json; a UserError naming the problem otherwise."""
    folder = os.fspath(path)
    if not os.path.exists(folder):
        raise UserError(f"{what} folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise UserError(f"{what} {folder!r} is not a folder")
    if os.path.isfile(os.path.join(folder, "config.json")):
        if not os.path.isfile(os.path.join(folder, "model.safetensors")):
            raise UserError(f"{what} folder {folder!r} has a config.json but no model.safetensors")
        return folder
    done = os.path.join(folder, DONE_FILE)
    if os.path.isfile(done):
        record = _read_json(done)
        if "model_dir" not in record:
            raise UserError(f"{done} names no model (no 'model_dir' key)")
        return resolve_model_dir(os.path.join(folder, record["model_dir"]), what)
    if os.path.isfile(os.path.join(folder, STAGE_FILE)):
        raise UserError(f"{what} folder {folder!r} is a stage that has not finished (no {DONE_FILE}): "
                        f"run its command again to resume it")
    raise UserError(f"{what} folder {folder!r} has no config.json: give a model folder (config.json, "
                    f"model.safetensors) or a finished stage folder (with {DONE_FILE})")


def load_model(path, dtype, what="model", task_spec=None, need_exits=True):
    """Load a CostEffModel from a model or stage folder, checked against the task."""
    from .config import ConfigError
    from .model import CostEffModel
    from .weights import CheckpointError

    folder = resolve_model_dir(path, what)
    try:
        model = CostEffModel.from_pretrained(folder, dtype=dtype)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        raise UserError(f"{what} folder {folder!r} cannot be loaded: {e}") from None
    if need_exits and model.config.num_labels == 0:
        raise UserError(f"{what} in {folder!r} has no classifier (num_labels = 0): it is a pretrained encoder, "
                        f"not a fine-tuned model")
    if task_spec is not None and need_exits and model.config.num_labels != task_spec.num_labels:
        raise UserError(f"{what} in {folder!r} has {model.config.num_labels} output(s), task {task_spec.name} "
                        f"needs {task_spec.num_labels}")
    model.folder = folder
    return model


def pretrained_dir(path) -> str:
    """The pretrained checkpoint folder (`path`, or the packaged MiniLM when None)."""
    from .pretrained import resolve_model_dir as resolve

    try:
        return resolve(path, required=("config.json", "model.safetensors"))
    except FileNotFoundError as e:
        raise UserError(f"pretrained model: {e}") from None


def tokenizer_dir(*candidates) -> str:
    """The first folder among `candidates` that holds a tokenizer.json."""
    for folder in candidates:
        if folder is not None and os.path.isfile(os.path.join(folder, "tokenizer.json")):
            return folder
    raise UserError(f"no tokenizer.json in {' or '.join(repr(c) for c in candidates if c is not None)}: "
                    f"copy the checkpoint's tokenizer.json (Hugging Face 'fast' tokenizer file) next to its weights")


def load_data(recipe: Recipe, glue_dir, tokenizer_folder, need_train=True):
    """Tokenized train and dev splits of the recipe's task (see npcosteff.pipeline.load_task_data).

    `glue_dir`: a folder in GLUE's TSV layout, "shipped", "hub", or None ($NPCOSTEFF_GLUE_DIR,
    else the hub); see `npcosteff.data.glue_source`. Without `need_train` only the dev split is
    read (evaluate, sweep): the returned TaskData has ``train=None``.
    """
    from .data.batching import encode_split
    from .data.glue import SliceTooSmall, get_task, glue_source, load_glue
    from .pipeline import TaskData, load_task_data
    from .tokenizer import Tokenizer

    try:
        source = glue_source(glue_dir, task=recipe.task)
        if need_train:
            return load_task_data(recipe.task, source, tokenizer_folder, recipe.max_length, recipe.max_train,
                                  recipe.max_eval)
        spec = get_task(recipe.task)
        tok = Tokenizer.from_pretrained(tokenizer_folder)
        split = "validation_matched" if spec.name == "mnli" else "validation"
        dev = encode_split(tok, load_glue(spec, split, source, recipe.max_eval), recipe.max_length)
        return TaskData(spec.name, spec.num_labels, spec.is_regression, None, dev,
                        os.path.join(tokenizer_folder, "tokenizer.json"))
    except (FileNotFoundError, RuntimeError, SliceTooSmall) as e:   # no folder / file / hub; a slice too small
        raise DataUnavailable(recipe.task, e) from None


def _dtype(recipe):
    return np.float32 if recipe.dtype == "float32" else np.float64


def _n_tokens(split):
    return np.array([len(x) for x in split.input_ids], dtype=np.int64)         # (N,)


def describe(model, dev, task, eval_batch_size=64) -> dict:
    """Dev metrics of every exit, parameters and mean FLOPs per dev sample of a model."""
    from .flops import count_parameters
    from .sweep import mean_flops
    from .train import evaluate

    result = evaluate(model, dev, task, eval_batch_size)
    n = _n_tokens(dev)
    c = model.config
    return {
        "dev": {"exits": {str(k): v for k, v in result["exits"].items()}, "average": result["average"],
                "final": result["final"], "main_metric": result["main_metric"]},
        "parameters": int(count_parameters(c)["total"]),
        "encoder_parameters": int(count_parameters(c, include_exits=False)["total"]),
        "flops_per_sample": mean_flops(c, n),
        "flops_to_exit": {str(i + 1): mean_flops(c, n, np.full(len(n), i + 1)) for i in c.exit_layers},
        "dev_examples": int(len(n)), "mean_tokens": float(n.mean()),
        "widths": {"num_hidden_layers": c.num_hidden_layers, "heads_per_layer": list(c.heads_per_layer),
                   "intermediate_per_layer": list(c.intermediate_per_layer),
                   "embedding_rank": c.embedding_rank, "exit_start": c.exit_start},
    }


def only_final_exit(model):
    """A copy of `model` with its last exit only (the `--no-exits` student)."""
    from .model import CostEffModel, param_shapes

    config = model.config.replace(exit_start=model.config.num_hidden_layers)
    return CostEffModel(config, {n: model.params[n].copy() for n in param_shapes(config)}, dtype=model.dtype)


# --------------------------------------------------------------------------- stage folders
# Recipe fields that change a stage's result (a finished stage reruns only with the same ones).
_DATA_KEYS = ("task", "max_length", "max_train", "max_eval", "dtype", "seed")
_TRAIN_KEYS = ("weight_decay", "warmup_proportion", "max_grad_norm", "temperature", "eval_every",
               "gradient_equilibrium", "regression_distill")
STAGE_KEYS = {
    "finetune": _DATA_KEYS + _TRAIN_KEYS + ("finetune_epochs", "finetune_learning_rate", "finetune_batch_size",
                                            "finetune_max_steps", "teacher_pooler"),
    "train-ta": _DATA_KEYS + _TRAIN_KEYS + ("ta_epochs", "ta_learning_rate", "ta_batch_size", "ta_max_steps",
                                            "ta_hidden_fraction", "ta_schedule", "pooler"),
    "slenderize": _DATA_KEYS + _TRAIN_KEYS + ("heads", "ffn", "rank", "prune_period", "repr_proportion",
                                              "prune_learning_rate", "lr_restore", "prune_batch_size",
                                              "importance_examples", "last_exit_only", "prune_timing",
                                              "min_warmup_steps", "importance_hidden_loss", "last_exit_hard"),
    "recover": _DATA_KEYS + _TRAIN_KEYS + ("recover_hidden_epochs", "recover_pred_epochs",
                                           "recover_hidden_learning_rate", "recover_pred_learning_rate",
                                           "recover_batch_size", "recover_hidden_max_steps",
                                           "recover_pred_max_steps"),
}


class StageFolder:
    """One stage's folder: its settings, its log, its DONE.json (see the module docstring)."""

    def __init__(self, stage, folder, recipe: Recipe, inputs: dict):
        self.stage, self.folder = stage, os.fspath(folder)
        self.settings = _normalized({"stage": stage, "inputs": {k: self._where(v) for k, v in inputs.items()},
                                     "recipe": {k: getattr(recipe, k) for k in STAGE_KEYS[stage]}})
        self.clock = None

    def _where(self, value):
        """An input as recorded: folders inside the run folder (the stage's parent) relative to the
        stage, so that a moved run folder still matches; other folders absolute; numbers as they are."""
        if not isinstance(value, (str, os.PathLike)):
            return value
        path, run = os.path.abspath(value), os.path.dirname(os.path.abspath(self.folder))
        return os.path.relpath(path, os.path.abspath(self.folder)) if path.startswith(run + os.sep) else path

    def _compare(self, recorded, what):
        if recorded == self.settings:
            return
        diffs = []
        for part in ("stage", "inputs", "recipe"):
            old, new = recorded.get(part), self.settings[part]
            if isinstance(new, dict) and isinstance(old, dict):
                diffs += [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in new if old.get(k) != new.get(k)]
            elif old != new:
                diffs.append(f"{part}: {old!r} there, {new!r} now")
        raise UserError(f"{self.folder} holds {what} with other settings ({'; '.join(diffs) or 'format'}): "
                        f"give another output folder or delete this one")

    def finished(self) -> Optional[dict]:
        """The DONE.json record when this stage already ran to the end with these settings."""
        path = os.path.join(self.folder, DONE_FILE)
        if not os.path.isfile(path):
            return None
        record = _read_json(path)
        self._compare(record.get("settings", {}), f"a finished {self.stage} run")
        return record

    def begin(self):
        """Check or write stage.json (an interrupted run resumes only with the same settings)."""
        path = os.path.join(self.folder, STAGE_FILE)
        if os.path.isfile(path):
            self._compare(_read_json(path), f"an unfinished {self.stage} run")
        else:
            _write_json(path, self.settings)
        self.clock = time.perf_counter()

    def finish(self, model_dir, summary: dict, extra=None) -> dict:
        """Write DONE.json: settings, where the model is (relative), its dev metrics and sizes."""
        record = {"stage": self.stage, "model_dir": os.path.relpath(model_dir, self.folder),
                  "settings": self.settings, "seconds": time.perf_counter() - self.clock,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary, **(extra or {})}
        _write_json(os.path.join(self.folder, DONE_FILE), record)
        return record


def _metric_line(summary) -> str:
    dev = summary["dev"]
    exits = dev["exits"]
    name = dev["main_metric"]
    if len(exits) == 1:
        (layer, m), = exits.items()
        return f"dev {name} {100 * m[name]:.1f} (exit {layer})"
    return (f"dev {name} averaged over {len(exits)} exits {100 * dev['average']:.1f}, "
            f"last exit {100 * dev['final']:.1f}")


def _skip_or_begin(stage: StageFolder, dtype):
    """(model, record) of a finished stage, or None after marking the stage as started."""
    record = stage.finished()
    if record is not None:
        folder = resolve_model_dir(stage.folder)
        console.say(f"[{stage.stage}] already done ({os.path.join(stage.folder, DONE_FILE)}); model in {folder}")
        return load_model(folder, dtype, stage.stage), record
    stage.begin()
    return None


def _saved_model_dir(folder, best_subdir, model, tokenizer_file):
    """The best checkpoint a trainer wrote, or the model saved to <folder>/model."""
    best = os.path.join(folder, best_subdir)
    if os.path.isfile(os.path.join(best, "model.safetensors")):
        return best
    target = os.path.join(folder, "model")
    model.save_pretrained(target, tokenizer_file)
    return target


def stage_finetune(recipe: Recipe, data, folder, pretrained, progress=True):
    """Stage 1: the fine-tuned teacher. Returns (model, DONE record)."""
    from .pipeline import finetune

    stage = StageFolder("finetune", folder, recipe, {"pretrained": pretrained})
    with console.logging_to(os.path.join(folder, LOG_FILE)):
        done = _skip_or_begin(stage, _dtype(recipe))
        if done:
            return done
        console.say(f"[finetune] {recipe.task}: fine-tuning {pretrained} on {len(data.train)} examples "
                    f"-> {folder}")
        model, result = finetune(data, recipe.finetune_arguments(progress), folder, pretrained, _dtype(recipe),
                                 pooler=recipe.teacher_pooler)
        model_dir = _saved_model_dir(folder, "best", model, data.tokenizer_file)
        summary = describe(model, data.dev, recipe.task, recipe.eval_batch_size)
        record = stage.finish(model_dir, summary, {"result": result})
        console.say(f"[finetune] done in {record['seconds']:.0f} s: {_metric_line(summary)}; model in {model_dir}")
        return model, record


def stage_train_ta(recipe: Recipe, data, teacher, folder, pretrained, progress=True):
    """Stage 2: the multi-exit teacher-assistant. Returns (model, DONE record)."""
    from .pipeline import train_ta

    stage = StageFolder("train-ta", folder, recipe, {"teacher": teacher.folder, "pretrained": pretrained})
    with console.logging_to(os.path.join(folder, LOG_FILE)):
        done = _skip_or_begin(stage, _dtype(recipe))
        if done:
            return done
        console.say(f"[train-ta] {recipe.task}: {pretrained} with an exit after every layer, distilled from "
                    f"{teacher.folder} -> {folder}")
        model, result = train_ta(data, teacher, recipe.ta_arguments(progress), folder, pretrained,
                                 recipe.ta_hidden_fraction, _dtype(recipe), pooler=recipe.pooler,
                                 schedule=recipe.ta_schedule)
        model_dir = _saved_model_dir(folder, "best", model, data.tokenizer_file)
        summary = describe(model, data.dev, recipe.task, recipe.eval_batch_size)
        record = stage.finish(model_dir, summary, {"result": result})
        console.say(f"[train-ta] done in {record['seconds']:.0f} s: {_metric_line(summary)}; model in {model_dir}")
        return model, record


def check_targets(config, recipe: Recipe):
    """The slenderization targets fit a model with `config` (a UserError otherwise)."""
    from .slenderize import prune_schedule

    try:
        return prune_schedule(config, recipe.heads, recipe.ffn, recipe.rank)
    except (TypeError, ValueError) as e:
        raise UserError(f"slenderization targets (heads {recipe.heads}, ffn {recipe.ffn}, rank {recipe.rank}) "
                        f"do not fit the model ({max(config.heads_per_layer)} heads, FFN "
                        f"{max(config.intermediate_per_layer)}, d {config.hidden_size}): {e}") from None


def stage_slenderize(recipe: Recipe, data, start, teacher, folder, progress=True):
    """Stage 3: prune `start` (the TA) to the target widths, distilling from `teacher`."""
    from .slenderize import slenderize

    schedule = check_targets(start.config, recipe)
    stage = StageFolder("slenderize", folder, recipe, {"start": start.folder, "teacher": teacher.folder,
                                                       "start_exits": start.config.exit_start})
    with console.logging_to(os.path.join(folder, LOG_FILE)):
        done = _skip_or_begin(stage, _dtype(recipe))
        if done:
            return done
        last = schedule[-1]
        console.say(f"[slenderize] {recipe.task}: {len(schedule)} prune(s) of {start.folder} to "
                    f"{last.heads_per_layer[0]} heads, FFN {last.intermediate_per_layer[0]}, embedding rank "
                    f"{last.embedding_rank or 'full'}, distilled from {teacher.folder}"
                    f"{' (importance from the last exit only)' if recipe.last_exit_only else ''} -> {folder}")
        student, history = slenderize(start, teacher, data.train, data.dev, recipe.slenderize_arguments(progress),
                                      output_dir=folder, tokenizer_file=data.tokenizer_file)
        with open(os.path.join(folder, "metrics.jsonl"), "w", encoding="utf-8") as f:
            for h in history:
                rec = {k: v for k, v in h.items() if k != "train"}
                f.write(json.dumps({"type": "prune", **rec}, default=_json_default) + "\n")
        model_dir = os.path.join(folder, "student")
        if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
            student.save_pretrained(model_dir, data.tokenizer_file)
        summary = describe(student, data.dev, recipe.task, recipe.eval_batch_size)
        record = stage.finish(model_dir, summary, {"prunes": len(schedule)})
        console.say(f"[slenderize] done in {record['seconds']:.0f} s: {_metric_line(summary)}; "
                    f"{summary['parameters'] / 1e6:.2f}M parameters; model in {model_dir}")
        student.folder = model_dir
        return student, record


def stage_recover(recipe: Recipe, data, student, teacher, folder, progress=True):
    """Stage 4: recover the slender student by `hidden` then `pred` distillation."""
    from .slenderize import recover

    stage = StageFolder("recover", folder, recipe, {"student": student.folder, "teacher": teacher.folder})
    with console.logging_to(os.path.join(folder, LOG_FILE)):
        done = _skip_or_begin(stage, _dtype(recipe))
        if done:
            return done
        console.say(f"[recover] {recipe.task}: {student.folder} distilled from {teacher.folder} -> {folder}")
        model, result = recover(student, teacher, data.train, data.dev, recipe.recover_arguments(progress),
                                output_dir=folder, tokenizer_file=data.tokenizer_file)
        _merge_metrics(folder, ("hidden", "pred"))
        model_dir = _saved_model_dir(folder, os.path.join("pred", "best"), model, data.tokenizer_file)
        summary = describe(model, data.dev, recipe.task, recipe.eval_batch_size)
        record = stage.finish(model_dir, summary, {"result": result})
        console.say(f"[recover] done in {record['seconds']:.0f} s: {_metric_line(summary)}; model in {model_dir}")
        return model, record


def _merge_metrics(folder, parts):
    """<folder>/metrics.jsonl: the records of the trainers in <folder>/<part>/, tagged with the part."""
    lines = []
    for part in parts:
        path = os.path.join(folder, part, "metrics.jsonl")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                lines += [json.dumps({**json.loads(line), "stage": part}) for line in f if line.strip()]
    from .weights import write_text

    write_text(os.path.join(folder, "metrics.jsonl"), "".join(line + "\n" for line in lines))


def _with_folder(model, folder):
    model.folder = folder
    return model


# --------------------------------------------------------------------------- sweep and summary
def sweep_models(models: dict, data, recipe: Recipe, folder, progress=True, thresholds=None, criterion=None):
    """Early-exit sweep of each model on dev: <folder>/<name>.csv/.json and <folder>/sweep.png.

    Returns (curves: name -> rows, png path). A model with one exit leaves at its last layer
    whatever the threshold, so its sweep is run once and repeated for every threshold."""
    from .data.batching import iterate_batches
    from .metrics import main_metric
    from .sweep import plot_sweeps, threshold_sweep, write_sweep

    thresholds = list(recipe.thresholds if thresholds is None else thresholds)
    criterion = criterion or recipe.criterion
    batches = list(iterate_batches(data.dev, data.dev.labels, recipe.eval_batch_size, sort_by_length=True))
    labels = np.concatenate([b["labels"] for b in batches])                  # (N,) in batch order
    curves = {}
    for name, model in models.items():
        one_exit = len(model.config.exit_layers) == 1
        try:
            rows = threshold_sweep(model, batches, labels, recipe.task, thresholds[:1] if one_exit else thresholds,
                                   criterion=criterion, progress=progress)
        except ValueError as e:                      # e.g. entropy on a regression model
            raise UserError(f"sweep of {name}: {e}") from None
        if one_exit:
            key = "patience" if criterion == "patience" else "threshold"
            rows = [{**rows[0], key: (int(t) if criterion == "patience" else float(t))} for t in thresholds]
        curves[name] = rows
        paths = write_sweep(rows, folder, name)
        console.say(f"[sweep] {name}: {paths['csv']}, {paths['json']}")
    png = plot_sweeps(curves, os.path.join(folder, "sweep.png"), metric_name=f"dev {main_metric(recipe.task)}",
                      title=f"{recipe.task}: early exit ({criterion})")
    return curves, png


def _fmt_count(n) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _fmt_threshold(t, criterion) -> str:
    return f"{int(t)}" if criterion == "patience" else f"{t:g}"


def build_summary(entries: list, recipe: Recipe, curves: dict) -> tuple:
    """The run's summary as (markdown, JSON-ready dict).

    `entries`: dicts with ``name``, ``folder`` and the stage's describe() record. For each model:
    dev metric per exit and averaged, parameters, mean FLOPs per dev sample, and at a few
    thresholds the dev metric, the layer speed-up ``L N / sum(exit layers)``, the FLOPs
    reduction relative to the teacher's full forward pass, and the measured speed-up: the
    teacher's wall-clock time per dev sample in the sweep over this model's at that threshold."""
    from .metrics import main_metric

    key = main_metric(recipe.task)
    L = max(e["widths"]["num_hidden_layers"] for e in entries)
    reference = entries[0]["flops_per_sample"]                 # the teacher's full forward pass
    teacher_rows = curves.get(entries[0]["name"], [])
    reference_ms = teacher_rows[0]["ms_per_sample"] if teacher_rows else None   # its timed sweep pass
    shown = recipe.summary_threshold_values()
    head = ["model", "params", "FLOPs/sample"] + [f"exit {l}" for l in range(1, L + 1)] + ["avg"]
    head += [f"{recipe.criterion} {_fmt_threshold(t, recipe.criterion)}" for t in shown]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    models = []
    for e in entries:
        exits = e["dev"]["exits"]
        row = [e["name"], _fmt_count(e["parameters"]), _fmt_count(e["flops_per_sample"])]
        row += [f"{100 * exits[str(l)][key]:.1f}" if str(l) in exits else "-" for l in range(1, L + 1)]
        row.append(f"{100 * e['dev']['average']:.1f}")
        at = {}
        for t in shown:
            match = [r for r in curves.get(e["name"], [])
                     if math.isclose(r["patience"] if recipe.criterion == "patience" else r["threshold"], t)]
            if not match:
                row.append("-")
                continue
            r = match[0]
            reduction = reference / r["flops_per_sample"]
            measured = reference_ms / r["ms_per_sample"] if reference_ms and r.get("ms_per_sample") else None
            row.append(f"{100 * r['metric']:.1f} @ {r['expected_speedup']:.2f}x, 1/{reduction:.1f} FLOPs"
                       + (f", {measured:.2f}x time" if measured else ""))
            at[_fmt_threshold(t, recipe.criterion)] = {
                "metric": r["metric"], "expected_speedup": r["expected_speedup"], "measured_speedup": measured,
                "ms_per_sample": r.get("ms_per_sample"),
                "flops_per_sample": r["flops_per_sample"], "flops_reduction_vs_teacher": reduction,
                "mean_exit_layer": r["mean_exit_layer"]}
        lines.append("| " + " | ".join(row) + " |")
        models.append({"name": e["name"], "folder": e["folder"], "parameters": e["parameters"],
                       "encoder_parameters": e["encoder_parameters"], "flops_per_sample": e["flops_per_sample"],
                       "flops_reduction_vs_teacher": reference / e["flops_per_sample"],
                       "dev": e["dev"], "widths": e["widths"], "early_exit": at})
    n = entries[0]["dev_examples"]
    legend = (f"Dev {key} (%) of {recipe.task} ({n} examples) at each exit and averaged over exits; parameters "
              f"with exits; FLOPs: mean analytic FLOPs per dev example through every layer and exit. Columns "
              f"'{recipe.criterion} t': dev {key} with early exit at threshold t @ layer speed-up "
              f"L*N/sum(exit layers), FLOPs relative to the teacher's full forward pass, and the measured "
              f"speed-up: wall-clock time per dev example of the teacher's forward pass over this model's with early "
              f"exit (batches of {recipe.eval_batch_size}, timed once during the sweep).")
    text = "\n".join(lines) + "\n\n" + legend + "\n"
    return text, {"task": recipe.task, "main_metric": key, "criterion": recipe.criterion,
                  "summary_thresholds": list(shown), "models": models, "recipe": recipe.to_dict()}


# --------------------------------------------------------------------------- commands
def _recipe_from_args(args, base: Optional[Recipe] = None) -> Recipe:
    """The recipe: --preset / --config (or `base`), then --task, --model, caps and --set."""
    if getattr(args, "preset", None) and getattr(args, "config", None):
        raise UserError("give either --preset or --config, not both")
    try:
        if getattr(args, "config", None):
            recipe = load_recipe(args.config)
        elif getattr(args, "preset", None):
            recipe = get_preset(args.preset)
        else:
            recipe = base or Recipe()
        changes = {}
        for key in ("task", "max_length", "max_train", "max_eval", "seed", "dtype", "eval_batch_size"):
            value = getattr(args, key, None)
            if value is not None:
                changes[key] = value
        if getattr(args, "pretrained", None) is not None:
            changes["model"] = args.pretrained
        for text in getattr(args, "set", None) or []:
            k, v = parse_override(text)
            changes[k] = v
        return recipe.replace(**changes) if changes else recipe
    except RecipeError as e:
        raise UserError(str(e)) from None


def _apply(recipe: Recipe, args, mapping: dict) -> Recipe:
    """Copy the command-line options that were given (not None) into recipe fields."""
    changes = {field: getattr(args, opt) for opt, field in mapping.items() if getattr(args, opt, None) is not None}
    try:
        return recipe.replace(**changes) if changes else recipe
    except RecipeError as e:
        raise UserError(str(e)) from None


def _stage_map(prefix):
    return {"epochs": f"{prefix}_epochs", "learning_rate": f"{prefix}_learning_rate",
            "batch_size": f"{prefix}_batch_size", "max_steps": f"{prefix}_max_steps"}


def cmd_finetune(args):
    recipe = _apply(_recipe_from_args(args), args, _stage_map("finetune"))
    pre = pretrained_dir(recipe.model)
    data = load_data(recipe, args.glue_dir, tokenizer_dir(pre))
    stage_finetune(recipe, data, args.output, pre, progress=not args.no_progress)
    console.say(f"outputs: {args.output}")


def cmd_train_ta(args):
    recipe = _apply(_recipe_from_args(args), args, {**_stage_map("ta"), "hidden_fraction": "ta_hidden_fraction"})
    pre = pretrained_dir(recipe.model)
    from .data.glue import get_task
    teacher = load_model(args.teacher, _dtype(recipe), "teacher", get_task(recipe.task))
    data = load_data(recipe, args.glue_dir, tokenizer_dir(teacher.folder, pre))
    stage_train_ta(recipe, data, teacher, args.output, pre, progress=not args.no_progress)
    console.say(f"outputs: {args.output}")


_SLENDER_MAP = {"heads": "heads", "ffn": "ffn", "rank": "rank", "prune_period": "prune_period",
                "repr_proportion": "repr_proportion", "learning_rate": "prune_learning_rate",
                "lr_restore": "lr_restore", "batch_size": "prune_batch_size",
                "importance_examples": "importance_examples"}


def cmd_slenderize(args):
    recipe = _apply(_recipe_from_args(args), args, _SLENDER_MAP)
    if args.last_exit_only:
        recipe = recipe.replace(last_exit_only=True)
    from .data.glue import get_task
    ta = load_model(args.ta, _dtype(recipe), "TA", get_task(recipe.task))
    teacher = ta if args.teacher is None else load_model(args.teacher, _dtype(recipe), "teacher",
                                                         get_task(recipe.task))
    check_targets(ta.config, recipe)
    data = load_data(recipe, args.glue_dir, tokenizer_dir(ta.folder))
    stage_slenderize(recipe, data, ta, teacher, args.output, progress=not args.no_progress)
    console.say(f"outputs: {args.output}")


_RECOVER_MAP = {"hidden_epochs": "recover_hidden_epochs", "pred_epochs": "recover_pred_epochs",
                "hidden_learning_rate": "recover_hidden_learning_rate",
                "pred_learning_rate": "recover_pred_learning_rate", "hidden_max_steps": "recover_hidden_max_steps",
                "pred_max_steps": "recover_pred_max_steps", "batch_size": "recover_batch_size"}


def cmd_recover(args):
    recipe = _apply(_recipe_from_args(args), args, _RECOVER_MAP)
    from .data.glue import get_task
    student = load_model(args.student, _dtype(recipe), "student", get_task(recipe.task))
    teacher = load_model(args.teacher, _dtype(recipe), "teacher", get_task(recipe.task))
    data = load_data(recipe, args.glue_dir, tokenizer_dir(student.folder, teacher.folder))
    stage_recover(recipe, data, student, teacher, args.output, progress=not args.no_progress)
    console.say(f"outputs: {args.output}")


def cmd_evaluate(args):
    recipe = _recipe_from_args(args)
    from .data.glue import get_task
    model = load_model(args.model, _dtype(recipe), "model", get_task(recipe.task))
    data = load_data(recipe, args.glue_dir, tokenizer_dir(model.folder), need_train=False)
    summary = describe(model, data.dev, recipe.task, recipe.eval_batch_size)
    c = model.config
    metrics = list(next(iter(summary["dev"]["exits"].values())))
    console.say(f"model {model.folder}: {c.num_hidden_layers} layers, heads {c.heads_per_layer}, FFN "
                f"{c.intermediate_per_layer}, embedding rank {c.embedding_rank or 'full'}")
    console.say(f"parameters: {summary['parameters']:,} ({summary['encoder_parameters']:,} without exits)")
    console.say(f"dev: {summary['dev_examples']} examples of {recipe.task}, {summary['mean_tokens']:.1f} tokens "
                f"on average; FLOPs per example through every layer and exit: "
                f"{_fmt_count(summary['flops_per_sample'])}")
    console.say("| exit | " + " | ".join(metrics) + " | FLOPs/example to this exit |")
    console.say("|---" * (len(metrics) + 2) + "|")
    for layer, m in summary["dev"]["exits"].items():
        console.say(f"| {layer} | " + " | ".join(f"{100 * m[k]:.2f}" for k in metrics) +
                    f" | {_fmt_count(summary['flops_to_exit'][layer])} |")
    console.say(f"{summary['dev']['main_metric']} averaged over exits: {100 * summary['dev']['average']:.2f}")
    if args.json:
        _write_json(args.json, {"model": model.folder, "task": recipe.task, **summary})
        console.say(f"written: {args.json}")


_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _named_models(specs):
    named = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep:
            folder, name = spec, os.path.basename(os.path.normpath(spec))
        if not _NAME.match(name):
            raise UserError(f"model name {name!r} (in {spec!r}) may only use letters, digits, '.', '_' and '-'")
        if name in named:
            raise UserError(f"model name {name!r} is given twice")
        named[name] = folder
    return named


def cmd_sweep(args):
    recipe = _recipe_from_args(args)
    from .data.glue import get_task
    criterion = args.criterion or recipe.criterion
    thresholds = args.thresholds if args.thresholds else (
        recipe.thresholds if criterion == recipe.criterion else default_thresholds(criterion))
    try:
        recipe = recipe.replace(criterion=criterion, thresholds=tuple(thresholds), summary_thresholds=())
    except RecipeError as e:
        raise UserError(str(e)) from None
    models = {name: load_model(folder, _dtype(recipe), f"model {name}", get_task(recipe.task))
              for name, folder in _named_models(args.model).items()}
    first = next(iter(models.values()))
    data = load_data(recipe, args.glue_dir, tokenizer_dir(first.folder), need_train=False)
    with console.logging_to(os.path.join(args.output, LOG_FILE)):
        curves, png = sweep_models(models, data, recipe, args.output, progress=not args.no_progress)
        for name, rows in curves.items():
            console.say(f"{name}:")
            console.say(_sweep_table(rows, recipe.criterion))
        console.say(f"plot: {png}")


def _sweep_table(rows, criterion) -> str:
    key = "patience" if criterion == "patience" else "threshold"
    out = [f"  {key:>9} | metric | mean exit | speed-up | FLOPs/example | ms/example"]
    for r in rows:
        out.append(f"  {r[key]:>9g} | {100 * r['metric']:6.2f} | {r['mean_exit_layer']:9.2f} | "
                   f"{r['expected_speedup']:7.2f}x | {_fmt_count(r['flops_per_sample']):>13} | "
                   f"{r['ms_per_sample']:.2f}")
    return "\n".join(out)


def _check_ablations(args):
    if args.no_slenderize and args.no_exits:
        raise UserError("--no-exits shapes the slender student, and --no-slenderize trains none")
    if args.no_slenderize and args.last_exit_only:
        raise UserError("--last-exit-only changes the slenderization's importance, and --no-slenderize skips it")
    if args.no_slenderize and args.no_ta:
        raise UserError("--no-ta with --no-slenderize would train only the fine-tuned teacher")


def link_stages(source, output, stages=("teacher", "ta")) -> None:
    """Link the finished `stages` of run folder `source` into the existing run folder `output`
    (relative symbolic links), so that another student (other widths, an ablation) reuses its
    teacher and TA. A stage whose settings differ from the new recipe's is refused when the run
    reads it, as any stage folder is."""
    source, output = os.path.abspath(source), os.path.abspath(output)
    if source == output:
        raise UserError("--reuse names the run folder itself")
    for stage in stages:
        src, dst = os.path.join(source, stage), os.path.join(output, stage)
        if not os.path.isfile(os.path.join(src, DONE_FILE)):
            raise UserError(f"--reuse {source}: its {stage} stage has not finished (no {os.path.join(src, DONE_FILE)})")
        if os.path.lexists(dst):
            if os.path.islink(dst) and os.path.realpath(dst) == os.path.realpath(src):
                continue                                   # linked by an earlier, interrupted run
            raise UserError(f"--reuse: {dst} exists already; give a new output folder")
        os.symlink(os.path.relpath(src, output), dst, target_is_directory=True)


def run_recipe(recipe: Recipe, output, glue_dir=None, progress=True, reuse=None) -> dict:
    """All stages of `recipe` into `output`; returns the summary (also written as summary.md/.json).

    `reuse`: a run folder whose finished teacher and TA this run links instead of training them."""
    from .config import CostEffConfig
    from .data.glue import get_task
    from .pipeline import attach_exits

    if recipe.name in PRESETS_NEEDING_MODEL and recipe.model is None:
        raise UserError(f"the {recipe.name} preset needs --model pointing to a {recipe.name} checkpoint folder "
                        f"(config.json, model.safetensors, tokenizer.json)")
    pre = pretrained_dir(recipe.model)
    dtype = _dtype(recipe)
    if recipe.use_slenderize:
        try:
            config = CostEffConfig.from_json(pre)
        except ValueError as e:                          # ConfigError: not a BERT config.json
            raise UserError(f"pretrained model {pre}: {e}") from None
        check_targets(config, recipe)
    os.makedirs(output, exist_ok=True)
    if reuse is not None:
        link_stages(reuse, output, ("teacher", "ta") if recipe.use_ta else ("teacher",))
    with console.logging_to(os.path.join(output, LOG_FILE)):
        _write_json(os.path.join(output, "recipe.json"), recipe.to_dict())
        ablations = [name for name, on in (("no TA", not recipe.use_ta), ("no exits", not recipe.use_exits),
                                           ("no slenderization", not recipe.use_slenderize),
                                           ("importance from the last exit only", recipe.last_exit_only)) if on]
        console.say(f"npcosteff run: recipe {recipe.name!r} on {recipe.task} with {pre}"
                    f"{' (' + ', '.join(ablations) + ')' if ablations else ''} -> {output}")
        clock = time.perf_counter()
        data = load_data(recipe, glue_dir, tokenizer_dir(pre))
        from .data.glue import describe_source, glue_source
        console.say(f"data: {len(data.train)} training and {len(data.dev)} dev examples of {recipe.task} from "
                    f"{describe_source(glue_source(glue_dir))}, {recipe.max_length} tokens at most")
        spec = get_task(recipe.task)
        path = lambda name: os.path.join(output, name)

        teacher, rec = stage_finetune(recipe, data, path("teacher"), pre, progress)
        entries = [{"name": "teacher", "folder": resolve_model_dir(path("teacher")), **rec}]
        models = {"teacher": _with_folder(teacher, resolve_model_dir(path("teacher")))}
        if recipe.use_ta:
            ta, rec = stage_train_ta(recipe, data, models["teacher"], path("ta"), pre, progress)
            models["ta"] = _with_folder(ta, resolve_model_dir(path("ta")))
            entries.append({"name": "ta", "folder": models["ta"].folder, **rec})
        if recipe.use_slenderize:
            source = models["ta"] if recipe.use_ta else models["teacher"]      # what the student learns from
            if not recipe.use_exits:
                start = only_final_exit(source)             # ablation: a student with the final exit only
            elif recipe.use_ta:
                start = source                              # the paper: the student starts as a copy of the TA
            else:
                start = attach_exits(source, exit_start=1, seed=recipe.seed)   # ablation: no TA
            start.folder = source.folder
            slender, _ = stage_slenderize(recipe, data, start, source, path("slenderize"), progress)
            slender = _with_folder(slender, resolve_model_dir(path("slenderize")))
            student, rec = stage_recover(recipe, data, slender, source, path("recover"), progress)
            models["student"] = _with_folder(student, resolve_model_dir(path("recover")))
            entries.append({"name": "student", "folder": models["student"].folder, **rec})
        for m in models.values():
            if m.config.num_labels != spec.num_labels:      # a stage folder from another task
                raise UserError(f"model {m.folder} has {m.config.num_labels} outputs, {spec.name} needs "
                                f"{spec.num_labels}")

        curves, png = sweep_models(models, data, recipe, path("sweep"), progress)
        text, summary = build_summary(entries, recipe, curves)
        summary.update({"sweep_png": png, "seconds": time.perf_counter() - clock})
        from .weights import write_text
        write_text(path("summary.md"), f"# COST-EFF run: {recipe.name} on {recipe.task}\n\n" + text)
        _write_json(path("summary.json"), summary)
        console.say("")
        console.say(text)
        console.say(f"summary: {path('summary.md')} and {path('summary.json')}")
        console.say(f"plot: {png}")
        console.say(f"total time: {summary['seconds']:.0f} s")
    return summary


def cmd_run(args):
    if not args.preset and not args.config:
        raise UserError("give a recipe: --preset NAME (one of " + ", ".join(PRESETS) + ") or --config FILE")
    _check_ablations(args)
    recipe = _recipe_from_args(args)
    changes = {}
    if args.no_ta:
        changes["use_ta"] = False
    if args.no_exits:
        changes["use_exits"] = False
    if args.no_slenderize:
        changes["use_slenderize"] = False
    if args.last_exit_only:
        changes["last_exit_only"] = True
    if changes:
        recipe = recipe.replace(**changes)
    output = args.output or os.path.join("runs", f"{recipe.name}-{recipe.task}")
    run_recipe(recipe, output, args.glue_dir, progress=not args.no_progress, reuse=args.reuse)


def cmd_demo(args):
    recipe = get_preset("quick")
    try:
        recipe = recipe.replace(**dict(parse_override(s) for s in args.set or []))
    except RecipeError as e:
        raise UserError(str(e)) from None
    from .data.glue import SHIPPED, SliceTooSmall, describe_source, get_task, glue_source, is_shipped, load_glue
    spec = get_task(recipe.task)
    try:
        # --glue-dir, else $NPCOSTEFF_GLUE_DIR, else the slices in the package: runs offline.
        source = glue_source(args.glue_dir, default=SHIPPED, task=spec)
        # Read the data first: without it there is nothing to show, and the error says how to get it.
        for split, n in (("train", recipe.max_train), ("validation", recipe.max_eval)):
            load_glue(spec, split, source, n)
    except (FileNotFoundError, RuntimeError, SliceTooSmall) as e:
        raise DataUnavailable(spec.name, e) from None
    if is_shipped(source):
        where = (f"on {describe_source(source)} ({recipe.max_train} training and {recipe.max_eval} dev "
                 f"sentences; full GLUE: --glue-dir FOLDER, --glue-dir hub or NPCOSTEFF_GLUE_DIR)")
    else:
        where = f"on GLUE from {describe_source(source)}"
    console.say(f"npcosteff demo: the quick recipe on {spec.tsv_folder} with the packaged MiniLM, {where}")
    run_recipe(recipe, args.output, source, progress=not args.no_progress)
    return 0


# --------------------------------------------------------------------------- parser
GLUE_DIR_HELP = ("where GLUE comes from: a folder in GLUE's TSV layout, 'hub' (nyu-mll/glue through datasets) or "
                 "'shipped' (the small GLUE slices in the package; default: $NPCOSTEFF_GLUE_DIR, else the hub)")


def _data_options(p, task_required=True):
    g = p.add_argument_group("data")
    g.add_argument("--task", required=task_required, help="GLUE task: sst2, mrpc, stsb, cola, qqp, mnli, qnli, rte, "
                                                          "wnli (GLUE folder names such as SST-2 work too)")
    g.add_argument("--glue-dir", metavar="SOURCE", help=GLUE_DIR_HELP)
    g.add_argument("--max-length", type=int, help="tokens per example (recipe default 128)")
    g.add_argument("--max-train", type=int, help="keep the first N training examples")
    g.add_argument("--max-eval", type=int, help="keep the first N dev examples")
    g.add_argument("--eval-batch-size", type=int)


def _recipe_options(p):
    g = p.add_argument_group("recipe (defaults: the paper's BERT-base settings)")
    g.add_argument("--preset", help=f"start from a preset recipe: {', '.join(PRESETS)}")
    g.add_argument("--config", help="start from a recipe file (.json or .toml)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any recipe field, e.g. --set warmup_proportion=0.06 (repeatable)")
    g.add_argument("--seed", type=int)
    g.add_argument("--dtype", choices=("float32", "float64"))
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _training_options(p, what):
    g = p.add_argument_group(f"{what} hyperparameters")
    g.add_argument("--epochs", type=float)
    g.add_argument("--max-steps", type=int, help="steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--learning-rate", "--lr", type=float)
    return g


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npcosteff", description="COST-EFF (slenderized multi-exit BERT) in NumPy: train, slenderize, "
                                      "evaluate and sweep early exit on GLUE.",
        epilog="Run `npcosteff demo` for the whole recipe on SST-2 in a few minutes.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("finetune", help="stage 1: fine-tune the pretrained model (the teacher)")
    _data_options(p)
    p.add_argument("--output", required=True, help="stage folder to write")
    p.add_argument("--model", dest="pretrained", metavar="PATH",
                   help="pretrained BERT folder (default: the packaged MiniLM)")
    _training_options(p, "fine-tuning")
    _recipe_options(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("train-ta", help="stage 2: the multi-exit teacher-assistant")
    _data_options(p)
    p.add_argument("--teacher", required=True, help="fine-tuned teacher (model or stage folder)")
    p.add_argument("--output", required=True)
    p.add_argument("--model", dest="pretrained", metavar="PATH",
                   help="pretrained BERT folder the TA starts from (default: the packaged MiniLM)")
    g = _training_options(p, "TA")
    g.add_argument("--hidden-fraction", type=float, help="share of the epochs on hidden distillation (1/3)")
    _recipe_options(p)
    p.set_defaults(func=cmd_train_ta)

    p = sub.add_parser("slenderize", help="stage 3: prune the TA in width (heads, FFN, embedding rank)")
    _data_options(p)
    p.add_argument("--ta", required=True, help="the multi-exit TA (model or stage folder)")
    p.add_argument("--teacher", help="model distilled from (default: the TA)")
    p.add_argument("--output", required=True)
    g = p.add_argument_group("slenderization")
    g.add_argument("--heads", type=int, help="target heads per layer")
    g.add_argument("--ffn", type=int, help="target FFN width")
    g.add_argument("--rank", type=int, help="target word-embedding rank")
    g.add_argument("--prune-period", type=float, help="epochs of training after each prune")
    g.add_argument("--repr-proportion", type=float, help="share of each period on hidden distillation")
    g.add_argument("--learning-rate", "--lr", type=float)
    g.add_argument("--lr-restore", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--importance-examples", type=int)
    g.add_argument("--last-exit-only", action="store_true", help="importance from the last exit only (ablation)")
    _recipe_options(p)
    p.set_defaults(func=cmd_slenderize)

    p = sub.add_parser("recover", help="stage 4: recover the slender student by distillation")
    _data_options(p)
    p.add_argument("--student", required=True, help="the slenderized student (model or stage folder)")
    p.add_argument("--teacher", required=True, help="the TA it learns from (model or stage folder)")
    p.add_argument("--output", required=True)
    g = p.add_argument_group("recovery")
    g.add_argument("--hidden-epochs", type=float)
    g.add_argument("--pred-epochs", type=float)
    g.add_argument("--hidden-learning-rate", type=float)
    g.add_argument("--pred-learning-rate", type=float)
    g.add_argument("--hidden-max-steps", type=int)
    g.add_argument("--pred-max-steps", type=int)
    g.add_argument("--batch-size", type=int)
    _recipe_options(p)
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("evaluate", help="dev metrics of every exit, parameters and FLOPs")
    _data_options(p)
    p.add_argument("--model", required=True, help="model or stage folder")
    p.add_argument("--json", help="also write the results to this JSON file")
    _recipe_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="early-exit threshold sweep: CSV, JSON and a PNG of metric against FLOPs")
    _data_options(p)
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                   help="a model to sweep (repeatable); one curve per model")
    p.add_argument("--output", required=True)
    p.add_argument("--thresholds", type=float, nargs="+", help="thresholds (patience: integers)")
    p.add_argument("--criterion", choices=("entropy", "max_prob", "patience"))
    _recipe_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("run", help="all stages from one recipe, with a summary table and plot")
    g = p.add_argument_group("recipe")
    g.add_argument("--preset", help=f"one of {', '.join(PRESETS)}")
    g.add_argument("--config", help="a recipe file (.json or .toml)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="set any recipe field (repeatable)")
    g.add_argument("--task", help="override the recipe's task")
    g.add_argument("--model", dest="pretrained", metavar="PATH",
                   help="pretrained BERT folder (default: the packaged MiniLM)")
    g.add_argument("--glue-dir", metavar="SOURCE", help=GLUE_DIR_HELP)
    g.add_argument("--max-length", type=int)
    g.add_argument("--max-train", type=int)
    g.add_argument("--max-eval", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--dtype", choices=("float32", "float64"))
    p.add_argument("--output", help="run folder (default: runs/<recipe>-<task>)")
    p.add_argument("--reuse", metavar="RUN", help="take the finished teacher and TA of run folder RUN (linked, "
                                                  "not retrained): another width or an ablation of the same recipe")
    a = p.add_argument_group("ablations")
    a.add_argument("--no-ta", action="store_true", help="distill the student from the fine-tuned teacher directly")
    a.add_argument("--last-exit-only", action="store_true", help="importance from the last exit's loss only")
    a.add_argument("--no-exits", action="store_true", help="slenderization without exits (final exit only)")
    a.add_argument("--no-slenderize", action="store_true", help="exits without slenderization (the TA is final)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the quick recipe on SST-2 with the packaged MiniLM, in a few minutes")
    p.add_argument("--glue-dir", metavar="SOURCE",
                   help="where GLUE comes from: a folder in GLUE's TSV layout, 'hub' (nyu-mll/glue through "
                        "datasets) or 'shipped' (the GLUE slices in the package; default: $NPCOSTEFF_GLUE_DIR, "
                        "else shipped)")
    p.add_argument("--output", default=DEMO_OUTPUT, help=f"run folder (default: {DEMO_OUTPUT})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a field of the quick recipe")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``npcosteff`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"npcosteff {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"npcosteff {args.command}: interrupted; run the same command again to resume from the last "
              f"checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
