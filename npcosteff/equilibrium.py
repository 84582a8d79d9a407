"""Gradient equilibrium (docs/method.md, 2): how the gradients that reach a layer from the
exits above it are balanced, and the one vocabulary its settings use.

A recipe, the training arguments and the model all name the rule with one of
``EQUILIBRIUM_SETTINGS``: ``"authors"`` (every layer below the last is rescaled, and a
hidden-state loss on h_l is rescaled together with exit l's), ``"exit_layers"`` (only layers
with an exit are rescaled, a hidden-state loss is added unscaled) or ``"off"``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EQUILIBRIUM_RULES", "EQUILIBRIUM_SETTINGS", "equilibrium_rule"]

EQUILIBRIUM_RULES = ("authors", "exit_layers")           # the rules a forward pass can record
EQUILIBRIUM_SETTINGS = EQUILIBRIUM_RULES + ("off",)      # what a setting may say


def equilibrium_rule(gradient_equilibrium, training: bool, num_exits: int):
    """The gradient-equilibrium rule a forward pass records for its backward.

    ``gradient_equilibrium``: one of ``EQUILIBRIUM_SETTINGS``, or None for the default (the
    authors' rule in training, off otherwise). A model with one exit has nothing to balance:
    the rule is off there, as in plain fine-tuning. Returns None (off), ``"authors"`` or
    ``"exit_layers"``.
    """
    if gradient_equilibrium is None:
        gradient_equilibrium = "authors" if training else "off"
    if isinstance(gradient_equilibrium, (bool, np.bool_)) or gradient_equilibrium not in EQUILIBRIUM_SETTINGS:
        raise ValueError(f"gradient_equilibrium must be one of {EQUILIBRIUM_SETTINGS} (or None for the "
                         f"default), got {gradient_equilibrium!r}")
    if gradient_equilibrium == "off" or num_exits <= 1:
        return None
    return gradient_equilibrium
