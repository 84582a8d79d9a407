"""The nine GLUE tasks: what each one reads, predicts and is scored with, and how to load it.

Three sources, with the same label ids:

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

Label ids follow the hub dataset's ``ClassLabel`` order, so that a model trained on one
source can be scored on the other: e.g. MNLI ``[entailment, neutral, contradiction]`` and
QNLI/RTE ``[entailment, not_entailment]``. The TSV files of CoLA, SST-2, MRPC, QQP and WNLI
already store the ids ``0``/``1``; MNLI, QNLI and RTE store the label names. STS-B is a
regression task: its label is a similarity score in [0, 5] (float32).

Splits are ``train``, ``validation`` and ``test`` (``dev`` is accepted for ``validation``);
MNLI has ``validation_matched`` / ``validation_mismatched`` (files ``dev_matched.tsv`` /
``dev_mismatched.tsv``) and ``test_matched`` / ``test_mismatched``. GLUE's test sets carry no
labels: a test split has ``labels=None``.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field

import numpy as np

GLUE_DIR_ENV = "NPCOSTEFF_GLUE_DIR"
HUB_DATASET = "nyu-mll/glue"
# What a data_dir (and --glue-dir, and $NPCOSTEFF_GLUE_DIR) may name instead of a folder; a
# folder that happens to be called "hub" or "shipped" is reached as ./hub or ./shipped.
HUB = "hub"
SHIPPED = "shipped"
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slices")


@dataclass(frozen=True)
class TaskSpec:
    """Everything that differs between GLUE tasks.

    Attributes:
        name: the hub configuration name (``"sst2"``), used as the canonical task name.
        tsv_folder: the task's folder in GLUE's TSV layout (``"SST-2"``).
        tsv_text_columns: header names of the one or two text columns in the TSV files.
        hub_text_columns: the same columns' names in the hub dataset.
        tsv_label_column: header name of the label column in the TSV files.
        label_names: the class names in label-id order (the hub's ``ClassLabel`` names);
            empty for regression.
        tsv_label_values: how the TSV files write each label id, in label-id order.
        metric_names: the keys `npcosteff.metrics.compute_metrics` returns for the task.
        main_metric: the metric that selects checkpoints.
        is_regression: True for STS-B (one output, mean-squared error).
        splits: the split names this task has.
        headerless_columns: column names of a TSV file without a header row (CoLA's train
            and dev files), else None.
    """

    name: str
    tsv_folder: str
    tsv_text_columns: tuple[str, ...]
    hub_text_columns: tuple[str, ...]
    tsv_label_column: str
    label_names: tuple[str, ...]
    tsv_label_values: tuple[str, ...]
    metric_names: tuple[str, ...]
    main_metric: str
    is_regression: bool = False
    splits: tuple[str, ...] = ("train", "validation", "test")
    headerless_columns: tuple[str, ...] | None = None

    @property
    def num_labels(self) -> int:
        """C: number of classes, 1 for regression (one output)."""
        return 1 if self.is_regression else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """Whether an example is a sentence pair."""
        return len(self.tsv_text_columns) == 2

    def tsv_file(self, split: str) -> str:
        """File name of a split in the TSV layout (``validation`` is ``dev``)."""
        return split.replace("validation", "dev") + ".tsv"


_BINARY = ("0", "1")
_ACCURACY = ("accuracy",)
_F1_ACC = ("f1", "accuracy", "combined")

GLUE_TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("cola", "CoLA", ("sentence",), ("sentence",), "label",
             ("unacceptable", "acceptable"), _BINARY, ("mcc",), "mcc",
             headerless_columns=("source", "label", "original_label", "sentence")),
    TaskSpec("sst2", "SST-2", ("sentence",), ("sentence",), "label",
             ("negative", "positive"), _BINARY, _ACCURACY, "accuracy"),
    TaskSpec("mrpc", "MRPC", ("#1 String", "#2 String"), ("sentence1", "sentence2"), "Quality",
             ("not_equivalent", "equivalent"), _BINARY, _F1_ACC, "combined"),
    TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score",
             (), (), ("pearson", "spearmanr", "combined"), "combined", is_regression=True),
    TaskSpec("qqp", "QQP", ("question1", "question2"), ("question1", "question2"),
             "is_duplicate", ("not_duplicate", "duplicate"), _BINARY, _F1_ACC, "combined"),
    TaskSpec("mnli", "MNLI", ("sentence1", "sentence2"), ("premise", "hypothesis"),
             "gold_label", ("entailment", "neutral", "contradiction"),
             ("entailment", "neutral", "contradiction"), _ACCURACY, "accuracy",
             splits=("train", "validation_matched", "validation_mismatched",
                     "test_matched", "test_mismatched")),
    TaskSpec("qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label",
             ("entailment", "not_entailment"), ("entailment", "not_entailment"),
             _ACCURACY, "accuracy"),
    TaskSpec("rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
             ("entailment", "not_entailment"), ("entailment", "not_entailment"),
             _ACCURACY, "accuracy"),
    TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
             ("not_entailment", "entailment"), _BINARY, _ACCURACY, "accuracy"),
)}

# STS-B similarity scores lie in [0, 5].
STSB_RANGE = (0.0, 5.0)


def _normalize(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


# "SST-2", "sst-2", "sst2", "SST2", "STS-B", "CoLA", "MNLI", ... all name one task.
_TASK_ALIASES = {}
for _spec in GLUE_TASKS.values():
    _TASK_ALIASES[_normalize(_spec.name)] = _spec.name
    _TASK_ALIASES[_normalize(_spec.tsv_folder)] = _spec.name


def get_task(task: str | TaskSpec) -> TaskSpec:
    """The `TaskSpec` of a task name or alias (``"SST-2"``, ``"sst2"``, ``"STS-B"``, ...)."""
    if isinstance(task, TaskSpec):
        return task
    if not isinstance(task, str):
        raise ValueError(f"task must be a string, got {type(task).__name__} {task!r}")
    canonical = _TASK_ALIASES.get(_normalize(task))
    if canonical is None:
        known = ", ".join(f"{s.name} ({s.tsv_folder})" for s in GLUE_TASKS.values())
        raise ValueError(f"unknown GLUE task {task!r}; known tasks: {known}")
    return GLUE_TASKS[canonical]


def resolve_split(spec: TaskSpec, split: str) -> str:
    """Canonical split name; ``dev`` is accepted for ``validation``."""
    if not isinstance(split, str):
        raise ValueError(f"split must be a string, got {type(split).__name__} {split!r}")
    name = split.strip().lower()
    if name.startswith("dev"):
        name = "validation" + name[len("dev"):]
    if name not in spec.splits:
        raise ValueError(f"task {spec.name} has no split {split!r}; its splits are "
                         f"{', '.join(spec.splits)}")
    return name


@dataclass
class GlueSplit:
    """One split of a GLUE task, as plain Python/NumPy data.

    Attributes:
        spec: the task's `TaskSpec`.
        split: canonical split name (``"train"``, ``"validation_matched"``, ...).
        texts_a: first sentences, N strings.
        texts_b: second sentences (N strings) for pair tasks, else None.
        labels: (N,) int64 label ids, (N,) float32 scores for STS-B, or None for test splits.
        source: the TSV file read, or ``"nyu-mll/glue"``.
    """

    spec: TaskSpec
    split: str
    texts_a: list[str]
    texts_b: list[str] | None
    labels: np.ndarray | None
    source: str = field(default="")

    def __post_init__(self):
        n = len(self.texts_a)
        if self.texts_b is not None and len(self.texts_b) != n:
            raise ValueError(f"texts_a has {n} entries but texts_b has {len(self.texts_b)}")
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels has shape {self.labels.shape}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.texts_a)

    @property
    def task(self) -> str:
        """Canonical task name (``"sst2"``)."""
        return self.spec.name


def _check_max_examples(max_examples):
    if max_examples is None:
        return None
    if (not isinstance(max_examples, (int, np.integer)) or isinstance(max_examples, bool)
            or max_examples < 1):
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")
    return int(max_examples)


def _parse_label(spec: TaskSpec, raw: str, where: str):
    """Label id (int) or STS-B score (float) of one TSV cell; clear error otherwise."""
    value = raw.strip()
    if spec.is_regression:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        low, high = STSB_RANGE
        if not low <= score <= high:   # also rejects NaN
            raise ValueError(f"{where}: {spec.tsv_label_column}={raw!r} is not a score in "
                             f"[{low}, {high}]")
        return score
    try:
        return spec.tsv_label_values.index(value)
    except ValueError:
        raise ValueError(f"{where}: label {raw!r} in column {spec.tsv_label_column!r} is not "
                         f"one of {list(spec.tsv_label_values)}") from None


def _labels_array(spec: TaskSpec, values: list) -> np.ndarray:
    return np.asarray(values, dtype=np.float32 if spec.is_regression else np.int64)


def read_glue_tsv(spec: TaskSpec, path: str, split: str,
                  max_examples: int | None = None) -> GlueSplit:
    """Read one GLUE TSV file (tab separated, no quoting, header row except CoLA train/dev).

    Rows are read in file order; `max_examples` keeps the first N. Labels are read unless the
    split is a test split (GLUE's test files have no label column).
    """
    max_examples = _check_max_examples(max_examples)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GLUE file {path!r} does not exist (task {spec.name}, split "
                                f"{split})")
    with_labels = not split.startswith("test")
    texts: list[list[str]] = [[] for _ in spec.tsv_text_columns]
    labels: list = []
    # utf-8-sig drops the byte-order mark that starts MRPC's files; QUOTE_NONE because GLUE's
    # sentences contain bare quote characters that are text, not CSV quoting.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        first = next(reader, None)
        if first is None:
            raise ValueError(f"GLUE file {path!r} is empty")
        if spec.headerless_columns is not None and spec.tsv_text_columns[0] not in first:
            # CoLA's train/dev files start directly with data; its test file has a header.
            header = list(spec.headerless_columns)
            pending = [first]
        else:
            header = first
            pending = []
        needed = list(spec.tsv_text_columns) + ([spec.tsv_label_column] if with_labels else [])
        for column in needed:
            if column not in header:
                raise ValueError(f"GLUE file {path!r} has no column {column!r} (task "
                                 f"{spec.name} needs {needed}); its header is {header}")
        text_index = [header.index(c) for c in spec.tsv_text_columns]
        label_index = header.index(spec.tsv_label_column) if with_labels else None
        width = max(text_index + ([label_index] if with_labels else [])) + 1

        def rows():
            line = 1   # line of the first data row when it is the file's first line
            for row in pending:
                yield line, row
            for row in reader:
                yield reader.line_num, row

        for line, row in rows():
            if max_examples is not None and len(texts[0]) >= max_examples:
                break
            if not row:   # a blank line (e.g. at the end of the file)
                continue
            where = f"{path}, line {line}"
            if len(row) < width:
                raise ValueError(f"{where}: the row has {len(row)} fields, fewer than the "
                                 f"{width} needed for columns {needed}")
            for column_texts, i in zip(texts, text_index):
                column_texts.append(row[i])
            if with_labels:
                labels.append(_parse_label(spec, row[label_index], where))
    if not texts[0]:
        raise ValueError(f"GLUE file {path!r} has no examples (task {spec.name}, split {split})")
    return GlueSplit(spec, split, texts[0], texts[1] if spec.is_pair else None,
                     _labels_array(spec, labels) if with_labels else None, source=path)


def _load_from_hub(spec: TaskSpec, split: str, max_examples: int | None) -> GlueSplit:
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
    labels = _labels_array(spec, list(dataset["label"]))
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


# --------------------------------------------------------------------------- sources
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
    max_examples = _check_max_examples(max_examples)
    source = glue_source(data_dir, task=spec)
    if source == HUB:
        return _load_from_hub(spec, split, max_examples)
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
