"""The nine GLUE tasks: what each one reads, predicts and is scored with, and how to read a
split from a folder in GLUE's TSV layout or from the Hugging Face hub (where a split comes
from is decided in `npcosteff.data.sources`).

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


def check_max_examples(max_examples):
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


def labels_array(spec: TaskSpec, values: list) -> np.ndarray:
    return np.asarray(values, dtype=np.float32 if spec.is_regression else np.int64)


def _undecodable_line(path) -> int:
    """The first line of file `path` that is not UTF-8 (1-based; 0 when every line is)."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return 0


class _TsvRows:
    """The rows of an open TSV file (a csv reader: tab separated, no quoting); a file that is
    not UTF-8 text, or not TSV, raises a ValueError naming the file and line."""

    def __init__(self, f, path):
        self._reader, self._path = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), path

    @property
    def line_num(self) -> int:
        return self._reader.line_num

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._reader)
        except UnicodeDecodeError as e:
            raise ValueError(f"{self._path}, line {_undecodable_line(self._path)}: not UTF-8 text ({e.reason}): is it "
                             f"a GLUE TSV file?") from None
        except csv.Error as e:
            raise ValueError(f"{self._path}, line {self.line_num}: not a GLUE TSV row ({e})") from None


def read_glue_tsv(spec: TaskSpec, path: str, split: str,
                  max_examples: int | None = None) -> GlueSplit:
    """Read one GLUE TSV file (tab separated, no quoting, header row except CoLA train/dev).

    Rows are read in file order; `max_examples` keeps the first N. Labels are read unless the
    split is a test split (GLUE's test files have no label column).
    """
    max_examples = check_max_examples(max_examples)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GLUE file {path!r} does not exist (task {spec.name}, split "
                                f"{split})")
    with_labels = not split.startswith("test")
    texts: list[list[str]] = [[] for _ in spec.tsv_text_columns]
    labels: list = []
    # utf-8-sig drops the byte-order mark that starts MRPC's files; QUOTE_NONE because GLUE's
    # sentences contain bare quote characters that are text, not CSV quoting.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = _TsvRows(f, path)
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
                     labels_array(spec, labels) if with_labels else None, source=path)
