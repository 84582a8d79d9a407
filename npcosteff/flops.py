"""Parameter and FLOPs counters for a (slender, multi-exit) BERT (docs/method.md, 8).

Parameters are counted analytically from a :class:`~npcosteff.config.CostEffConfig`; the
counts follow the parameter table of ``docs/architecture.md`` name by name.

FLOPs are those of one sequence of ``n`` tokens, with a multiply-add counted as 2 FLOPs
and only the matrix products counted (docs/method.md, 8). In layer i, with A_i = H_i * d_h::

    Q, K, V and attention output    4 * 2 n d A_i
    scores Q K^T and context P V    2 * 2 n^2 A_i
    FFN (intermediate and output)   2 * 2 n d F_i

plus ``2 n r d`` for a factorized word embedding ``E[ids] @ P`` and ``2 d C`` per exit
(``+ 2 d d`` with the dense pooler). Bias additions, residuals, softmax, GELU and
LayerNorm are not in these totals; :func:`layer_flops` can report the elementwise work
separately (``elementwise=True``) under per-element costs stated below.
"""

from __future__ import annotations

import operator

from .config import CostEffConfig

__all__ = [
    "count_parameters", "count_parameters_of", "layer_flops", "exit_flops",
    "embedding_flops", "model_flops", "flops_per_exit",
    "SOFTMAX_FLOPS_PER_SCORE", "GELU_FLOPS_PER_ELEMENT", "LAYER_NORM_FLOPS_PER_ELEMENT",
]

# Per-element costs of the elementwise work (each arithmetic operation, comparison or
# transcendental function = 1 FLOP). They are conventions, reported apart from the totals.
SOFTMAX_FLOPS_PER_SCORE = 5        # running max, subtract, exp, sum, divide
GELU_FLOPS_PER_ELEMENT = 5         # x / sqrt(2), erf, + 1, * x, * 0.5
LAYER_NORM_FLOPS_PER_ELEMENT = 7   # mean sum, subtract, square, variance sum, * rstd, * gamma, + beta


def _count(value, what: str, minimum: int) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


def _layer_index(config: CostEffConfig, i) -> int:
    i = _count(i, "layer index i", 0)
    if i >= config.num_hidden_layers:
        raise ValueError(f"layer index {i} is outside 0..{config.num_hidden_layers - 1} "
                         f"(the model has {config.num_hidden_layers} layers)")
    return i


# --------------------------------------------------------------------------- parameters
def count_parameters(config: CostEffConfig, include_exits: bool = True) -> dict:
    """Number of parameters of the model ``config`` describes, with a breakdown.

    Returns a dictionary::

        {"embeddings": {"word_embeddings", "projection", "position_embeddings",
                        "token_type_embeddings", "LayerNorm", "total"},
         "layers": [{"attention", "ffn", "layernorm", "total"}, ...],   # one per layer
         "exits":  [{"layer", "pooler", "classifier", "total"}, ...],   # "layer" 0-based
         "embeddings_total", "layers_total", "exits_total", "total"}

    ``attention`` holds Q, K, V and the attention output dense (weights and biases), ``ffn``
    the intermediate and output dense, ``layernorm`` the layer's two LayerNorms. The
    ``projection`` P exists only when the word embedding is factorized (0 otherwise).
    ``include_exits=False`` leaves the exits out (a plain encoder, as a ``BertModel``
    checkpoint without its pooler).
    """
    d = config.hidden_size
    r = config.embedding_rank
    word = config.vocab_size * (d if r is None else r)            # E: (V, d) or (V, r)
    projection = 0 if r is None else r * d                        # P: (r, d)
    embeddings = {
        "word_embeddings": word,
        "projection": projection,
        "position_embeddings": config.max_position_embeddings * d,
        "token_type_embeddings": config.type_vocab_size * d,
        "LayerNorm": 2 * d,
    }
    embeddings["total"] = sum(embeddings.values())

    layers = []
    for i in range(config.num_hidden_layers):
        A = config.attention_width(i)
        F = config.intermediate_per_layer[i]
        attention = 3 * (A * d + A) + (d * A + d)                 # query/key/value, output.dense
        ffn = (F * d + F) + (d * F + d)                           # intermediate.dense, output.dense
        layernorm = 2 * (2 * d)                                   # attention.output and output LayerNorms
        layers.append({"attention": attention, "ffn": ffn, "layernorm": layernorm,
                       "total": attention + ffn + layernorm})

    exits = []
    if include_exits:
        C = config.num_labels
        for i in config.exit_layers:
            pooler = d * d + d if config.pooler == "dense" else 0
            classifier = C * d + C
            exits.append({"layer": i, "pooler": pooler, "classifier": classifier,
                          "total": pooler + classifier})

    out = {"embeddings": embeddings, "layers": layers, "exits": exits,
           "embeddings_total": embeddings["total"],
           "layers_total": sum(layer["total"] for layer in layers),
           "exits_total": sum(e["total"] for e in exits)}
    out["total"] = out["embeddings_total"] + out["layers_total"] + out["exits_total"]
    return out


def count_parameters_of(params: dict) -> int:
    """Total number of elements of a dictionary of arrays (``None`` entries count 0)."""
    return sum(int(p.size) for p in params.values() if p is not None)


# --------------------------------------------------------------------------- FLOPs
def layer_flops(config: CostEffConfig, i: int, n_tokens: int, elementwise: bool = False) -> dict:
    """FLOPs of layer ``i`` (0-based) on one sequence of ``n_tokens`` tokens.

    Keys: ``qkv`` (3 * 2 n d A), ``attention_output`` (2 n d A), ``attention_scores``
    (2 n^2 A), ``attention_context`` (2 n^2 A), ``ffn_intermediate`` (2 n d F),
    ``ffn_output`` (2 n d F) and their sum ``total``.

    With ``elementwise=True`` a separate ``"elementwise"`` dictionary (not part of
    ``total``) counts the softmax over the H_i n^2 scores, the GELU over the n F_i
    intermediate activations and the two LayerNorms over n d values each, at the
    per-element costs of this module's constants, with its own ``total``.
    """
    i = _layer_index(config, i)
    n = _count(n_tokens, "n_tokens", 1)
    d = config.hidden_size
    A = config.attention_width(i)
    F = config.intermediate_per_layer[i]
    flops = {
        "qkv": 3 * 2 * n * d * A,                 # three (n, d) x (d, A) products
        "attention_output": 2 * n * A * d,        # (n, A) x (A, d)
        "attention_scores": 2 * n * n * A,        # per head (n, d_h) x (d_h, n), H_i heads
        "attention_context": 2 * n * n * A,       # per head (n, n) x (n, d_h)
        "ffn_intermediate": 2 * n * d * F,        # (n, d) x (d, F)
        "ffn_output": 2 * n * F * d,              # (n, F) x (F, d)
    }
    flops["total"] = sum(flops.values())
    if elementwise:
        extra = {
            "softmax": SOFTMAX_FLOPS_PER_SCORE * config.heads_per_layer[i] * n * n,
            "gelu": GELU_FLOPS_PER_ELEMENT * n * F,
            "layer_norm": LAYER_NORM_FLOPS_PER_ELEMENT * 2 * n * d,
        }
        extra["total"] = sum(extra.values())
        flops["elementwise"] = extra
    return flops


def exit_flops(config: CostEffConfig) -> int:
    """FLOPs of one exit on one sequence: classifier ``2 d C`` (+ ``2 d d`` for the dense pooler).

    0 for a model without exits (``num_labels == 0``).
    """
    if config.num_labels == 0:
        return 0
    d = config.hidden_size
    pooler = 2 * d * d if config.pooler == "dense" else 0
    return pooler + 2 * d * config.num_labels


def embedding_flops(config: CostEffConfig, n_tokens: int) -> int:
    """FLOPs of the word embedding: ``2 n r d`` for ``E[ids] @ P``, 0 for a plain lookup."""
    n = _count(n_tokens, "n_tokens", 1)
    if config.embedding_rank is None:
        return 0
    return 2 * n * config.embedding_rank * config.hidden_size


def model_flops(config: CostEffConfig, n_tokens: int, exit_layer=None,
                intermediate_exits: bool = True) -> int:
    """FLOPs of a forward pass over one sequence that stops after layer ``exit_layer``.

    ``exit_layer`` is 1-based (None: the whole model). The count is the embedding, the
    layers 1..exit_layer and the exits evaluated on the way: early exit evaluates every
    exit from ``exit_start`` up to the one it leaves at. ``intermediate_exits=False``
    counts only the exit at ``exit_layer`` (a static model that uses one classifier).
    When the model has exits, ``exit_layer`` must be one of them.
    """
    L = config.num_hidden_layers
    n = _count(n_tokens, "n_tokens", 1)
    if exit_layer is None:
        stop = L
    else:
        stop = _count(exit_layer, "exit_layer", 1)
        if stop > L:
            raise ValueError(f"exit_layer {stop} is outside 1..{L} (the model has {L} layers)")
        if config.num_labels > 0 and stop - 1 not in config.exit_layers:
            raise ValueError(f"layer {stop} has no exit: exits are after layers "
                             f"{config.exit_start}..{L} (1-based)")
    total = embedding_flops(config, n)
    total += sum(layer_flops(config, i, n)["total"] for i in range(stop))
    evaluated = [i for i in config.exit_layers if i < stop]
    if not intermediate_exits:
        evaluated = [i for i in evaluated if i == stop - 1]
    total += len(evaluated) * exit_flops(config)
    return total


def flops_per_exit(config: CostEffConfig, n_tokens: int) -> list:
    """``model_flops`` for a sample leaving at each exit, shallowest first (empty without exits)."""
    return [model_flops(config, n_tokens, exit_layer=i + 1) for i in config.exit_layers]
