"""The training objectives of COST-EFF (docs/method.md, 3 and 4): the loss a training step
minimizes, and its gradients.

An *objective* names which loss terms a step uses and how they are weighted; the method's
stages (npcosteff.stages) each train with one or two of them. :func:`objective_loss` sums the
loss pairs of :mod:`npcosteff.losses` over a model's exits and layers, weights them as the
objective requires and returns an :class:`ObjectiveLoss` that holds the value, its terms and
the gradients to feed ``model.backward``. The objectives:

* ``hidden`` -- representation distillation (hidden states, optionally attention maps);
* ``pred`` -- the COST-EFF student: prediction distillation from every exit, plus ``hidden``;
* ``pred_ta`` -- the teacher-assistant: half prediction distillation, half the hard loss;
* ``hard`` -- plain fine-tuning on the labels;
* ``importance`` / ``importance_last_exit`` -- the loss whose gradients give the Taylor
  importance scores of pruning, from every exit or from the last one only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .losses import (check_temperature, attention_mse_loss, attention_mse_loss_backward, cross_entropy_loss,
                     cross_entropy_loss_backward, hidden_mse_loss, hidden_mse_loss_backward, mse_loss,
                     mse_loss_backward, soft_cross_entropy_loss, soft_cross_entropy_loss_backward)

__all__ = ["OBJECTIVES", "TRAINING_OBJECTIVES", "ObjectiveLoss", "objective_loss", "teacher_outputs"]

# Weight of each loss term in each objective (docs/architecture.md, "Losses").
# Attention distillation, when switched on, joins the hidden term with the same weight.
_OBJECTIVE_WEIGHTS = {
    "hidden": {"hidden": 1.0},                              # representation distillation
    "pred": {"pred": 1.0, "hidden": 1.0},                   # the COST-EFF student
    "pred_ta": {"pred": 0.5, "hard": 0.5},                  # the teacher-assistant (TA)
    "hard": {"hard": 1.0},                                  # plain fine-tuning
    "importance": {"pred": 0.9, "hard": 0.1, "hidden": 1.0},  # Taylor importance (docs/method.md, 4)
    "importance_last_exit": {"pred": 1.0, "hidden": 1.0},    # its last-exit ablation, as the authors score it
}
OBJECTIVES = tuple(_OBJECTIVE_WEIGHTS)
TRAINING_OBJECTIVES = ("hard", "hidden", "pred", "pred_ta")   # what a training step can minimize


@dataclass
class ObjectiveLoss:
    """The loss of one training step and the gradients to feed ``model.backward``.

    ``value = sum_k weight_k * components[k]`` with the objective's weights; ``components``
    holds each term used (``hard``, ``pred``, ``hidden``, ``attention``), already summed over
    exits or layers but not yet weighted. The gradients are of ``value``:

    * ``grad_logits`` -- tuple aligned with the student's logits, None for an exit no term uses;
    * ``grad_hidden_states`` -- tuple of L+1 (None entries without hidden distillation), or
      None when the student output has no hidden states;
    * ``grad_attentions`` -- tuple of L with attention distillation, else None.
    """

    value: float
    components: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    grad_logits: tuple = ()
    grad_hidden_states: Optional[tuple] = None
    grad_attentions: Optional[tuple] = None


def _field(output, name: str):
    """``output.name`` or ``output[name]`` (model outputs are objects, tests may use dicts)."""
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


def _exits(output, who: str):
    """(logits, exit_layers) of a model output, checked to be non-empty and aligned."""
    logits = _field(output, "logits")
    layers = _field(output, "exit_layers")
    if logits is None or len(logits) == 0:
        raise ValueError(f"the {who} output has no exit logits")
    if layers is None or len(layers) != len(logits):
        raise ValueError(
            f"the {who} output must give one exit layer per logits array: "
            f"{0 if layers is None else len(layers)} exit_layers for {len(logits)} logits")
    return tuple(logits), tuple(int(l) for l in layers)


def _accumulate(grads: list, index: int, grad: np.ndarray) -> None:
    grads[index] = grad if grads[index] is None else grads[index] + grad


def _teacher_exit_for(student_layers, teacher_layers) -> list:
    """Index k(l) of the teacher exit each student exit learns from (docs/method.md, 3): the teacher's
    only exit when it has one, else its exit at the same layer."""
    if len(teacher_layers) == 1:
        return [0] * len(student_layers)
    where = {layer: k for k, layer in enumerate(teacher_layers)}
    missing = [layer for layer in student_layers if layer not in where]
    if missing:
        raise ValueError(
            f"the multi-exit teacher has exits at layers {list(teacher_layers)} but the student "
            f"also has exits at layers {missing}; a multi-exit teacher needs an exit at every "
            f"layer where the student has one")
    return [where[layer] for layer in student_layers]


def _teacher_layer(l: int, student_layers: int, teacher_layers: int) -> int:
    """Teacher layer ``l * L_t / L_s`` matched by student layer l (rounded down when L_s does
    not divide L_t); layer 0 is the embedding output."""
    return (l * teacher_layers) // student_layers


def teacher_outputs(teacher, batch, use_attention=False):
    """The teacher's outputs on a batch, in evaluation mode (no dropout, no cache).

    With the correctly rounded kernels (``inference=False``), as the student's forward pass:
    training does not depend on the inference kernels, and a model distilled from itself gets
    a distillation gradient of exactly 0.
    """
    if teacher is None:
        return None
    return teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                   output_attentions=use_attention, inference=False)


def objective_loss(objective: str, student, labels, attention_mask, teacher=None,
                   temperature: float = 1.0, final_only: bool = False,
                   use_attention: bool = False, regression: bool = False,
                   last_exit_only: bool = False, hidden_pad_to: Optional[int] = None,
                   regression_distill: str = "all") -> ObjectiveLoss:
    """The loss of a COST-EFF objective and its gradients for ``model.backward``.

    Objectives (docs/architecture.md, "Losses"): ``hidden`` = hidden distillation; ``pred`` =
    prediction + hidden distillation (the student); ``pred_ta`` = (prediction + hard) / 2 (the
    TA); ``hard`` = hard loss; ``importance`` = 0.9 prediction + 0.1 hard + hidden (docs/method.md, 4).

    Terms:

    * hard: ``sum over exits cross_entropy(z_l, y)`` (``mse`` with ``regression``);
      ``final_only`` keeps the last exit alone;
    * prediction: ``sum over exits soft_cross_entropy(z_l, t_k(l), T)`` (``mse(z_l, t_k(l)[:, 0])``
      with ``regression``, no temperature), k(l) the teacher's only exit or its exit at layer l;
    * hidden: ``sum_{l=0..L_s} hidden_mse(h_l, g_{l L_t / L_s}, m)``;
    * attention (``use_attention``, joins the hidden term with its weight):
      ``sum_{l=1..L_s} attention_mse(p_l, q_{l L_t / L_s}, m)``.

    ``last_exit_only`` restricts the hard and prediction terms to the student's last exit
    (the importance ablation); hidden and attention terms are unchanged. Objective
    ``importance_last_exit`` is that ablation as the authors' code scores it: prediction
    distillation of the last exit plus hidden distillation, no hard term. ``hidden_pad_to``
    measures the hidden term as a plain MSE over ``hidden_pad_to`` padded tokens
    (:func:`hidden_mse_loss`). ``regression_distill="final"`` is the authors' rule for
    regression tasks: ``pred`` and ``pred_ta`` distill the last exit alone, and ``pred_ta``
    is then that MSE alone (no hard term); the default ``"all"`` treats regression as
    classification is treated (every exit).

    ``student`` and ``teacher`` are model outputs (objects or dicts) with ``logits`` (tuple of
    (B, C), shallowest exit first), ``exit_layers`` (1-based), ``hidden_states`` (tuple of
    L+1 (B, T, d)) and, with ``use_attention``, ``attentions`` (tuple of L (B, H_l, T, T)).
    ``labels`` (B,) are integer classes, or float targets with ``regression``; they are only
    needed by objectives with a hard term. ``attention_mask`` (B, T) marks real tokens.
    """
    if objective not in _OBJECTIVE_WEIGHTS:
        raise ValueError(f"unknown objective {objective!r}; known objectives: {', '.join(OBJECTIVES)}")
    T = check_temperature(temperature)
    weights = dict(_OBJECTIVE_WEIGHTS[objective])
    last_exit_only = last_exit_only or objective == "importance_last_exit"
    if regression_distill not in ("all", "final"):
        raise ValueError(f"regression_distill must be 'all' or 'final', got {regression_distill!r}")
    final_distill = regression and regression_distill == "final" and objective in ("pred", "pred_ta")
    if final_distill and objective == "pred_ta":
        weights = {"pred": 1.0}
    last_exit_only = last_exit_only or final_distill
    if use_attention and "hidden" in weights:
        weights["attention"] = weights["hidden"]
    if ("pred" in weights or "hidden" in weights) and teacher is None:
        raise ValueError(f"objective {objective!r} distills from a teacher, but teacher is None")

    s_logits, s_layers = _exits(student, "student")
    s_hidden = _field(student, "hidden_states")
    grad_logits = [None] * len(s_logits)
    components = {}

    last = len(s_logits) - 1
    if "hard" in weights:
        if labels is None:
            raise ValueError(f"objective {objective!r} has a hard loss, but labels is None")
        exits = [last] if (final_only or last_exit_only) else range(len(s_logits))
        forward, backward = ((mse_loss, mse_loss_backward) if regression
                             else (cross_entropy_loss, cross_entropy_loss_backward))
        total = 0.0
        for i in exits:
            value, cache = forward(s_logits[i], labels)           # z_i (B, C), y (B,)
            total += value
            _accumulate(grad_logits, i, backward(cache, weights["hard"]))
        components["hard"] = total

    if "pred" in weights:
        t_logits, t_layers = _exits(teacher, "teacher")
        k_of = _teacher_exit_for(s_layers, t_layers)
        exits = [last] if last_exit_only else range(len(s_logits))
        total = 0.0
        for i in exits:
            t = t_logits[k_of[i]]                                 # (B, C) teacher, constant
            if regression:
                value, cache = mse_loss(s_logits[i], np.asarray(t)[:, 0])
                grad = mse_loss_backward(cache, weights["pred"])
            else:
                value, cache = soft_cross_entropy_loss(s_logits[i], t, T)
                grad = soft_cross_entropy_loss_backward(cache, weights["pred"])
            total += value
            _accumulate(grad_logits, i, grad)
        components["pred"] = total

    grad_hidden = None if s_hidden is None else [None] * len(s_hidden)
    grad_attentions = None
    if "hidden" in weights:
        t_hidden = _field(teacher, "hidden_states")
        if s_hidden is None or t_hidden is None:
            raise ValueError("hidden distillation needs hidden_states from the student and the teacher")
        L_s, L_t = len(s_hidden) - 1, len(t_hidden) - 1
        if L_s < 1 or L_t < 1:
            raise ValueError(
                f"hidden_states must hold L+1 >= 2 arrays (embedding output, then each layer); "
                f"student has {L_s + 1}, teacher has {L_t + 1}")
        if L_s > L_t:
            raise ValueError(
                f"the student has more layers ({L_s}) than the teacher ({L_t}); the layer "
                f"mapping l * L_t / L_s needs L_s <= L_t")
        d_s, d_t = np.shape(s_hidden[0])[-1], np.shape(t_hidden[0])[-1]
        if d_s != d_t:
            raise ValueError(
                f"teacher and student hidden sizes differ (student d = {d_s}, teacher d = {d_t}); "
                f"hidden distillation compares them feature by feature")
        total = 0.0
        for l in range(L_s + 1):
            value, cache = hidden_mse_loss(s_hidden[l], t_hidden[_teacher_layer(l, L_s, L_t)],
                                           attention_mask, hidden_pad_to)   # (B, T, d) each
            total += value
            grad_hidden[l] = hidden_mse_loss_backward(cache, weights["hidden"])
        components["hidden"] = total

        if use_attention:
            s_att, t_att = _field(student, "attentions"), _field(teacher, "attentions")
            if s_att is None or t_att is None:
                raise ValueError(
                    "use_attention needs attentions from the student and the teacher "
                    "(run the models with output_attentions=True)")
            if len(s_att) != L_s or len(t_att) != L_t:
                raise ValueError(
                    f"attentions must hold one array per layer: student {len(s_att)} for "
                    f"L_s = {L_s}, teacher {len(t_att)} for L_t = {L_t}")
            grad_attentions = [None] * L_s
            total = 0.0
            for l in range(1, L_s + 1):
                # attentions[l - 1] is the map of layer l (1-based).
                value, cache = attention_mse_loss(
                    s_att[l - 1], t_att[_teacher_layer(l, L_s, L_t) - 1], attention_mask)
                total += value
                grad_attentions[l - 1] = attention_mse_loss_backward(cache, weights["attention"])
            components["attention"] = total

    value = sum(weights[k] * components[k] for k in components)
    return ObjectiveLoss(
        value=float(value),
        components=components,
        weights={k: weights[k] for k in components},
        grad_logits=tuple(grad_logits),
        grad_hidden_states=None if grad_hidden is None else tuple(grad_hidden),
        grad_attentions=None if grad_attentions is None else tuple(grad_attentions),
    )
