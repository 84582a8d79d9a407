"""Recipes: every setting of a COST-EFF run (docs/method.md, 6), in sections that are exactly
what the method's stages take (npcosteff.stages).

A :class:`Recipe` has one section per concern:

========== ============================================== ==============================
section    what it holds                                  who takes it
========== ============================================== ==============================
data       the task, its length caps, dtype, selection    every stage (`load_data`)
training   what every training stage shares               every training stage
finetune   1. the teacher's fine-tuning                   `stages.finetune`
ta         2. the multi-exit teacher-assistant            `stages.train_ta`
slenderize 3. pruning in width                            `stages.slenderize`
recover    4. recovery by distillation                    `stages.recover`
early_exit the early-exit sweep                           `sweep`, the summary
========== ============================================== ==============================

plus the ablations of the paper as switches (``use_ta``, ``use_exits``, ``use_slenderize``;
importance from the last exit is ``slenderize.last_exit_only``).

A setting is named ``section.field`` everywhere: ``--set ta.epochs=2`` on the command line,
``recipe.replace({"ta.epochs": 2})`` in code, a ``[ta]`` table (TOML) or a ``"ta": {...}``
object (JSON) in a recipe file, and the keys a run folder records. Presets, named recipes for
the packaged MiniLM and for BERT-base, and recipe files live in :mod:`npcosteff.presets`::

    # recipe.toml
    preset = "quick"
    [data]
    task = "mrpc"
    max_train = 1000
    [early_exit]
    thresholds = [0.0, 0.1, 0.2, 0.4]

Unknown keys are an error that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Optional

from .data.glue import get_task
from .early_exit import CRITERIA, DEFAULT_ENTROPY_THRESHOLDS
from .equilibrium import EQUILIBRIUM_SETTINGS
from .values import RecipeError, at_least, choice, coerce, fraction, known_pooler, non_negative, positive

__all__ = ["Recipe", "RecipeError", "Data", "Training", "Finetune", "TeacherAssistant", "Slenderize", "Recover",
           "EarlyExit", "SECTIONS", "parse_override", "setting_names"]


# --------------------------------------------------------------------------- the sections
class _Section:
    """What every section does when it is made: each value as its field's type, then its checks."""

    def __post_init__(self):
        name = self.SECTION
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f"{name}.{f.name}", getattr(self, f.name), _types(type(self))[f.name]))
        self.check()


@dataclass
class Data(_Section):
    """The task and how much of it to read."""
    SECTION = "data"

    task: str = "sst2"                       # GLUE task (any alias: "SST-2", "sst2", ...)
    model: Optional[str] = None              # pretrained BERT folder; None: the packaged MiniLM
    max_length: int = 128                    # tokens per example, special tokens included
    max_train: Optional[int] = None          # keep the first N training examples (None: all)
    max_eval: Optional[int] = None           # keep the first N dev examples (None: all)
    dtype: str = "float32"                   # float32 | float64
    selection: str = "heldout"               # checkpoints: best on a held-out tenth of train (heldout) | last

    def check(self):
        try:
            self.task = get_task(self.task).name
        except ValueError as e:
            raise RecipeError(str(e)) from None
        choice(self, "dtype", ("float32", "float64"))
        choice(self, "selection", ("heldout", "last"))
        at_least(self, 1, "max_train", "max_eval")
        at_least(self, 3, "max_length")     # [CLS] A [SEP] B [SEP]: a pair needs three special tokens


@dataclass
class Training(_Section):
    """What every training stage shares (the teacher's fine-tuning has its own seed and trains
    its one classifier at its own rate)."""
    SECTION = "training"

    seed: int = 42                           # every stage from the TA on: data order, dropout, new exits
    weight_decay: float = 0.01               # AdamW; none on biases and LayerNorm
    warmup_proportion: float = 0.1           # linear warmup, then linear decay
    max_grad_norm: float = 1.0
    temperature: float = 1.0                 # prediction distillation T
    gradient_equilibrium: str = "authors"    # authors | exit_layers | off (npcosteff.equilibrium)
    regression_distill: str = "all"          # regression: distill every exit (all) or the last (final, the authors')
    exit_lr_multiplier: float = 1.0          # the exits' learning rate over each stage's (TA, pruning, recovery)
    group_by_length: bool = False            # training batches of similar lengths: less padding, same examples
    eval_every: Optional[int] = None         # steps between held-out evaluations (None: once per epoch)
    eval_batch_size: int = 64                # evaluation and the sweep
    log_every: int = 20                      # steps per metrics.jsonl training record

    def check(self):
        positive(self, "temperature", "exit_lr_multiplier")
        non_negative(self, "weight_decay", "max_grad_norm")
        fraction(self, "warmup_proportion")
        choice(self, "gradient_equilibrium", EQUILIBRIUM_SETTINGS)
        choice(self, "regression_distill", ("all", "final"))
        at_least(self, 1, "eval_every", "eval_batch_size", "log_every")


@dataclass
class _Run(_Section):
    """What a stage's training run is: how long, how fast, in what batches."""
    epochs: float = 3.0
    learning_rate: float = 2e-5
    batch_size: int = 32
    max_steps: Optional[int] = None          # overrides the epochs when set

    def check(self):
        positive(self, "epochs")
        non_negative(self, "learning_rate")
        at_least(self, 1, "batch_size", "max_steps")


@dataclass
class Finetune(_Run):
    """1. The teacher: the pretrained model with one classifier, plain fine-tuning."""
    SECTION = "finetune"

    pooler: Optional[str] = "dense"          # the teacher's pooler; dense starts from BERT's pretrained pooler
    seed: int = 42                           # one teacher for runs of several seeds

    def check(self):
        super().check()
        known_pooler(self)


@dataclass
class TeacherAssistant(_Run):
    """2. The TA: exits after every layer, `hidden` then `pred_ta` distillation from the teacher."""
    SECTION = "ta"

    hidden_fraction: float = 1 / 3           # the `hidden` epochs: epochs * hidden_fraction
    schedule: str = "authors"                # authors: then `epochs` of `pred_ta`; split: the rest of `epochs`
    pooler: Optional[str] = None             # the exits' pooler: cls_tanh | mean | dense (None: cls_tanh)

    def check(self):
        super().check()
        if not 0.0 < self.hidden_fraction < 1.0:
            raise RecipeError(f"ta.hidden_fraction must lie strictly between 0 and 1 (the TA trains `hidden`, "
                              f"then `pred_ta`), got {self.hidden_fraction}")
        choice(self, "schedule", ("authors", "split"))
        known_pooler(self)


@dataclass
class Slenderize(_Section):
    """3. Slenderization: prune the TA in width, a period of distillation around each prune
    (docs/method.md, 5)."""
    SECTION = "slenderize"

    heads: int = 2                           # target heads per layer H'
    ffn: Optional[int] = 512                 # target FFN width F' (None: not pruned)
    rank: Optional[int] = 128                # target word-embedding rank r (None: not factorized)
    period: float = 1.0                      # epochs of each pruning period
    timing: str = "end"                      # end: train a period, then prune (the authors'); start: prune first
    repr_proportion: float = 0.6             # share of a period on `hidden`, the rest on `pred`
    learning_rate: float = 1e-5              # the first period's peak
    lr_restore: float = 0.12                 # the period after prune t peaks at learning_rate * (1 + lr_restore)^t
    min_warmup_steps: int = 10               # a period warms up over max(min_warmup_steps, warmup_proportion)
    batch_size: int = 32
    importance_examples: Optional[int] = None  # training examples scored before each prune (None: all)
    importance_hidden_loss: str = "padded"   # padded: MSE over max_length tokens (the authors'); per_token
    last_exit_only: bool = False             # ablation: importance from the last exit's loss only
    last_exit_hard: bool = False             # the ablation keeps 0.1 x hard (the authors' has none)

    def check(self):
        at_least(self, 1, "heads", "ffn", "rank", "batch_size", "importance_examples")
        at_least(self, 0, "min_warmup_steps")
        positive(self, "period")
        non_negative(self, "learning_rate", "lr_restore")
        fraction(self, "repr_proportion")
        choice(self, "timing", ("end", "start"))
        choice(self, "importance_hidden_loss", ("padded", "per_token"))

    def period_learning_rate(self, t: int) -> float:
        """The peak learning rate of the period after prune t: ``learning_rate * (1 + lr_restore)^t``."""
        return self.learning_rate * (1.0 + self.lr_restore) ** t


@dataclass
class Recover(_Section):
    """4. Recovery: `hidden` then `pred` distillation from the TA."""
    SECTION = "recover"

    hidden_epochs: float = 3.0
    pred_epochs: float = 3.0
    hidden_learning_rate: float = 3e-5
    pred_learning_rate: float = 2e-5
    batch_size: int = 32
    hidden_max_steps: Optional[int] = None   # override the epochs when set
    pred_max_steps: Optional[int] = None

    def check(self):
        positive(self, "hidden_epochs", "pred_epochs")
        non_negative(self, "hidden_learning_rate", "pred_learning_rate")
        at_least(self, 1, "batch_size", "hidden_max_steps", "pred_max_steps")


@dataclass
class EarlyExit(_Section):
    """The early-exit sweep (docs/method.md, 7)."""
    SECTION = "early_exit"

    criterion: str = "entropy"                       # entropy | max_prob | patience
    thresholds: tuple = DEFAULT_ENTROPY_THRESHOLDS   # the sweep (patience: integers)
    summary_thresholds: tuple = ()                   # the summary's columns (empty: three spread over thresholds)
    target: float = 0.97                             # the operating point keeps this share of the teacher's
                                                     # held-out score (npcosteff/runs/operating.py)

    def check(self):
        choice(self, "criterion", CRITERIA)
        if not (math.isfinite(self.target) and 0 < self.target <= 1):
            raise RecipeError(f"early_exit.target must be a share of the teacher's score in (0, 1], got {self.target}")
        if not self.thresholds:
            raise RecipeError("early_exit.thresholds is empty: the sweep needs at least one threshold")
        for t in self.thresholds:
            if self.criterion == "patience":
                if t != int(t) or t < 1:
                    raise RecipeError(f"patience thresholds must be integers >= 1, got {t}")
            elif not (math.isfinite(t) and t >= 0):
                raise RecipeError(f"thresholds must be finite and >= 0, got {t}")
            elif self.criterion == "max_prob" and t > 1:
                raise RecipeError(f"max_prob thresholds are probabilities in [0, 1], got {t}")
        missing = [t for t in self.summary_thresholds if not any(math.isclose(t, s) for s in self.thresholds)]
        if missing:
            raise RecipeError(f"early_exit.summary_thresholds {missing} are not among the sweep's thresholds "
                              f"{list(self.thresholds)}")

    def summary_threshold_values(self) -> tuple:
        """The thresholds the summary reports: `summary_thresholds`, or when empty the ones at
        a quarter, half and three quarters of `thresholds` (0.1, 0.3, 0.5 for the default sweep)."""
        if self.summary_thresholds:
            return tuple(self.summary_thresholds)
        n = len(self.thresholds)
        picked = []
        for k in (n // 4, n // 2, (3 * n) // 4):
            if self.thresholds[k] not in picked:
                picked.append(self.thresholds[k])
        return tuple(picked)


SECTIONS = {"data": Data, "training": Training, "finetune": Finetune, "ta": TeacherAssistant,
            "slenderize": Slenderize, "recover": Recover, "early_exit": EarlyExit}
SWITCHES = ("name", "use_ta", "use_exits", "use_slenderize")


# --------------------------------------------------------------------------- the recipe
@dataclass
class Recipe:
    """All settings of a COST-EFF run. Defaults: the authors' BERT-base scripts (docs/method.md, 6)."""

    name: str = "custom"                     # preset (or file) the recipe came from, for reports
    data: Data = field(default_factory=Data)
    training: Training = field(default_factory=Training)
    finetune: Finetune = field(default_factory=Finetune)
    ta: TeacherAssistant = field(default_factory=TeacherAssistant)
    slenderize: Slenderize = field(default_factory=Slenderize)
    recover: Recover = field(default_factory=Recover)
    early_exit: EarlyExit = field(default_factory=EarlyExit)
    # ablations (docs/method.md, 4-6); all on as in the paper's own method
    use_ta: bool = True            # False: no TA; the student starts from, and learns from, the teacher
    use_exits: bool = True         # False: the slender student keeps only the final exit
    use_slenderize: bool = True    # False: no slenderization; the TA is the final model

    def __post_init__(self):
        for key in SWITCHES:
            setattr(self, key, coerce(key, getattr(self, key), _types(Recipe)[key]))
        for name, cls in SECTIONS.items():
            section = getattr(self, name)
            if isinstance(section, dict):
                section = _section(name, section, cls())      # made, so typed and checked
            elif not isinstance(section, cls):
                raise RecipeError(f"{name} must be a {cls.__name__} or a table of its settings, got {section!r}")
            setattr(self, name, section)
        if self.early_exit.criterion != "patience" and get_task(self.data.task).is_regression:
            raise RecipeError(f"task {self.data.task} is a regression task: early exit needs "
                              f"early_exit.criterion = 'patience' (entropy and max_prob need class probabilities)")

    @property
    def task(self) -> str:
        """The task's canonical name (``data.task``)."""
        return self.data.task

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict:
        """The recipe as plain JSON types: a table per section (tuples become lists)."""
        out = {key: getattr(self, key) for key in SWITCHES}
        for name in SECTIONS:
            out[name] = {k: list(v) if isinstance(v, tuple) else v
                         for k, v in dataclasses.asdict(getattr(self, name)).items()}
        return out

    def get(self, key: str):
        """The value of setting `key` (``section.field``, or a switch)."""
        section, _, name = _split_key(key)
        return getattr(self, key) if section is None else getattr(getattr(self, section), name)

    def replace(self, changes: Optional[dict] = None, **switches) -> "Recipe":
        """A copy with `changes` (``{"section.field": value}``, or a section name -> a table of
        its settings) and `switches` (``use_ta=False``, ``name=...``) applied and checked."""
        changes = {**(changes or {}), **switches}
        tables = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        top = {key: getattr(self, key) for key in SWITCHES}
        for key, value in changes.items():
            section, _, name = _split_key(key)
            if section is None and key in SECTIONS:
                if not isinstance(value, dict):
                    raise RecipeError(f"{key} must be a table of its settings, got {value!r}")
                for k, v in value.items():
                    _split_key(f"{key}.{k}")
                    tables[key][k] = v
            elif section is None:
                top[key] = value
            else:
                tables[section][name] = value
        return Recipe(**top, **tables)

    @classmethod
    def from_dict(cls, d: dict, base: Optional["Recipe"] = None) -> "Recipe":
        """A recipe from a dictionary (tables per section, or ``section.field`` keys), starting
        from `base` (None: the defaults). A dictionary that names a ``preset`` is read by
        `npcosteff.presets.recipe_from_dict`."""
        if "preset" in d:
            raise RecipeError("a recipe that names a preset is read by npcosteff.presets.recipe_from_dict "
                              "(or load_recipe)")
        return (base or cls()).replace(dict(d))


def setting_names(sections=tuple(SECTIONS)) -> list:
    """Every ``section.field`` name of the given sections, in declaration order."""
    return [f"{name}.{f.name}" for name in sections for f in dataclasses.fields(SECTIONS[name])]


# --------------------------------------------------------------------------- keys and types
def _split_key(key: str):
    """``"ta.epochs"`` -> ("ta", ".", "epochs"); a switch or a section name -> (None, "", key).
    An unknown key is a RecipeError that suggests the closest known one."""
    key = str(key)
    section, dot, name = key.partition(".")
    if not dot:
        if key in SWITCHES or key in SECTIONS:
            return None, "", key
    elif section in SECTIONS and name in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        return section, dot, name
    known = list(SWITCHES) + setting_names()
    renamed = key.replace("prune_", "slenderize.", 1).replace("teacher_", "finetune.", 1)
    close = [name for name in known if name.endswith("." + key) or name == renamed] or \
        difflib.get_close_matches(key.replace("_", ".", 1) if not dot else key, known, n=1) or \
        difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RecipeError(f"unknown recipe key {key!r}{hint}; settings are named section.field, sections: "
                      f"{', '.join(SECTIONS)}")


def _section(name, table: dict, base):
    """A section from a table of its settings over `base` (unknown keys are an error)."""
    for key in table:
        _split_key(f"{name}.{key}")
    return dataclasses.replace(base, **table)


_TYPE_CACHE = {}


def _types(cls) -> dict:
    """Field name -> its annotation, resolved once (the module uses postponed annotations)."""
    if cls not in _TYPE_CACHE:
        _TYPE_CACHE[cls] = typing.get_type_hints(cls)
    return _TYPE_CACHE[cls]


def field_type(key: str):
    """The type a setting takes (bool, int, float, str or tuple) and whether it may be None."""
    section, _, name = _split_key(key)
    annotation = _types(Recipe)[key] if section is None else _types(SECTIONS[section])[name]
    optional = typing.get_origin(annotation) is typing.Union
    base = next(a for a in typing.get_args(annotation) if a is not type(None)) if optional else annotation
    return base, optional


def parse_override(text: str) -> tuple:
    """``"section.field=value"`` from the command line -> (key, value of the field's type).

    Values: numbers, ``true``/``false``, ``none``/``null`` for optional fields, and
    comma-separated numbers for lists (``early_exit.thresholds=0,0.1,0.3``).
    """
    if "=" not in text:
        raise RecipeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = (s.strip() for s in text.split("=", 1))
    return key, parse_value(key, raw)


def parse_value(key: str, raw: str):
    """The text `raw` as a value of setting `key`."""
    base, optional = field_type(key)
    if raw.lower() in ("none", "null") and optional:
        return None
    try:
        if base is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
        if base is tuple:
            return tuple(float(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise RecipeError(f"{key}={raw!r}: not a valid {base.__name__}") from None
    return raw
