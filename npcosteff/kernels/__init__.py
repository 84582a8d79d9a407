"""Elementwise and row-reduction kernels: GELU, masked softmax, LayerNorm, dropout masks.

Two implementations share one API and one numerical policy (float64 inside, result
rounded once to the input dtype):

* :mod:`npcosteff.kernels.reference`: plain NumPy, the readable definition;
* :mod:`npcosteff.kernels.fast`: Numba loops, parallel over rows, tested against it.

The package-level functions (``kernels.gelu``, ``kernels.softmax``, ...) forward to the
active implementation: ``fast`` by default, ``reference`` when the environment variable
``NPCOSTEFF_KERNELS=reference`` is set at import, or whichever :func:`use` last selected.
Because they look the implementation up on every call, ``use`` also takes effect for code
that imported the functions earlier. If Numba cannot be imported, the package falls back
to ``reference`` with a warning.
"""

from __future__ import annotations

import functools
import os
import warnings
from types import ModuleType

from . import reference

try:
    from . import fast
except ImportError as exc:  # Numba missing or broken: the reference still works
    fast = None
    _FAST_IMPORT_ERROR: ImportError | None = exc
else:
    _FAST_IMPORT_ERROR = None

__all__ = [
    "gelu",
    "gelu_backward",
    "softmax",
    "softmax_backward",
    "layer_norm",
    "layer_norm_backward",
    "add_layer_norm",
    "dropout_mask",
    "use",
    "current",
    "reference",
    "fast",
]

_IMPLEMENTATION_NAMES = ("fast", "reference")
_active: ModuleType = reference  # set by use() below


def use(name: str) -> None:
    """Select the implementation behind the package-level kernels: "fast" or "reference"."""
    global _active
    if name not in _IMPLEMENTATION_NAMES:
        raise ValueError(f"kernel implementation must be one of {_IMPLEMENTATION_NAMES}, got {name!r}")
    if name == "fast":
        if fast is None:
            raise RuntimeError(f"the fast kernels are unavailable because Numba failed to import: {_FAST_IMPORT_ERROR}")
        _active = fast
    else:
        _active = reference


def current() -> str:
    """Name of the active implementation ("fast" or "reference")."""
    return "fast" if _active is fast else "reference"


def _dispatch(name: str):
    """Package-level function that calls ``name`` of the active implementation."""

    @functools.wraps(getattr(reference, name))
    def forward(*args, **kwargs):
        return getattr(_active, name)(*args, **kwargs)

    forward.__module__ = __name__
    return forward


gelu = _dispatch("gelu")
gelu_backward = _dispatch("gelu_backward")
softmax = _dispatch("softmax")
softmax_backward = _dispatch("softmax_backward")
layer_norm = _dispatch("layer_norm")
layer_norm_backward = _dispatch("layer_norm_backward")
add_layer_norm = _dispatch("add_layer_norm")
dropout_mask = _dispatch("dropout_mask")


def _initial_choice() -> str:
    requested = os.environ.get("NPCOSTEFF_KERNELS", "fast").strip().lower() or "fast"
    if requested not in _IMPLEMENTATION_NAMES:
        raise ValueError(f"NPCOSTEFF_KERNELS must be 'fast' or 'reference', got {requested!r}")
    if requested == "fast" and fast is None:
        warnings.warn(
            f"Numba could not be imported ({_FAST_IMPORT_ERROR}); using the NumPy reference kernels",
            RuntimeWarning,
            stacklevel=2,
        )
        return "reference"
    return requested


use(_initial_choice())
