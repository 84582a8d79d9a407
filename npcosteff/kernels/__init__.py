"""Every numerical kernel the layers and the optimizer call, behind one switch.

Row kernels (GELU, masked softmax, LayerNorm, dropout masks), the fused steps of the layers
(bias + GELU, the attention weights and their backward, the embedding scatter-add), the
heads' attention core (their products, softmax and dropout, forward and backward) and the
AdamW update. Two implementations share one API:

* :mod:`npcosteff.kernels.reference`: plain NumPy, the readable definition (the teaching path);
* ``fast``: Numba loops parallel over rows (:mod:`~npcosteff.kernels.fast`, its softmax in
  :mod:`~npcosteff.kernels.fast_softmax`, fused steps in :mod:`~npcosteff.kernels.fused`,
  float32 GELU and softmax for the inference path in :mod:`~npcosteff.kernels.inference`,
  what they share in :mod:`~npcosteff.kernels.common`) and the attention core by chunks of
  samples, shared out over the cores (:mod:`~npcosteff.kernels.chunked_attention`), each tested
  against its reference twin.

The speed path of the model at inference is one layer-level twin outside the switch:
:func:`npcosteff.kernels.lanes_layer.layer_forward_in_lanes` shares a float32 layer out over
the cores by rows, samples or heads (run by :mod:`~npcosteff.kernels.lanes`), tested against
the plain layers of :mod:`npcosteff.nn`; :mod:`~npcosteff.kernels.packed_layer` is a layer laid
out once for inference, what a packed model (:func:`npcosteff.packed_model.pack`, run by
``npcosteff predict``) runs. The attention core, the dropout draws and the lanes take their
worker threads from one pool (:mod:`~npcosteff.kernels.pool`).

Argument checks are shared (:mod:`~npcosteff.kernels.checks`), so both implementations refuse
the same inputs with the same messages. The package-level functions (``kernels.gelu``,
``kernels.adamw_update``, ...) forward to the active implementation: ``fast`` by default,
``reference`` when the environment variable ``NPCOSTEFF_KERNELS=reference`` is set at
import, or whichever :func:`use` last selected. With ``reference`` no compiled function and
no worker thread runs at all.
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

__all__ = [*reference.__all__, "use", "current", "reference", "fast"]

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
bias_add_layer_norm_inference = _dispatch("bias_add_layer_norm_inference")
dropout_mask = _dispatch("dropout_mask")
bias_gelu = _dispatch("bias_gelu")
bias_gelu_backward = _dispatch("bias_gelu_backward")
bias_gelu_inference = _dispatch("bias_gelu_inference")
softmax_inference = _dispatch("softmax_inference")
attention_weights = _dispatch("attention_weights")
attention_probs_backward = _dispatch("attention_probs_backward")
attention_core = _dispatch("attention_core")
attention_core_backward = _dispatch("attention_core_backward")
scatter_add_rows = _dispatch("scatter_add_rows")
adamw_update = _dispatch("adamw_update")


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
