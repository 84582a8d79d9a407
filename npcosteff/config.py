"""`CostEffConfig`: a Hugging Face BERT ``config.json`` plus COST-EFF's widths and exits.

The BERT fields keep their Hugging Face names, so a ``config.json`` of any BERT checkpoint
reads unchanged. The COST-EFF extras (docs/method.md, 1) say how slender each layer is and where the
exits are:

* ``heads_per_layer[i]`` -- H_i heads kept in layer i (attention inner width H_i * d_h);
* ``intermediate_per_layer[i]`` -- F_i FFN neurons kept in layer i;
* ``embedding_rank`` -- r of the factorized word embedding ``E[ids] @ P`` (None: no factorization);
* ``num_labels``, ``exit_start`` (1-based), ``pooler``, ``problem_type`` -- the exits.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

POOLERS = ("cls_tanh", "mean", "dense")
PROBLEM_TYPES = ("single_label_classification", "regression")

# Fields of a Hugging Face config.json that npcosteff understands; others are kept verbatim
# in `extra` so that a saved config round-trips.
_HF_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id",
    "initializer_range",
)
_COSTEFF_FIELDS = (
    "heads_per_layer", "intermediate_per_layer", "attention_head_size", "embedding_rank",
    "num_labels", "exit_start", "pooler", "problem_type",
)


class ConfigError(ValueError):
    """A configuration that cannot describe a model."""


@dataclass
class CostEffConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    # COST-EFF extras (docs/method.md, 1). None means "the full width of the BERT fields above".
    heads_per_layer: Optional[list] = None
    intermediate_per_layer: Optional[list] = None
    attention_head_size: Optional[int] = None
    embedding_rank: Optional[int] = None
    num_labels: int = 0
    exit_start: int = 1
    pooler: str = "cls_tanh"
    problem_type: str = "single_label_classification"
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        L = self.num_hidden_layers
        if self.attention_head_size is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size {self.hidden_size} is not a multiple of "
                    f"num_attention_heads {self.num_attention_heads}")
            self.attention_head_size = self.hidden_size // self.num_attention_heads
        if self.heads_per_layer is None:
            self.heads_per_layer = [self.num_attention_heads] * L
        if self.intermediate_per_layer is None:
            self.intermediate_per_layer = [self.intermediate_size] * L
        self.heads_per_layer = [int(h) for h in self.heads_per_layer]
        self.intermediate_per_layer = [int(f) for f in self.intermediate_per_layer]
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        L = self.num_hidden_layers
        if L < 1:
            raise ConfigError(f"num_hidden_layers must be >= 1, got {L}")
        if self.hidden_act not in ("gelu", "gelu_python"):
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported (only the erf GELU, 'gelu')")
        for name, widths, full in (("heads_per_layer", self.heads_per_layer, self.num_attention_heads),
                                   ("intermediate_per_layer", self.intermediate_per_layer,
                                    self.intermediate_size)):
            if len(widths) != L:
                raise ConfigError(f"{name} has {len(widths)} entries for {L} layers")
            for i, w in enumerate(widths):
                if not 1 <= w <= full:
                    raise ConfigError(f"{name}[{i}] = {w} is outside 1..{full}")
        if self.embedding_rank is not None and not 1 <= self.embedding_rank <= self.hidden_size:
            raise ConfigError(f"embedding_rank {self.embedding_rank} is outside 1..{self.hidden_size}")
        if self.num_labels < 0:
            raise ConfigError(f"num_labels must be >= 0, got {self.num_labels}")
        if not 1 <= self.exit_start <= L:
            raise ConfigError(f"exit_start {self.exit_start} is outside 1..{L} (the model has {L} layers)")
        if self.pooler not in POOLERS:
            raise ConfigError(f"pooler {self.pooler!r} is not one of {POOLERS}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"problem_type {self.problem_type!r} is not one of {PROBLEM_TYPES}")
        if self.problem_type == "regression" and self.num_labels not in (0, 1):
            raise ConfigError(f"a regression model has num_labels 1, got {self.num_labels}")

    # ------------------------------------------------------------- derived
    @property
    def exit_layers(self) -> list:
        """0-based indices of the layers that have an exit (empty when num_labels == 0)."""
        if self.num_labels == 0:
            return []
        return list(range(self.exit_start - 1, self.num_hidden_layers))

    def attention_width(self, i: int) -> int:
        """A_i = H_i * d_h, the inner width of layer i's attention."""
        return self.heads_per_layer[i] * self.attention_head_size

    @property
    def is_regression(self) -> bool:
        return self.problem_type == "regression"

    # --------------------------------------------------------------- io
    @classmethod
    def from_dict(cls, d: dict, **overrides) -> "CostEffConfig":
        d = {**d, **overrides}
        # Hugging Face writes `"problem_type": null` for an unset problem type: keep our default.
        known = {k: d[k] for k in _HF_FIELDS + _COSTEFF_FIELDS if k in d and d[k] is not None}
        extra = {k: v for k, v in d.items() if k not in known and k not in ("extra", "model_type")}
        if d.get("model_type", "bert") not in ("bert", "costeff"):
            raise ConfigError(f"model_type {d.get('model_type')!r} is not a BERT")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError("only absolute position embeddings are supported")
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, path, **overrides) -> "CostEffConfig":
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config.json at {path}")
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d, **overrides)

    def to_dict(self) -> dict:
        d = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                d[f.name] = getattr(self, f.name)
        d["model_type"] = "bert"
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def replace(self, **changes) -> "CostEffConfig":
        d = self.to_dict()
        d.update(changes)
        return CostEffConfig.from_dict(d)
