"""Find a local copy of GLUE in TSV layout, so that tutorials and benchmarks run offline.

The search order is:

1. the environment variable ``NPCOSTEFF_GLUE_DIR`` (the same variable `load_glue` reads);
2. a folder ``shared/data/glue`` next to the current directory or one of its parents, or next
   to the installed package or one of its parents (a checkout that sits beside a ``shared/``
   folder finds it from anywhere inside the checkout);
3. nothing: ``None``, and the caller loads from the Hugging Face hub with
   ``load_glue(task, split, data_dir=None)``.

Example::

    from npcosteff.data import load_glue
    from npcosteff.data.locate import find_glue_dir

    train = load_glue("sst2", "train", data_dir=find_glue_dir(), max_examples=1000)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from npcosteff.data.glue import GLUE_DIR_ENV

__all__ = ["GLUE_SUBDIR", "find_glue_dir"]

# Where a GLUE copy sits relative to a folder that holds it: <folder>/shared/data/glue.
GLUE_SUBDIR = Path("shared", "data", "glue")


def _ancestors(start: Path) -> Iterable[Path]:
    """`start` and each of its parents, up to the file system root."""
    start = start.resolve()
    yield start
    yield from start.parents


def find_glue_dir(start: Optional[os.PathLike | str] = None) -> Optional[str]:
    """The folder of a local GLUE copy in TSV layout, or None when there is none.

    Args:
        start: where the upward search begins (None: the current directory); the package's
            own location is searched after it either way.

    Returns:
        ``$NPCOSTEFF_GLUE_DIR`` when set, else the first ``<ancestor>/shared/data/glue``
        folder found above `start` or above the package, else None.

    Raises:
        FileNotFoundError: ``NPCOSTEFF_GLUE_DIR`` is set but is not a folder (a typo there
            should not silently fall back to the hub).
    """
    from_env = os.environ.get(GLUE_DIR_ENV)
    if from_env:
        if not os.path.isdir(from_env):
            raise FileNotFoundError(f"the environment variable {GLUE_DIR_ENV} is set to "
                                    f"{from_env!r}, which is not a folder")
        return from_env
    package_dir = Path(__file__).resolve().parent
    starts = [Path.cwd() if start is None else Path(start), package_dir]
    seen = set()
    for origin in starts:
        for folder in _ancestors(origin):
            if folder in seen:            # the two walks usually meet: check each folder once
                continue
            seen.add(folder)
            candidate = folder / GLUE_SUBDIR
            if candidate.is_dir():
                return str(candidate)
    return None
