"""Checkpoints: safetensors with Hugging Face names, checked keys and shapes, atomic writes.

A checkpoint folder holds ``config.json`` and ``model.safetensors`` (and usually
``tokenizer.json``), exactly like a Hugging Face BERT folder, so either side reads the other.
Every write goes to a temporary name first and is renamed into place, so a crash never leaves
a half-written checkpoint behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

# Tensors a BERT checkpoint may carry that npcosteff models do not use: the position-id
# buffer, BertModel's own pooler (npcosteff's exits have their own), the pre-training heads.
IGNORED_PREFIXES = ("embeddings.position_ids", "pooler.", "cls.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose tensors do not fit the model."""


def read_safetensors(path) -> dict:
    """All tensors of a safetensors file as numpy arrays; a clear error when it is not readable."""
    from safetensors.numpy import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def normalize_names(state: dict, expected_names) -> dict:
    """Map checkpoint names onto model names.

    Accepts the ``bert.`` prefix of ``BertFor*`` checkpoints and maps a
    ``BertForSequenceClassification`` head (``classifier.*``) onto the last exit.
    """
    expected = set(expected_names)
    out = {}
    for name, value in state.items():
        key = name[len("bert."):] if name.startswith("bert.") else name
        if key.startswith("classifier.") and key not in expected:
            last = sorted((n for n in expected if n.startswith("exits.") and n.endswith(".classifier.weight")),
                          key=lambda n: int(n.split(".")[1]))
            if last:
                key = last[-1].rsplit("classifier.", 1)[0] + key
        out[key] = value
    return out


def check_state(state: dict, expected_shapes: dict, allow_missing=()) -> tuple:
    """Compare a checkpoint's tensors with the model's parameter shapes.

    Returns (names found, names missing but allowed). Raises CheckpointError naming every
    unknown, missing or mis-shaped tensor with both shapes.
    """
    problems = []
    unknown = [k for k in state if k not in expected_shapes and not k.startswith(IGNORED_PREFIXES)]
    if unknown:
        problems.append("unknown tensors: " + ", ".join(sorted(unknown)))
    missing = [k for k in expected_shapes if k not in state]
    allowed = [k for k in missing if k.startswith(tuple(allow_missing))]
    really_missing = [k for k in missing if k not in allowed]
    if really_missing:
        problems.append("missing tensors: " + ", ".join(really_missing))
    for k, shape in expected_shapes.items():
        if k in state and tuple(state[k].shape) != tuple(shape):
            problems.append(f"tensor {k} has shape {tuple(state[k].shape)} in the checkpoint, "
                            f"the model expects {tuple(shape)}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model config:\n  " + "\n  ".join(problems))
    return [k for k in expected_shapes if k in state], allowed


def _atomic_write_bytes(path, write):
    """Call write(tmp_path), then rename tmp_path onto path (same folder, so the rename is atomic)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_safetensors(path, params: dict, names=None, metadata=None):
    """Save arrays (in `names` order) to a safetensors file atomically."""
    from safetensors.numpy import save_file

    names = list(params) if names is None else list(names)
    tensors = {n: np.ascontiguousarray(params[n]) for n in names}
    _atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def json_default(x):
    """``json.dumps(default=...)`` for NumPy values: scalars as Python numbers, arrays and
    tuples as lists."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (np.ndarray, tuple)):
        return x.tolist() if isinstance(x, np.ndarray) else list(x)
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def write_text(path, text: str):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    _atomic_write_bytes(path, write)


def save_folder(folder, files: dict):
    """Write a whole checkpoint folder atomically.

    `files` maps file names to callables ``write(path)``. Everything is written into a fresh
    sibling folder, which then replaces `folder` by renames: a reader sees the old folder or the
    new one, never a mixture, and a crash leaves the old one intact.
    """
    folder = os.path.abspath(os.fspath(folder))
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
    try:
        for name, write in files.items():
            write(os.path.join(tmp, name))
        if os.path.isdir(folder):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.old-", dir=parent)
            os.rmdir(old)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
