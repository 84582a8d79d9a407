"""Model surgery: new models made from a trained one by changing its exits or cutting its widths.

* :func:`attach_exits`: exits after every layer from ``exit_start`` on (the naive-exits
  baseline, and the student of the no-TA ablation, docs/method.md, 6);
* :func:`only_final_exit`: the last exit alone (the student of the no-exits ablation);
* :func:`slice_model`: the kept heads and FFN neurons of each layer only (docs/method.md, 5).

Each returns a new `CostEffModel` with copied weights: the model it starts from is not changed.

Slicing cuts out the rows and columns of the removed heads and neurons, giving a smaller model
(fewer parameters, fewer FLOPs) whose outputs are *exactly* those of the masked model
(``model(..., head_mask=, ffn_mask=)``, see `npcosteff.prune`)::

    head h of layer i  <->  rows h*d_h..(h+1)*d_h-1 of Q, K, V (weights and biases)
                            and the same columns of attention.output.dense.weight (d, A_i)
    neuron j of layer i <-> row j of intermediate.dense (weight and bias)
                            and column j of output.dense.weight (d, F_i)

A masked head contributes ``0 * probs @ V`` to the context, so the output dense multiplies
zeros in its columns; without those rows and columns nothing else changes. The same holds
for a neuron whose activation is multiplied by 0.
"""

from __future__ import annotations

from .heads import head_columns
from .model import CostEffModel, init_params, param_shapes
from .prune import check_keep

__all__ = ["attach_exits", "only_final_exit", "slice_model"]


# --------------------------------------------------------------------------- exits
def attach_exits(model: CostEffModel, exit_start=1, seed=0, pooler=None) -> CostEffModel:
    """A copy of `model` with exits after every layer from `exit_start` on; exits it already
    has keep their weights (the last one stays the model's classifier), new ones are fresh.

    `pooler` (None: the model's) sets the exits' pooler; when it is not the model's, every exit
    starts fresh, since a classifier trained on one pooler's vectors does not fit another's."""
    changes = {"exit_start": exit_start}
    if pooler is not None and pooler != model.config.pooler:
        changes["pooler"] = pooler
    config = model.config.replace(**changes)
    params = {n: p.copy() for n, p in model.params.items() if "pooler" not in changes or not n.startswith("exits.")}
    missing = [n for n in param_shapes(config) if n not in params]
    params.update(init_params(config, model.dtype, seed, names=set(missing)))
    return CostEffModel(config, {n: params[n] for n in param_shapes(config)}, dtype=model.dtype)


def only_final_exit(model: CostEffModel) -> CostEffModel:
    """A copy of `model` with its last exit only (the `--no-exits` student)."""
    config = model.config.replace(exit_start=model.config.num_hidden_layers)
    return CostEffModel(config, {n: model.params[n].copy() for n in param_shapes(config)}, dtype=model.dtype)


# --------------------------------------------------------------------------- slicing
def slice_model(model: CostEffModel, keep_heads=None, keep_neurons=None) -> CostEffModel:
    """A new, smaller model with only the kept heads and FFN neurons of each layer.

    Args:
        model: the model to slice (not changed).
        keep_heads: L index arrays into each layer's current heads (None, or a None entry:
            keep the whole layer).
        keep_neurons: L index arrays into each layer's current FFN neurons (same rules).

    The result equals ``model`` run with ``head_mask`` = 1 on the kept heads (0 elsewhere)
    and ``ffn_mask`` likewise, on every hidden state and exit. Kept heads and neurons keep
    their relative order. Its config records the new widths (``heads_per_layer``,
    ``intermediate_per_layer``), so it saves and reloads like any checkpoint.
    """
    if not isinstance(model, CostEffModel):
        raise TypeError(f"model must be a CostEffModel, got {type(model).__name__}")
    c = model.config
    keep_heads = check_keep(keep_heads, c.heads_per_layer, "keep_heads", "head")
    keep_neurons = check_keep(keep_neurons, c.intermediate_per_layer, "keep_neurons", "neuron")
    old, params = model.params, {}                            # params: the sliced tensors (fresh arrays)
    for i in range(c.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        cols = head_columns(keep_heads[i], c.attention_head_size)               # (A'_i,)
        for proj in ("query", "key", "value"):
            w, b = f"{pre}attention.self.{proj}.weight", f"{pre}attention.self.{proj}.bias"
            params[w] = old[w][cols]                                              # (A'_i, d)
            params[b] = old[b][cols]                                              # (A'_i,)
        w = f"{pre}attention.output.dense.weight"
        params[w] = old[w][:, cols]                                               # (d, A'_i)
        rows = keep_neurons[i]                                                    # (F'_i,)
        w, b = f"{pre}intermediate.dense.weight", f"{pre}intermediate.dense.bias"
        params[w] = old[w][rows]                                                  # (F'_i, d)
        params[b] = old[b][rows]                                                  # (F'_i,)
        w = f"{pre}output.dense.weight"
        params[w] = old[w][:, rows]                                               # (d, F'_i)
    for name, p in old.items():                               # the rest, copied: nothing shared with `model`
        if name not in params:
            params[name] = p.copy()
    config = c.replace(heads_per_layer=[int(k.size) for k in keep_heads],
                       intermediate_per_layer=[int(k.size) for k in keep_neurons])
    return CostEffModel(config, params, dtype=model.dtype)
