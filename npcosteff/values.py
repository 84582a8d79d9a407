"""The values a recipe setting may take: each as its field's type, each in its range.

Every check names the setting it refuses (``slenderize.heads must be >= 1, got 0``): a
section dataclass (npcosteff.recipe) has its name in ``SECTION``.
"""

from __future__ import annotations

import math
import typing

from .config import POOLERS

__all__ = ["RecipeError", "coerce", "at_least", "positive", "non_negative", "fraction", "choice", "known_pooler"]


class RecipeError(ValueError):
    """A recipe that cannot be run: unknown key or preset, wrong type, value out of range."""


def coerce(key, value, annotation):
    """`value` as the type of field `key`, or a RecipeError naming the key."""
    optional = typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)
    if optional:
        if value is None:
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    elif value is None:
        raise RecipeError(f"{key} cannot be null/None")

    def wrong(expected):
        return RecipeError(f"{key} must be {expected}, got {value!r} ({type(value).__name__})")

    if annotation is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise wrong("an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if annotation is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                       for v in value):
            raise wrong("a list of numbers")
        return tuple(float(v) for v in value)
    raise TypeError(f"no coercion for field {key} of type {annotation}")   # a new field type: extend _coerce


def at_least(obj, low, *keys):
    for key in keys:
        value = getattr(obj, key)
        if value is not None and value < low:
            raise RecipeError(f"{obj.SECTION}.{key} must be >= {low}, got {value}")


def positive(obj, *keys):
    for key in keys:
        value = getattr(obj, key)
        if not (math.isfinite(value) and value > 0):
            raise RecipeError(f"{obj.SECTION}.{key} must be a number > 0, got {value}")


def non_negative(obj, *keys):
    for key in keys:
        value = getattr(obj, key)
        if not (math.isfinite(value) and value >= 0):
            raise RecipeError(f"{obj.SECTION}.{key} must be a number >= 0, got {value}")


def fraction(obj, *keys):
    for key in keys:
        if not 0.0 <= getattr(obj, key) <= 1.0:
            raise RecipeError(f"{obj.SECTION}.{key} must lie in [0, 1], got {getattr(obj, key)}")


def choice(obj, key, allowed):
    if getattr(obj, key) not in allowed:
        raise RecipeError(f"{obj.SECTION}.{key} must be one of {tuple(allowed)}, got {getattr(obj, key)!r}")


def known_pooler(obj):
    if obj.pooler is not None and obj.pooler not in POOLERS:
        raise RecipeError(f"{obj.SECTION}.pooler must be one of {POOLERS} (or none for the default), "
                          f"got {obj.pooler!r}")
