"""Where GLUE comes from, and loading one split of it.

Three sources, with the same label ids (`npcosteff.data.glue`):

* a folder in GLUE's TSV layout (as written by GLUE's download script), one sub-folder per
  task: ``<data_dir>/SST-2/train.tsv``, ``<data_dir>/MNLI/dev_matched.tsv``, ...;
* the Hugging Face hub dataset ``nyu-mll/glue`` through `datasets` (network on first use,
  then its cache);
* the small slices shipped inside the package (``npcosteff/data/slices``: the first few
  hundred rows of SST-2, MRPC, STS-B, CoLA and RTE, train and dev, in the TSV layout), so
  that the demo, the tests and the tutorials' small size run offline.

`glue_source` is the one place that decides which: the `data_dir` argument when given, else
the environment variable ``NPCOSTEFF_GLUE_DIR`` when set, else a default (the hub for
`load_glue`). Each of them is a folder, ``"shipped"`` (the slices) or ``"hub"``::

    load_glue("sst2", "train")                          # $NPCOSTEFF_GLUE_DIR, else the hub
    load_glue("sst2", "train", "shipped", 512)          # the shipped slice, offline
    load_glue("sst2", "train", "/data/glue")            # a folder in GLUE's TSV layout

A shipped slice asked for more examples than it holds raises `SliceTooSmall`; a folder that
is not there, or a hub that cannot be reached, raises an error that lists every way to get
GLUE.
"""

from __future__ import annotations

import os

import numpy as np

from .glue import (GLUE_TASKS, STSB_RANGE, GlueSplit, TaskSpec, check_max_examples, get_task, labels_array,
                   read_glue_tsv, resolve_split)

__all__ = ["GLUE_DIR_ENV", "HUB_DATASET", "HUB", "SHIPPED", "SHIPPED_DIR", "SliceTooSmall", "ways_to_get_glue", "glue_source",
           "is_shipped", "describe_source", "shipped_slices", "load_glue"]

GLUE_DIR_ENV = "NPCOSTEFF_GLUE_DIR"
HUB_DATASET = "nyu-mll/glue"
# What a data_dir (and --glue-dir, and $NPCOSTEFF_GLUE_DIR) may name instead of a folder; a
# folder that happens to be called "hub" or "shipped" is reached as ./hub or ./shipped.
HUB = "hub"
SHIPPED = "shipped"
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slices")


class SliceTooSmall(ValueError):
    """A shipped slice was asked for more examples than it holds."""


def ways_to_get_glue(task: str | TaskSpec | None = None) -> str:
    """The advice that every "no GLUE here" error ends with: each way to get the data."""
    folder = get_task(task).tsv_folder if task is not None else "SST-2"
    return (f"Full GLUE comes from the Hugging Face hub ({HUB_DATASET} through `datasets`, "
            f"--glue-dir {HUB}: network on first use, then its cache) or from a folder in GLUE's TSV "
            f"layout ({folder}/train.tsv, {folder}/dev.tsv, ...) named by --glue-dir FOLDER (data_dir= "
            f"in Python) or by the environment variable {GLUE_DIR_ENV}; without network, the GLUE "
            f"slices shipped with npcosteff (--glue-dir {SHIPPED}) run the demo, the tests and the "
            f"tutorials' small size.")


def glue_source(data_dir: str | os.PathLike | None = None, default: str = HUB,
                task: str | TaskSpec | None = None) -> str:
    """Where GLUE is read from: `HUB`, or the path of a folder in GLUE's TSV layout.

    The first of `data_dir`, ``$NPCOSTEFF_GLUE_DIR`` and `default` that is set decides. Each
    is a folder, ``"shipped"`` (the slices in the package: returns `SHIPPED_DIR`) or
    ``"hub"``. A resolved source resolves to itself, so the result can be passed on as a
    `data_dir`. `task` only names the task's files in the error message.

    Raises:
        FileNotFoundError: the folder named is not there (the message lists every way to
            get GLUE; a typo must not fall back to another source).
    """
    origin = ""
    choice = data_dir
    if choice is None and os.environ.get(GLUE_DIR_ENV):
        choice, origin = os.environ[GLUE_DIR_ENV], f" (named by ${GLUE_DIR_ENV})"
    if choice is None:
        choice = default
    choice = os.fspath(choice)
    if choice == HUB:
        return HUB
    if choice == SHIPPED:
        return SHIPPED_DIR
    if not os.path.isdir(choice):
        raise FileNotFoundError(f"GLUE folder {choice!r}{origin} does not exist. {ways_to_get_glue(task)}")
    return choice


def is_shipped(source: str | os.PathLike | None) -> bool:
    """Whether `source` (a `glue_source` result or a data_dir) is the shipped slices."""
    if source is None:
        return False
    source = os.fspath(source)
    return source == SHIPPED or (source != HUB and os.path.isdir(source)
                                 and os.path.samefile(source, SHIPPED_DIR))


def describe_source(source: str | os.PathLike) -> str:
    """A few words on a `glue_source` result, for logs: where the examples come from."""
    if os.fspath(source) == HUB:
        return f"the Hugging Face hub ({HUB_DATASET})"
    if is_shipped(source):
        return "the GLUE slices shipped with npcosteff"
    return f"the GLUE folder {os.fspath(source)}"


def shipped_slices() -> dict[str, dict[str, int]]:
    """The shipped slices: ``{task: {split: examples}}``, e.g. ``{"sst2": {"train": 512, ...}}``."""
    found = {}
    for spec in GLUE_TASKS.values():
        for split in ("train", "validation"):
            path = os.path.join(SHIPPED_DIR, spec.tsv_folder, spec.tsv_file(split))
            if os.path.isfile(path):
                found.setdefault(spec.name, {})[split] = len(read_glue_tsv(spec, path, split))
    return found


def load_glue(task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None,
              max_examples: int | None = None) -> GlueSplit:
    """Load one split of a GLUE task.

    Args:
        task: task name or alias (``"sst2"``, ``"SST-2"``, ``"STS-B"``, ``"mnli"``, ...).
        split: ``"train"``, ``"validation"`` (or ``"dev"``), ``"test"``; for MNLI
            ``"validation_matched"``, ``"validation_mismatched"``, ``"test_matched"``,
            ``"test_mismatched"``.
        data_dir: a folder in GLUE's TSV layout, ``"shipped"`` (the slices in the package) or
            ``"hub"`` (``nyu-mll/glue``); None uses ``$NPCOSTEFF_GLUE_DIR`` if set, else the hub
            (see `glue_source`).
        max_examples: keep only the first N examples in file order (quick experiments and
            tests); None keeps all. No shuffling happens here. A full source holding fewer
            gives what it has; a shipped slice holding fewer raises `SliceTooSmall`.

    Returns:
        A `GlueSplit`.

    Raises:
        FileNotFoundError: the folder, the task's sub-folder or the split's file is missing.
        RuntimeError: the hub could not be reached (offline without a cache).
        SliceTooSmall: more examples asked of a shipped slice than it holds.
    """
    spec = get_task(task)
    split = resolve_split(spec, split)
    max_examples = check_max_examples(max_examples)
    source = glue_source(data_dir, task=spec)
    if source == HUB:
        return load_from_hub(spec, split, max_examples)
    shipped = is_shipped(source)
    task_dir = os.path.join(source, spec.tsv_folder)
    if not os.path.isdir(task_dir):
        if shipped:
            held = ", ".join(get_task(t).tsv_folder for t in shipped_slices())
            raise FileNotFoundError(f"the GLUE slices shipped with npcosteff hold {held}, not "
                                    f"{spec.tsv_folder}. {ways_to_get_glue(spec)}")
        raise FileNotFoundError(f"GLUE folder {source!r} has no {spec.tsv_folder}/ folder "
                                f"for task {spec.name} (expected {task_dir!r}). "
                                f"{ways_to_get_glue(spec)}")
    data = read_glue_tsv(spec, os.path.join(task_dir, spec.tsv_file(split)), split, max_examples)
    if shipped and max_examples is not None and len(data) < max_examples:
        raise SliceTooSmall(f"the {spec.tsv_folder} {split} slice shipped with npcosteff holds "
                            f"{len(data)} examples, and {max_examples} were asked for. "
                            f"{ways_to_get_glue(spec)}")
    return data


def load_from_hub(spec: TaskSpec, split: str, max_examples: int | None) -> GlueSplit:
    """Load a split of ``nyu-mll/glue`` with `datasets` (network or a filled cache)."""
    try:
        import datasets
        dataset = datasets.load_dataset(HUB_DATASET, spec.name, split=split)
    except Exception as err:  # offline, no cache, hub errors: all end the same way for a user
        reason = " ".join(f"{type(err).__name__}: {err}".split())      # one line
        if len(reason) > 300:
            reason = reason[:300] + "..."
        raise RuntimeError(
            f"could not load GLUE task {spec.name} split {split} from the Hugging Face hub "
            f"({HUB_DATASET}): {reason}. {ways_to_get_glue(spec)}") from err
    missing = [c for c in (*spec.hub_text_columns, "label") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"hub dataset {HUB_DATASET}/{spec.name} has no column(s) {missing}; "
                         f"its columns are {dataset.column_names}")
    if not spec.is_regression:
        hub_names = tuple(getattr(dataset.features["label"], "names", ()))
        if hub_names != spec.label_names:
            raise ValueError(f"hub dataset {HUB_DATASET}/{spec.name} labels are {hub_names}, "
                             f"expected {spec.label_names}")
    if max_examples is not None:
        dataset = dataset.select(range(min(max_examples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"hub dataset {HUB_DATASET}/{spec.name} split {split} has no examples")
    texts = [list(dataset[c]) for c in spec.hub_text_columns]
    labels = labels_array(spec, list(dataset["label"]))
    if split.startswith("test"):
        labels = None   # the hub writes -1 for GLUE's hidden test labels
    elif spec.is_regression:
        low, high = STSB_RANGE
        bad = np.flatnonzero(~((labels >= low) & (labels <= high)))
        if bad.size:
            raise ValueError(f"{HUB_DATASET}/{spec.name} {split}, row {bad[0]}: score "
                             f"{labels[bad[0]]} is not in [{low}, {high}]")
    else:
        bad = np.flatnonzero((labels < 0) | (labels >= spec.num_labels))
        if bad.size:
            raise ValueError(f"{HUB_DATASET}/{spec.name} {split}, row {bad[0]}: label "
                             f"{labels[bad[0]]} is not in [0, {spec.num_labels})")
    return GlueSplit(spec, split, texts[0], texts[1] if spec.is_pair else None, labels,
                     source=HUB_DATASET)
