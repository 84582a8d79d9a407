"""Glue between npcosteff and the torch reference: the same weights, inputs and dropout masks
on both sides, and comparisons by parameter name."""

from __future__ import annotations

import numpy as np
import torch

from npcosteff.config import CostEffConfig
from npcosteff.model import CostEffModel
from npcosteff.nn.dropout import Dropout, ReplayDropout

from .reference import RefCostEffBert, to_numpy


def make_pair(config: CostEffConfig, dtype, device, seed=0, params=None):
    """An npcosteff model and a reference model holding copies of the same weights."""
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    model = CostEffModel(config, params=params, dtype=np_dtype, seed=seed)
    if params is None:
        # Hugging Face's init has all-ones LayerNorm gains and zero biases: symmetric values
        # hide mistakes in gradient tests, so perturb every parameter.
        rng = np.random.default_rng(seed + 1)
        for n, p in model.params.items():
            p += (0.05 * rng.standard_normal(p.shape)).astype(np_dtype)
    ref = RefCostEffBert(config.to_dict(), {n: p.copy() for n, p in model.params.items()},
                         dtype=dtype, device=device)
    return model, ref


def odd_config(**kw) -> CostEffConfig:
    """The odd-shaped config of the parity tests: 3 layers, d=48, 4 heads, FFN 80."""
    base = dict(vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=80,
                max_position_embeddings=40, type_vocab_size=2, num_labels=3, exit_start=1,
                initializer_range=0.1, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    base.update(kw)
    return CostEffConfig(**base)


def odd_batch(rng, vocab=97, B=4, T=11, lengths=(11, 7, 3, 9)):
    """Uneven right padding, two token types."""
    ids = rng.integers(1, vocab, (B, T))
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    tt = ((np.arange(T)[None, :] >= (np.array(lengths)[:, None] // 2)) & (mask == 1)).astype(np.int64)
    return ids * mask, mask, tt


def shared_dropout(model, ids, mask, tt, seed=0, **forward_kw):
    """Draw dropout masks by running npcosteff once; return them for both sides."""
    drop = Dropout(np.random.default_rng(seed), model.config.hidden_dropout_prob,
                   model.config.attention_probs_dropout_prob, record=True)
    model(ids, mask, tt, training=True, dropout=drop, **forward_kw)
    return drop.masks


def torch_masks(masks, ref):
    return {k: torch.as_tensor(v, dtype=next(ref.parameters()).dtype, device=ref.device) for k, v in masks.items()}


def replay(masks):
    return ReplayDropout(masks)


def torch_grads(ref) -> dict:
    """The reference's gradients by name; a parameter no loss reached (grad None) has gradient 0."""
    return {n: to_numpy(p.grad) if p.grad is not None else np.zeros(tuple(p.shape)) for n, p in ref.named_parameters()}


def assert_close_by_name(np_tensors: dict, ref_tensors: dict, names, rtol, what="gradient", floor=1e-6):
    """Compare tensors by name, each relative to its own scale (max |reference|).

    Some gradients are zero in exact arithmetic (the key bias: softmax ignores a shift that is
    the same along a row), so both sides hold rounding noise there; their scale is floored at
    `floor` (1e-6) of the largest gradient of the model, which still catches any real mistake."""
    worst = 0.0
    floor = floor * max(float(np.abs(ref_tensors[n]).max()) for n in names if ref_tensors[n] is not None)
    for n in names:
        a, b = np_tensors[n], ref_tensors[n]
        assert b is not None, f"the reference has no {what} for {n}"
        scale = max(float(np.abs(b).max()), floor, 1e-300)
        err = float(np.abs(a - b).max()) / scale
        worst = max(worst, err)
        assert err <= rtol, f"{what} of {n}: max |diff| / max |ref| = {err:.3e} > {rtol:.1e}"
    return worst
