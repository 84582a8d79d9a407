"""A model packed for inference: a copy of a :class:`~npcosteff.model.CostEffModel` whose
layers are laid out once for the products that use them, the way an inference runtime
prepares a model when it loads it (:mod:`npcosteff.kernels.packed_layer` says how).

    from npcosteff.packed_model import pack
    served = pack(model)                       # once; then as any model
    early_exit_forward(served, ids, mask, types, threshold=0.4)

The packed model is a ``CostEffModel``: ``forward``, ``early_exit_forward`` and everything that
reads a model accept it, and ``npcosteff predict`` runs one. At inference, without dropout or
head and neuron masks, a float32 layer takes its packed twin; anything else (training, caches
for a backward pass, dropout, masks, float64) takes the plain layers of the copy. Because it is
a copy, changing the original model afterwards does not change the packed one: pack again after
training. tests/test_packed.py compares it with the plain model.

Packing also has the process keep the memory it frees (:func:`npcosteff.allocator.keep_freed_memory`),
as an inference runtime keeps its own memory arena: a pass of 32 sentences allocates the same
activations as the last pass did (25 MB of attention probabilities per layer), and with glibc's
defaults each pass faulted them in anew, about 50 ms of kernel time in a 600 ms pass
(benchmarks/README.md).
"""

from __future__ import annotations

import numpy as np

from . import allocator
from .flops import layer_flops
from .kernels import pool
from .kernels.packed_layer import pack_layer, packed_layer_forward
from .model import CostEffModel, _no_dropout

__all__ = ["PackedModel", "pack"]


class PackedModel(CostEffModel):
    """A copy of a model with its layers packed for inference (module docstring); `layers`
    holds each layer's :class:`~npcosteff.kernels.packed_layer.PackedLayer`."""

    def __init__(self, model: CostEffModel, n_lanes: int | None = None, copy: bool = True):
        allocator.keep_freed_memory()        # each pass reuses the last one's pages (module docstring)
        params = {n: p.copy() for n, p in model.params.items()} if copy else model.params
        super().__init__(model.config, params, dtype=model.dtype)
        self.grads = None                    # nothing trains a packed model (zero_grad allocates them again)
        c = self.config
        self.n_lanes = max(1, pool.blas_threads() if n_lanes is None else int(n_lanes))
        self.layers = tuple(
            pack_layer(self.params, i, c.heads_per_layer[i], c.attention_head_size, self.n_lanes)
            for i in range(c.num_hidden_layers))

    def run_layer(self, i, h, additive_mask, head_mask=None, ffn_mask=None, drop=_no_dropout, inference=False):
        """Layer i as :meth:`CostEffModel.run_layer`; packed at inference without dropout or
        masks for a float32 model, else the plain layer."""
        layer = self.layers[i]
        B, T, _ = h.shape
        plain = (not inference or drop is not _no_dropout or head_mask is not None or ffn_mask is not None
                 or self.dtype != np.float32)
        if plain:
            return super().run_layer(i, h, additive_mask, head_mask, ffn_mask, drop, inference)
        y, probs = packed_layer_forward(layer, h, additive_mask, self.config.layer_norm_eps,
                                        flops=B * layer_flops(self.config, i, T)["total"])
        return y, probs, None


def pack(model: CostEffModel, n_lanes: int | None = None, copy: bool = True) -> PackedModel:
    """A copy of `model` (a packed one too) with its layers packed for inference, for `n_lanes`
    lanes (default: the BLAS thread count now). Pack again after changing the model.
    ``copy=False`` shares the model's parameter arrays instead of copying them, for a caller
    that will not change or use the model again (``npcosteff predict``, which just loaded it)."""
    return PackedModel(model, n_lanes, copy)
