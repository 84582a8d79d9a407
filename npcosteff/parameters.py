"""The parameters of a model: one ordered list of names, with shapes, that drives loading,
saving, the optimizer and the parity tests, and Hugging Face's initialization.

Names follow Hugging Face's BERT (``encoder.layer.{i}.attention.self.query.weight`` ...), plus
``embeddings.word_embeddings.projection`` for a low-rank word embedding and ``exits.{i}.*``
for the exit after layer i (0-based).
"""

from __future__ import annotations

import numpy as np

from .config import CostEffConfig
from .heads import PROJECTIONS

__all__ = ["param_shapes", "init_params"]


def param_shapes(config: CostEffConfig) -> dict:
    """The ordered parameter names of a model with this config, with their shapes."""
    c = config
    d = c.hidden_size
    shapes = {}
    if c.embedding_rank is None:
        shapes["embeddings.word_embeddings.weight"] = (c.vocab_size, d)
    else:
        shapes["embeddings.word_embeddings.weight"] = (c.vocab_size, c.embedding_rank)
        shapes["embeddings.word_embeddings.projection"] = (c.embedding_rank, d)
    shapes["embeddings.position_embeddings.weight"] = (c.max_position_embeddings, d)
    shapes["embeddings.token_type_embeddings.weight"] = (c.type_vocab_size, d)
    shapes["embeddings.LayerNorm.weight"] = (d,)
    shapes["embeddings.LayerNorm.bias"] = (d,)
    for i in range(c.num_hidden_layers):
        A, F = c.attention_width(i), c.intermediate_per_layer[i]
        pre = f"encoder.layer.{i}."
        for proj in PROJECTIONS:
            shapes[f"{pre}attention.self.{proj}.weight"] = (A, d)
            shapes[f"{pre}attention.self.{proj}.bias"] = (A,)
        # each block ends in a dense layer back to d, then LayerNorm; the FFN's first dense comes between
        for block, width in (("attention.output", A), ("intermediate", None), ("output", F)):
            if width is None:
                shapes[f"{pre}intermediate.dense.weight"] = (F, d)
                shapes[f"{pre}intermediate.dense.bias"] = (F,)
                continue
            shapes[f"{pre}{block}.dense.weight"] = (d, width)
            shapes[f"{pre}{block}.dense.bias"] = (d,)
            shapes[f"{pre}{block}.LayerNorm.weight"] = (d,)
            shapes[f"{pre}{block}.LayerNorm.bias"] = (d,)
    for i in c.exit_layers:
        if c.pooler == "dense":
            shapes[f"exits.{i}.pooler.dense.weight"] = (d, d)
            shapes[f"exits.{i}.pooler.dense.bias"] = (d,)
        shapes[f"exits.{i}.classifier.weight"] = (c.num_labels, d)
        shapes[f"exits.{i}.classifier.bias"] = (c.num_labels,)
    return shapes


def init_params(config: CostEffConfig, dtype=np.float32, seed=0, names=None) -> dict:
    """Fresh parameters as Hugging Face initializes BERT: N(0, initializer_range) weights,
    zero biases, LayerNorm weight 1 and bias 0."""
    rng = np.random.default_rng(seed)
    std = config.initializer_range
    out = {}
    for name, shape in param_shapes(config).items():
        if names is not None and name not in names:
            continue
        if "LayerNorm.weight" in name:
            out[name] = np.ones(shape, dtype)
        elif name.endswith(".bias") or "LayerNorm" in name:
            out[name] = np.zeros(shape, dtype)
        else:
            out[name] = (rng.standard_normal(shape) * std).astype(dtype)
    return out
