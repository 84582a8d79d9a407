"""Run and stage folders: the console and its logs, user errors, models and data by folder, and
the resume bookkeeping of a stage (stage.json, DONE.json).

Every stage writes one folder::

    <stage>/stage.json    the settings it runs with (a rerun with other settings is refused)
    <stage>/log.txt       what it printed, with times
    <stage>/metrics.jsonl training and dev records (npcosteff.train.Trainer)
    <stage>/best/ ...     checkpoints: config.json, model.safetensors, tokenizer.json
    <stage>/DONE.json     written last: the results and where the final model is

A model argument is a model folder or a finished stage folder; `npcosteff.pretrained.resolve_model_dir`
tells which and finds the model.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Optional

import numpy as np

from ..pretrained import DONE_FILE, STAGE_FILE, resolve_model_dir
from ..weights import json_default
from ..recipe import Recipe, setting_names

__all__ = ["UserError", "DataUnavailable", "Console", "console", "DONE_FILE", "STAGE_FILE", "LOG_FILE", "RECIPE_FILE",
           "STAGE_KEYS", "StageFolder", "model_folder", "read_config", "load_model", "load_tokenizer", "pretrained_dir",
           "tokenizer_dir", "recorded_task", "load_data", "dtype_of", "write_json", "link_stages"]

LOG_FILE = "log.txt"
RECIPE_FILE = "recipe.json"         # a run folder's whole recipe (npcosteff.runs.stages.run_recipe)


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


def write_json(path, obj):
    """`obj` as indented JSON (numpy values as Python ones), written atomically."""
    from ..weights import write_text

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); delete it to rerun that stage") from None


def _normalized(obj):
    """`obj` as it reads back from JSON (tuples -> lists, numpy -> Python), for comparisons."""
    return json.loads(json.dumps(obj, default=json_default))


# --------------------------------------------------------------------------- models and data
def model_folder(path, what="model") -> str:
    """The model folder a model or stage folder names (`npcosteff.pretrained.resolve_model_dir`),
    its errors as one-line UserErrors."""
    try:
        return resolve_model_dir(path, what=what)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None


def load_model(path, dtype, what="model", task_spec=None, need_exits=True):
    """Load a CostEffModel from a model or stage folder, checked against the task."""
    from ..config import ConfigError
    from ..model import CostEffModel
    from ..weights import CheckpointError

    folder = model_folder(path, what)
    read_config(folder, what)
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


def _task_in(folder) -> Optional[str]:
    """The task that `folder`'s own records name: a stage's DONE.json or stage.json (its
    settings' ``data.task``), or a run's recipe.json; None when none does or none can be read."""
    for name, find in ((DONE_FILE, lambda d: d["settings"]["recipe"]["data.task"]),
                       (STAGE_FILE, lambda d: d["recipe"]["data.task"]),
                       (RECIPE_FILE, lambda d: d["data"]["task"])):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                task = find(json.load(f))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(task, str):
            return task
    return None


def recorded_task(path, levels=3) -> Optional[str]:
    """The GLUE task a model was trained on, as the folders around it recorded it, or None.

    `path` is a model or stage folder (`model_folder`). Asked in order: `path` itself, then
    the model folder it names and up to `levels` folders above it, so that a model folder
    inside a stage (``run/recover/pred/best``) finds its stage's DONE.json and, above it, the
    run's recipe.json."""
    candidates = [os.path.abspath(path)]
    folder = os.path.abspath(model_folder(path))
    for _ in range(levels + 1):
        candidates.append(folder)
        folder = os.path.dirname(folder)
    seen = set()
    for folder in candidates:
        if folder in seen:
            continue
        seen.add(folder)
        task = _task_in(folder)
        if task is not None:
            return task
    return None


def read_config(folder, what="model"):
    """The CostEffConfig of model folder `folder`; a config.json that is missing, not JSON or
    not a BERT configuration (a list, a number given as text, ...) as a one-line UserError."""
    from ..config import CostEffConfig

    try:
        return CostEffConfig.from_json(folder)
    except (ValueError, FileNotFoundError) as e:        # ConfigError (not JSON, not a BERT) is a ValueError
        raise UserError(f"{what} folder {folder!r} cannot be loaded: {e}") from None
    except TypeError as e:                              # a value of the wrong type, or not a JSON object
        raise UserError(f"{what} folder {folder!r} cannot be loaded: its config.json is not a BERT configuration "
                        f"({e})") from None


def load_tokenizer(folder):
    """The Tokenizer of `folder`'s tokenizer.json; one that `tokenizers` cannot read as a UserError."""
    from ..tokenizer import Tokenizer

    path = os.path.join(tokenizer_dir(folder), "tokenizer.json")
    try:
        return Tokenizer.from_pretrained(folder)
    except Exception as e:      # `tokenizers` raises a bare Exception for a file it cannot parse
        raise UserError(f"{path} is not a readable tokenizer file ({' '.join(str(e).split())}): copy the "
                        f"checkpoint's tokenizer.json (Hugging Face 'fast' tokenizer file) again") from None


def pretrained_dir(path) -> str:
    """The pretrained checkpoint folder (`path`, or the packaged MiniLM when None), its
    config.json checked."""
    try:
        folder = resolve_model_dir(path)
    except FileNotFoundError as e:
        raise UserError(f"pretrained model: {e}") from None
    read_config(folder, "pretrained model")
    return folder


def tokenizer_dir(*candidates) -> str:
    """The first folder among `candidates` that holds a tokenizer.json."""
    for folder in candidates:
        if folder is not None and os.path.isfile(os.path.join(folder, "tokenizer.json")):
            return folder
    raise UserError(f"no tokenizer.json in {' or '.join(repr(c) for c in candidates if c is not None)}: "
                    f"copy the checkpoint's tokenizer.json (Hugging Face 'fast' tokenizer file) next to its weights")


def load_data(recipe: Recipe, glue_dir, tokenizer_folder, need_train=True):
    """Tokenized train and dev splits of the recipe's task (see npcosteff.data.load_task_data).

    `glue_dir`: a folder in GLUE's TSV layout, "shipped", "hub", or None ($NPCOSTEFF_GLUE_DIR,
    else the hub); see `npcosteff.data.glue_source`. Without `need_train` only the dev split is
    read (evaluate, sweep): the returned TaskData has ``train=None``.
    """
    from ..data.batching import encode_split
    from ..data.glue import get_task
    from ..data.sources import glue_source, load_glue
    from ..data.task import TaskData, load_task_data

    tok = load_tokenizer(tokenizer_folder)                  # a tokenizer.json that cannot be read: one line
    try:
        source = glue_source(glue_dir, task=recipe.task)
        if need_train:
            data = load_task_data(recipe.task, source, tokenizer_folder, recipe.data.max_length, recipe.data.max_train,
                                  recipe.data.max_eval, heldout=recipe.data.selection == "heldout")
        else:
            spec = get_task(recipe.task)
            split = "validation_matched" if spec.name == "mnli" else "validation"
            dev = encode_split(tok, load_glue(spec, split, source, recipe.data.max_eval), recipe.data.max_length)
            data = TaskData(spec.name, spec.num_labels, spec.is_regression, None, dev,
                            os.path.join(tokenizer_folder, "tokenizer.json"))
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        # No folder, file or hub; a slice too small (SliceTooSmall); a bad row, column or file
        # (npcosteff.data.glue names the file and the line).
        raise DataUnavailable(recipe.task, e) from None
    _check_positions(data, recipe, tokenizer_folder)
    return data


def _check_positions(data, recipe: Recipe, model_folder_):
    """No example longer than the model in `model_folder_` has positions (a UserError naming
    data.max_length otherwise); a folder without config.json is not checked."""
    if not os.path.isfile(os.path.join(model_folder_, "config.json")):
        return
    positions = read_config(model_folder_).max_position_embeddings
    for name in ("train", "heldout", "dev"):
        split = getattr(data, name)
        longest = max((len(ids) for ids in split.input_ids), default=0) if split is not None else 0
        if longest > positions:
            raise UserError(f"a {name} example of {recipe.task} has {longest} tokens, more than the {positions} "
                            f"positions of the model in {model_folder_!r}: set data.max_length (--max-length) to "
                            f"{positions} at most")


def dtype_of(recipe: Recipe):
    """The NumPy dtype a recipe trains in."""
    return np.float32 if recipe.data.dtype == "float32" else np.float64


# --------------------------------------------------------------------------- stage folders
def _stage_keys() -> dict:
    """The settings that change each stage's result, derived from the recipe's sections: the
    data settings (but the pretrained folder, recorded as an input), the shared training
    settings (but how often it logs and the evaluation batch size) and the stage's own section;
    the teacher's fine-tuning has its own seed and trains its one classifier at its own rate."""
    data = [k for k in setting_names(("data",)) if k != "data.model"]
    training = [k for k in setting_names(("training",)) if k not in ("training.log_every", "training.eval_batch_size")]
    teacher_training = [k for k in training if k not in ("training.seed", "training.exit_lr_multiplier")]
    return {"finetune": data + teacher_training + setting_names(("finetune",)),
            "train-ta": data + training + setting_names(("ta",)),
            "slenderize": data + training + setting_names(("slenderize",)),
            "recover": data + training + setting_names(("recover",))}


STAGE_KEYS = _stage_keys()


class StageFolder:
    """One stage's folder: its settings, its log, its DONE.json (see the module docstring)."""

    def __init__(self, stage, folder, recipe: Recipe, inputs: dict):
        self.stage, self.folder = stage, os.fspath(folder)
        self.settings = _normalized({"stage": stage, "inputs": {k: self._where(v) for k, v in inputs.items()},
                                     "recipe": {k: recipe.get(k) for k in STAGE_KEYS[stage]}})
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
            write_json(path, self.settings)
        self.clock = time.perf_counter()

    def finish(self, model_dir, summary: dict, extra=None) -> dict:
        """Write DONE.json: settings, where the model is (relative), its dev metrics and sizes."""
        record = {"stage": self.stage, "model_dir": os.path.relpath(model_dir, self.folder),
                  "settings": self.settings, "seconds": time.perf_counter() - self.clock,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary, **(extra or {})}
        write_json(os.path.join(self.folder, DONE_FILE), record)
        return record


# The stage folders of a run that `link_stages` may link, and the stage each holds.
LINKABLE = {"teacher": "finetune", "ta": "train-ta"}


def link_stages(source, output, recipe: Recipe, stages=("teacher", "ta")) -> list:
    """Link the finished `stages` of run folder `source` whose settings are `recipe`'s into the
    existing run folder `output` (relative symbolic links), so that another student (other
    widths, an ablation, another seed) reuses its teacher and TA. Returns the linked stages.

    A stage trained with other settings (another seed for the TA, say) is not linked: the run
    trains it anew. The first stage must link (a teacher with other settings is an error: the
    run would silently train a second teacher)."""
    source, output = os.path.abspath(source), os.path.abspath(output)
    if source == output:
        raise UserError("--reuse names the run folder itself")
    linked = []
    for k, stage in enumerate(stages):
        src, dst = os.path.join(source, stage), os.path.join(output, stage)
        if not os.path.isfile(os.path.join(src, DONE_FILE)):
            raise UserError(f"--reuse {source}: its {stage} stage has not finished (no {os.path.join(src, DONE_FILE)})")
        recorded = _read_json(os.path.join(src, DONE_FILE)).get("settings", {}).get("recipe", {})
        wanted = _normalized({key: recipe.get(key) for key in STAGE_KEYS[LINKABLE[stage]]})
        differ = [f"{key}: {recorded.get(key)!r} there, {value!r} now" for key, value in wanted.items()
                  if recorded.get(key) != value]
        if differ:
            if k == 0:
                raise UserError(f"--reuse {source}: its {stage} was trained with other settings "
                                f"({'; '.join(differ)})")
            console.say(f"[reuse] {stage} of {source} not linked, trained here: {'; '.join(differ)}")
            break                                          # what follows a retrained stage is retrained too
        if os.path.lexists(dst):
            if os.path.islink(dst) and os.path.realpath(dst) == os.path.realpath(src):
                linked.append(stage)
                continue                                   # linked by an earlier, interrupted run
            raise UserError(f"--reuse: {dst} exists already; give a new output folder")
        os.symlink(os.path.relpath(src, output), dst, target_is_directory=True)
        linked.append(stage)
    return linked
