"""First-order Taylor importance of weights, attention heads and FFN neurons (docs/method.md, 4).

Removing a weight w (setting it to 0) changes the loss by about ``-w * dL/dw`` (first-order
Taylor expansion). COST-EFF scores every weight by how large that change can be over a sample
of the training set::

    acc[w]   = sum over batches |dL_batch / dw|           (B batches, dropout off)
    score[w] = |w * acc[w]|                                elementwise

where L is the joint loss of the slender multi-exit student (stage ``importance``)::

    L = 0.9 * prediction distillation (all exits) + 0.1 * hard loss (all exits) + hidden distillation

so that a head or neuron is kept when *any* exit needs it, not only the last one.
``last_exit_only=True`` is the ablation that the paper argues against. By default the loss is
measured as the authors' code measures it (docs/method.md, 4; docs/deviations.md):

* the student runs as in multi-exit training with dropout off, so gradient equilibrium
  rescales the gradients (``gradient_equilibrium="authors"``; ``"off"``: the plain gradient);
* the hidden term is a plain MSE over a batch padded to 128 tokens (``hidden_pad_to=128``;
  None: the per-token normalized hidden loss of training);
* the ablation scores ``prediction(last exit) + hidden``, with no hard term and no gradient
  equilibrium (``last_exit_hard=True``: keep ``0.1 * hard(last exit)``).

Structures are scored by summing the scores of the weights that belong to them:

* head h of layer i: the columns ``h*d_h .. (h+1)*d_h - 1`` of
  ``encoder.layer.{i}.attention.output.dense.weight`` (d, A_i), summed over rows and columns;
* FFN neuron j of layer i: row j of ``intermediate.dense.weight`` (F_i, d) plus column j of
  ``output.dense.weight`` (d, F_i).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from .data.batching import EncodedSplit, iterate_batches
from .heads import per_head
from .model import CostEffModel
from .objectives import objective_loss, teacher_outputs

__all__ = ["Importance", "taylor_importance", "head_scores", "neuron_scores", "importance_batches"]


@dataclass
class Importance:
    """Taylor importance of one model, as :func:`taylor_importance` computes it.

    Attributes:
        weights: parameter name -> score ``|w * sum_batches |grad||``, the parameter's shape.
        heads: one (H_i,) array per layer: the score of each attention head.
        neurons: one (F_i,) array per layer: the score of each FFN neuron.
        num_batches: how many batches the gradients were accumulated over.
        last_exit_only: whether the loss used the final exit alone (the ablation).
    """

    weights: dict
    heads: list
    neurons: list
    num_batches: int
    last_exit_only: bool = False


def head_scores(weight_scores: dict, config) -> list:
    """Per-layer head scores (H_i,) from the per-weight scores.

    The score of ``attention.output.dense.weight`` (d, A_i) is summed over its output
    dimension (rows) -> (A_i,), then over each head's d_h input columns -> (H_i,).
    """
    out = []
    for i in range(config.num_hidden_layers):
        s = weight_scores[f"encoder.layer.{i}.attention.output.dense.weight"]   # (d, A_i)
        out.append(per_head(s.sum(axis=0), config.heads_per_layer[i]))          # (A_i,) -> (H_i,)
    return out


def neuron_scores(weight_scores: dict, config) -> list:
    """Per-layer FFN neuron scores (F_i,): the row sum of the ``intermediate.dense.weight``
    score (F_i, d) plus the column sum of the ``output.dense.weight`` score (d, F_i)."""
    out = []
    for i in range(config.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        s_in = weight_scores[pre + "intermediate.dense.weight"]                  # (F_i, d)
        s_out = weight_scores[pre + "output.dense.weight"]                       # (d, F_i)
        out.append(s_in.sum(axis=1) + s_out.sum(axis=0))                         # (F_i,)
    return out


def taylor_importance(model: CostEffModel, batches: Iterable[dict], teacher: CostEffModel, *,
                      task_regression: Optional[bool] = None, last_exit_only: bool = False,
                      temperature: float = 1.0, gradient_equilibrium="authors",
                      hidden_pad_to: Optional[int] = 128, last_exit_hard: bool = False,
                      progress: bool = True) -> Importance:
    """First-order Taylor importance of every weight, head and FFN neuron of `model` (docs/method.md, 4).

    Args:
        model: the student to score (its parameters are not changed).
        batches: dicts with ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) and
            ``labels`` (B,), e.g. from :func:`importance_batches`.
        teacher: the model distilled from (the multi-exit TA); run in evaluation mode.
        task_regression: whether the task is regression (None: ``model.config.is_regression``).
        last_exit_only: score from the final exit's prediction and hard losses only (ablation).
        temperature: the distillation temperature T.
        gradient_equilibrium: the rule of the backward pass (``"authors"``, ``"exit_layers"``
            or ``"off"``; see `npcosteff.equilibrium`); off in the last-exit ablation.
        hidden_pad_to: measure the hidden term as an MSE over this many padded tokens (None:
            normalize by each sample's tokens, as in training). Must be >= every batch's length.
        last_exit_hard: in the ablation, keep the ``0.1 * hard`` term of the last exit.
        progress: show a progress bar.

    For each batch, with dropout off, the importance loss is back-propagated and ``|grad|``
    of every parameter is added into a buffer of its own; the score is ``|w * buffer|``.
    ``model.grads`` is left at zero.
    """
    from .progress import progress_bar as tqdm

    if not isinstance(model, CostEffModel):
        raise TypeError(f"model must be a CostEffModel, got {type(model).__name__}")
    if teacher is None:
        raise ValueError("taylor_importance distills from a teacher (the importance loss has "
                         "prediction and hidden distillation terms); pass teacher=")
    if model.config.num_labels == 0:
        raise ValueError("the model has no exits (num_labels == 0): the importance loss needs exit logits")
    regression = model.config.is_regression if task_regression is None else bool(task_regression)

    stage = "importance_last_exit" if last_exit_only and not last_exit_hard else "importance"
    if last_exit_only:
        gradient_equilibrium = "off"          # the ablation is scored outside multi-exit mode
    accumulated = {n: np.zeros_like(p) for n, p in model.params.items()}     # sum_batches |grad|
    num_batches = 0
    for batch in tqdm(batches, desc="importance", disable=not progress, leave=False):
        model.zero_grad()
        # Dropout off (training=False); the equilibrium rule is named explicitly.
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                    training=False, gradient_equilibrium=gradient_equilibrium, return_cache=True)
        loss = objective_loss(stage, out, batch.get("labels"), batch["attention_mask"],
                          teacher=teacher_outputs(teacher, batch), temperature=temperature,
                          regression=regression, last_exit_only=last_exit_only,
                          hidden_pad_to=hidden_pad_to)
        model.backward(out.cache, loss.grad_hidden_states, loss.grad_logits)
        for name, g in model.grads.items():
            accumulated[name] += np.abs(g)
        num_batches += 1
    model.zero_grad()                      # leave no importance gradient behind for a trainer
    if num_batches == 0:
        raise ValueError("taylor_importance needs at least one batch, got none")

    scores = {n: np.abs(model.params[n] * accumulated[n]) for n in model.param_names}
    return Importance(weights=scores, heads=head_scores(scores, model.config),
                      neurons=neuron_scores(scores, model.config), num_batches=num_batches,
                      last_exit_only=bool(last_exit_only))


def importance_batches(encoded: EncodedSplit, num_examples: Optional[int] = None, batch_size: int = 32,
                       seed: int = 0):
    """Batches of a random sample of `num_examples` examples of a split (None: all of it).

    The sample is drawn without replacement from ``numpy.random.default_rng(seed)`` (`seed`
    an int or a sequence of ints, e.g. ``(seed, t)`` for prune t) and
    batched from the longest sequence to the shortest (least padding; the order of batches
    does not change the accumulated scores). Returns a list of batch dicts.
    """
    n = len(encoded)
    if n == 0:
        raise ValueError("the split is empty: no examples to score importance on")
    if encoded.labels is None:
        raise ValueError("the split has no labels; the importance loss has a hard-label term")
    if num_examples is None or num_examples >= n:
        chosen = np.arange(n)
    else:
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=int(num_examples), replace=False))
    sample = encoded.subset(chosen)
    return list(iterate_batches(sample, sample.labels, batch_size, sort_by_length=True))
