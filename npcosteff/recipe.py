"""Recipes: every setting of a COST-EFF run (docs/method.md, 6) in one dataclass, with presets.

A :class:`Recipe` says which task to learn, how much of it to read, and the hyperparameters
of the five stages:

1. fine-tune the pretrained model (the teacher)            ``finetune_*``
2. train the multi-exit teacher-assistant (TA)             ``ta_*``
3. slenderize the TA to the target widths                  ``heads``, ``ffn``, ``rank``, ``prune_*`` ...
4. recover the slender student by distillation             ``recover_*``
5. evaluate every exit and sweep early-exit thresholds     ``criterion``, ``thresholds``

plus the ablations of the paper as switches (``use_ta``, ``use_exits``, ``use_slenderize``,
``last_exit_only``).

Presets, named recipes for the packaged MiniLM and for BERT-base, live in
:mod:`npcosteff.presets` (``quick``, ``mrpc``, ``rte``, ``stsb``, ``cola``, ``sst2``,
``bert-base``); a file or dictionary names one with its ``preset`` key.

Recipe files (JSON or TOML, read by :func:`npcosteff.presets.load_recipe`) have the field
names below as keys; an optional ``preset`` key names the preset the file starts from::

    # recipe.toml
    preset = "quick"
    task = "mrpc"
    max_train = 1000
    thresholds = [0.0, 0.1, 0.2, 0.4]

Unknown keys are an error that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass
from typing import Optional

from .config import POOLERS
from .data.glue import get_task
from .early_exit import CRITERIA, DEFAULT_ENTROPY_THRESHOLDS
from .equilibrium import EQUILIBRIUM_SETTINGS

__all__ = ["Recipe", "RecipeError", "parse_override"]


class RecipeError(ValueError):
    """A recipe that cannot be run: unknown key or preset, wrong type, value out of range."""


@dataclass
class Recipe:
    """All settings of a COST-EFF run. Defaults: the authors' BERT-base scripts (docs/method.md, 6)."""

    name: str = "custom"                     # preset (or file) the recipe came from, for reports
    task: str = "sst2"                       # GLUE task (any alias: "SST-2", "sst2", ...)
    model: Optional[str] = None              # pretrained BERT folder; None: the packaged MiniLM
    max_length: int = 128                    # tokens per example, special tokens included
    max_train: Optional[int] = None          # keep the first N training examples (None: all)
    max_eval: Optional[int] = None           # keep the first N dev examples (None: all)
    dtype: str = "float32"                   # float32 | float64
    pooler: Optional[str] = None             # exits' pooler: cls_tanh | mean | dense (None: cls_tanh)
    teacher_pooler: Optional[str] = "dense"  # the teacher's pooler; dense starts from BERT's pretrained pooler
    gradient_equilibrium: str = "authors"    # authors | exit_layers | off (docs/method.md, 2)
    regression_distill: str = "all"          # regression: distill every exit (all) or the last (final, the authors')
    seed: int = 42                           # every stage from the TA on: data order, dropout, new exits
    teacher_seed: int = 42                   # the teacher's fine-tuning (one teacher for several seeds)
    selection: str = "heldout"               # checkpoints: best on a held-out tenth of train (heldout) | last
    eval_batch_size: int = 64
    weight_decay: float = 0.01               # AdamW; none on biases and LayerNorm
    exit_lr_multiplier: float = 1.0          # the exits' learning rate over each stage's (TA, pruning, recovery)
    warmup_proportion: float = 0.1           # linear warmup, then linear decay
    max_grad_norm: float = 1.0
    temperature: float = 1.0                 # prediction distillation T
    eval_every: Optional[int] = None         # steps between dev evaluations (None: once per epoch)
    log_every: int = 20                      # steps per metrics.jsonl training record

    # 1. fine-tuning: the teacher (one classifier after the last layer, hard loss)
    finetune_epochs: float = 3.0
    finetune_learning_rate: float = 2e-5
    finetune_batch_size: int = 32
    finetune_max_steps: Optional[int] = None  # overrides the epochs when set

    # 2. the teacher-assistant: exits after every layer, `hidden` then `pred_ta` distillation
    ta_epochs: float = 3.0
    ta_learning_rate: float = 2e-5
    ta_batch_size: int = 32
    ta_max_steps: Optional[int] = None
    ta_hidden_fraction: float = 1 / 3        # the TA's `hidden` epochs: ta_epochs * ta_hidden_fraction
    ta_schedule: str = "authors"             # authors: then ta_epochs of `pred_ta`; split: the rest of ta_epochs

    # 3. slenderization (docs/method.md, 5)
    heads: int = 2                           # target heads per layer H'
    ffn: Optional[int] = 512                 # target FFN width F' (None: not pruned)
    rank: Optional[int] = 128                # target word-embedding rank r (None: not factorized)
    prune_period: float = 1.0                # epochs of each pruning period
    prune_timing: str = "end"                # end: train a period, then prune (the authors'); start: prune first
    repr_proportion: float = 0.6             # share of a period on `hidden`, the rest on `pred`
    prune_learning_rate: float = 1e-5
    lr_restore: float = 0.12                 # the period after prune t peaks at lr * (1 + lr_restore)^t
    min_warmup_steps: int = 10               # a period warms up over max(min_warmup_steps, warmup_proportion)
    prune_batch_size: int = 32
    importance_examples: Optional[int] = None  # training examples scored before each prune (None: all)
    importance_hidden_loss: str = "padded"   # padded: MSE over max_length tokens (the authors'); per_token
    last_exit_hard: bool = False             # the last-exit ablation keeps 0.1 x hard (the authors' has none)

    # 4. recovery: `hidden` then `pred` distillation from the TA
    recover_hidden_epochs: float = 3.0
    recover_pred_epochs: float = 3.0
    recover_hidden_learning_rate: float = 3e-5
    recover_pred_learning_rate: float = 2e-5
    recover_batch_size: int = 32
    recover_hidden_max_steps: Optional[int] = None
    recover_pred_max_steps: Optional[int] = None

    # 5. early exit
    criterion: str = "entropy"               # entropy | max_prob | patience
    thresholds: tuple = DEFAULT_ENTROPY_THRESHOLDS   # the sweep (patience: integers)
    summary_thresholds: tuple = ()                   # the summary's columns (empty: three spread over thresholds)

    # ablations (docs/method.md, 4-6); all on / off as in the paper's own method
    use_ta: bool = True            # False: no TA; the student starts from, and learns from, the teacher
    use_exits: bool = True         # False: the slender student keeps only the final exit
    use_slenderize: bool = True    # False: no slenderization; the TA is the final model
    last_exit_only: bool = False   # True: importance from the last exit's loss only

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), _field_types()[f.name]))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`RecipeError` naming the first setting that cannot be run."""
        try:
            self.task = get_task(self.task).name
        except ValueError as e:
            raise RecipeError(str(e)) from None
        if self.dtype not in ("float32", "float64"):
            raise RecipeError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        positive = ["max_length", "eval_batch_size", "log_every", "finetune_batch_size", "ta_batch_size",
                    "heads", "prune_batch_size", "recover_batch_size"]
        optional_positive = ["max_train", "max_eval", "eval_every", "finetune_max_steps", "ta_max_steps", "ffn",
                             "rank", "importance_examples", "recover_hidden_max_steps", "recover_pred_max_steps"]
        for key in positive + optional_positive:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise RecipeError(f"{key} must be >= 1, got {value}")
        if self.max_length < 3:        # [CLS] A [SEP] B [SEP]: a pair needs room for three special tokens
            raise RecipeError(f"max_length must be >= 3, got {self.max_length}")
        for key in ("finetune_epochs", "ta_epochs", "prune_period", "recover_hidden_epochs",
                    "recover_pred_epochs", "temperature", "exit_lr_multiplier"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise RecipeError(f"{key} must be a number > 0, got {value}")
        for key in ("finetune_learning_rate", "ta_learning_rate", "prune_learning_rate",
                    "recover_hidden_learning_rate", "recover_pred_learning_rate", "weight_decay", "lr_restore",
                    "max_grad_norm"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise RecipeError(f"{key} must be a number >= 0, got {value}")
        for key in ("warmup_proportion", "repr_proportion"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise RecipeError(f"{key} must lie in [0, 1], got {getattr(self, key)}")
        if not 0.0 < self.ta_hidden_fraction < 1.0:
            raise RecipeError(f"ta_hidden_fraction must lie strictly between 0 and 1 (the TA trains "
                              f"`hidden`, then `pred_ta`), got {self.ta_hidden_fraction}")
        choices = {"gradient_equilibrium": EQUILIBRIUM_SETTINGS, "regression_distill": ("all", "final"),
                   "selection": ("heldout", "last"),
                   "ta_schedule": ("authors", "split"), "prune_timing": ("end", "start"),
                   "importance_hidden_loss": ("padded", "per_token")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise RecipeError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.min_warmup_steps < 0:
            raise RecipeError(f"min_warmup_steps must be >= 0, got {self.min_warmup_steps}")
        if self.teacher_pooler is not None and self.teacher_pooler not in POOLERS:
            raise RecipeError(f"teacher_pooler must be one of {POOLERS} (or none for the default), "
                              f"got {self.teacher_pooler!r}")
        if self.pooler is not None and self.pooler not in POOLERS:
            raise RecipeError(f"pooler must be one of {POOLERS} (or none for the default), got {self.pooler!r}")
        if self.criterion not in CRITERIA:
            raise RecipeError(f"unknown early-exit criterion {self.criterion!r}; choose one of {CRITERIA}")
        if not self.thresholds:
            raise RecipeError("thresholds is empty: the sweep needs at least one threshold")
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
            raise RecipeError(f"summary_thresholds {missing} are not among the sweep's thresholds "
                              f"{list(self.thresholds)}")
        if self.criterion != "patience" and get_task(self.task).is_regression:
            raise RecipeError(f"task {self.task} is a regression task: early exit needs criterion = 'patience' "
                              f"(entropy and max_prob need class probabilities)")

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

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict:
        """The recipe as plain JSON types (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes) -> "Recipe":
        """A copy with `changes` applied and checked (unknown keys are an error)."""
        _check_keys(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict, base: Optional["Recipe"] = None) -> "Recipe":
        """A recipe from a dictionary of fields, starting from `base` (None: the defaults).

        A dictionary that names a ``preset`` is read by `npcosteff.presets.recipe_from_dict`."""
        if "preset" in d:
            raise RecipeError("a recipe that names a preset is read by npcosteff.presets.recipe_from_dict "
                              "(or load_recipe)")
        return (base or cls()).replace(**d)

    # ------------------------------------------------------------------ stage arguments
    def finetune_arguments(self, progress=True):
        """TrainingArguments of stage 1 (`stages.finetune` sets objective `hard`, final exit only)."""
        from .train import TrainingArguments

        # The teacher's one head learns at the stage's rate (plain fine-tuning), from its own seed.
        common = {**self._common(progress), "exit_lr_multiplier": 1.0, "seed": self.teacher_seed}
        return TrainingArguments(task=self.task, objective="hard", final_only=True, epochs=self.finetune_epochs,
                                 max_steps=self.finetune_max_steps, batch_size=self.finetune_batch_size,
                                 learning_rate=self.finetune_learning_rate, **common)

    def ta_arguments(self, progress=True):
        """TrainingArguments of stage 2 (`stages.train_ta` splits them into `hidden` and `pred_ta`)."""
        from .train import TrainingArguments

        return TrainingArguments(task=self.task, objective="hard", final_only=False, epochs=self.ta_epochs,
                                 max_steps=self.ta_max_steps, batch_size=self.ta_batch_size,
                                 learning_rate=self.ta_learning_rate, **self._common(progress))

    def slenderize_arguments(self, progress=True):
        """SlenderizeArguments of stage 3; its shared training settings peak at ``prune_learning_rate``."""
        from .stages import SlenderizeArguments
        from .train import TrainingArguments

        training = TrainingArguments(task=self.task, batch_size=self.prune_batch_size,
                                     learning_rate=self.prune_learning_rate, **self._common(progress))
        return SlenderizeArguments(
            task=self.task, heads=self.heads, ffn=self.ffn, embedding_rank=self.rank,
            prune_period=self.prune_period, prune_timing=self.prune_timing, repr_proportion=self.repr_proportion,
            lr_restore=self.lr_restore, min_warmup_steps=self.min_warmup_steps,
            importance_examples=self.importance_examples, importance_hidden_loss=self.importance_hidden_loss,
            importance_equilibrium=self.gradient_equilibrium, last_exit_only=self.last_exit_only,
            last_exit_hard=self.last_exit_hard, flops_tokens=self.max_length, training=training)

    def recover_arguments(self, progress=True):
        """RecoverArguments of stage 4."""
        from .stages import RecoverArguments
        from .train import TrainingArguments

        return RecoverArguments(
            task=self.task, hidden_epochs=self.recover_hidden_epochs, pred_epochs=self.recover_pred_epochs,
            hidden_learning_rate=self.recover_hidden_learning_rate,
            pred_learning_rate=self.recover_pred_learning_rate, hidden_max_steps=self.recover_hidden_max_steps,
            pred_max_steps=self.recover_pred_max_steps,
            training=TrainingArguments(task=self.task, batch_size=self.recover_batch_size, **self._common(progress)))

    def _common(self, progress):
        return dict(eval_batch_size=self.eval_batch_size, weight_decay=self.weight_decay,
                    exit_lr_multiplier=self.exit_lr_multiplier,
                    gradient_equilibrium=self.gradient_equilibrium, regression_distill=self.regression_distill,
                    warmup_proportion=self.warmup_proportion, max_grad_norm=self.max_grad_norm,
                    temperature=self.temperature, eval_every=self.eval_every, log_every=self.log_every,
                    seed=self.seed, progress=progress)


# --------------------------------------------------------------------------- field types
_TYPES = None


def _field_types() -> dict:
    """Field name -> its annotation, resolved once (the module uses postponed annotations)."""
    global _TYPES
    if _TYPES is None:
        _TYPES = typing.get_type_hints(Recipe)
    return _TYPES


def _check_keys(d: dict) -> None:
    known = [f.name for f in dataclasses.fields(Recipe)]
    for key in d:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecipeError(f"unknown recipe key {key!r}{hint}")


def _coerce(key, value, annotation):
    """`value` as the type of field `key`, or a RecipeError naming the key."""
    optional = typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)
    if optional:
        if value is None:
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    elif value is None:
        raise RecipeError(f"{key} cannot be null/None")

    def wrong(expected):
        return RecipeError(f"{key} must be {expected}, got {value!r} ({type(value).__name__})")

    if annotation is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise wrong("an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if annotation is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                       for v in value):
            raise wrong("a list of numbers")
        return tuple(float(v) for v in value)
    raise TypeError(f"no coercion for field {key} of type {annotation}")   # a new field type: extend _coerce


def parse_override(text: str) -> tuple:
    """``"key=value"`` from the command line -> (key, value of the field's type).

    Values: numbers, ``true``/``false``, ``none``/``null`` for optional fields, and
    comma-separated numbers for lists (``thresholds=0,0.1,0.3``).
    """
    if "=" not in text:
        raise RecipeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = (s.strip() for s in text.split("=", 1))
    _check_keys({key: None})
    annotation = _field_types()[key]
    optional = typing.get_origin(annotation) is typing.Union
    base = next(a for a in typing.get_args(annotation) if a is not type(None)) if optional else annotation
    if raw.lower() in ("none", "null") and optional:
        return key, None
    try:
        if base is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return key, raw.lower() in ("true", "1", "yes")
        if base is int:
            return key, int(raw)
        if base is float:
            return key, float(raw)
        if base is tuple:
            return key, tuple(float(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise RecipeError(f"{key}={raw!r}: not a valid {base.__name__}") from None
    return key, raw
