"""Dropout by injected masks.

A dropout *source* hands out the multiplier for each dropout site (0 or 1/(1-p)); layers
multiply by it in forward and backward. Drawing the masks outside the layers makes runs
reproducible and lets a test hand the very same masks to PyTorch. Site names are listed in
docs/architecture.md (``embeddings``, ``layer.{i}.attention.probs``, ``layer.{i}.attention.output``,
``layer.{i}.output``, ``exit.{i}``).
"""

from __future__ import annotations

import numpy as np

from .. import kernels


class Dropout:
    """Draws masks from a ``numpy.random.Generator``; keeps them in ``.masks`` when recording."""

    def __init__(self, rng, hidden_p: float, attention_p: float | None = None, record: bool = False):
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        for name, p in (("hidden_p", hidden_p), ("attention_p", attention_p)):
            if p is not None and not 0.0 <= p < 1.0:
                raise ValueError(f"dropout probability {name}={p} is outside [0, 1)")
        self.rng = rng
        self.hidden_p = hidden_p
        self.attention_p = hidden_p if attention_p is None else attention_p
        self.record = record
        self.masks = {}

    def p_for(self, site: str) -> float:
        return self.attention_p if site.endswith("attention.probs") else self.hidden_p

    def mask(self, site: str, shape, dtype):
        """The multiplier for `site`, or None when that site's probability is 0."""
        p = self.p_for(site)
        if p == 0.0:
            return None
        m = kernels.dropout_mask(self.rng, shape, p, dtype)
        if self.record:
            self.masks[site] = m
        return m


class ReplayDropout:
    """Returns given masks (site -> multiplier); a site without a mask gets no dropout."""

    def __init__(self, masks: dict):
        self.masks = dict(masks)

    def mask(self, site: str, shape, dtype):
        m = self.masks.get(site)
        if m is None:
            return None
        if tuple(m.shape) != tuple(shape):
            raise ValueError(f"dropout mask for {site!r} has shape {tuple(m.shape)}, expected {tuple(shape)}")
        return np.asarray(m, dtype=dtype)
