"""What the Numba kernels of :mod:`.fast`, :mod:`.fast_softmax` and :mod:`.inference` share:
their compile options, the view of an array as rows, the additive mask laid out as rows, and
the choice between a parallel loop and its serial twin.
"""

from __future__ import annotations

import math

import numpy as np

from . import lanes

__all__ = ["JIT_PARALLEL", "JIT_SERIAL", "SERIAL_MAX_ELEMENTS", "CORE_CHUNK_FLOATS", "serial", "core_chunk_samples",
           "as_rows", "mask_groups"]

# fastmath off: it would let the compiler reorder sums and change rounding, so results would
# drift from the reference by more than the documented summation order.
JIT_PARALLEL = dict(parallel=True, fastmath=False, cache=True)
JIT_SERIAL = dict(fastmath=False, cache=True, nogil=True)   # nogil: lanes run them side by side (lanes.py)

# Up to this many elements the row kernels (LayerNorm, the softmax, the attention weights and
# their backward, the inference GELU and softmax) run in the calling thread: waking the worker
# threads for a parallel loop costs more than it saves (benchmarks/README.md). One sample at
# inference is below it (196,608 GELU values and as many attention probabilities for MiniLM at
# 128 tokens). Results do not depend on the path: each row is computed by the same code either
# way (tests/test_kernels.py, tests/test_kernels_fused.py and tests/test_kernels_inference.py
# run both).
SERIAL_MAX_ELEMENTS = 1 << 19

# The attention core (for training, npcosteff/kernels/chunked_attention.py; at inference in lanes,
# lanes_layer.py) takes whole samples in chunks of about this many scores (512 KB of float32,
# half a core's L2 cache here), so that a chunk's (T, T) arrays stay in cache from the product
# that writes them to the one that reads them: one sample of MiniLM at 128 tokens (196,608
# scores) per chunk, 42 samples of 16 tokens.
CORE_CHUNK_FLOATS = 1 << 17


def core_chunk_samples(heads: int, tokens: int) -> int:
    """Samples per chunk of the attention core: as many as fit CORE_CHUNK_FLOATS scores, at least one."""
    return max(1, CORE_CHUNK_FLOATS // max(1, heads * tokens * tokens))


def serial(size: int) -> bool:
    """Whether a loop over `size` elements runs in the calling thread: little work, or a lane's
    share of a layer (:mod:`~npcosteff.kernels.lanes`, which keeps the cores busy itself)."""
    return size <= SERIAL_MAX_ELEMENTS or lanes.inside()


def as_rows(a: np.ndarray) -> np.ndarray:
    """Contiguous (N, n) view of a (..., n) array (a copy only if a is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def mask_groups(mask: np.ndarray, shape: tuple) -> tuple[np.ndarray, int]:
    """Lay a broadcastable float64 mask out as (G, n) rows, with row r of the scores using
    mask row ``r // rows_per_group``.

    A mask whose middle axes are all 1, such as (B, 1, 1, T) for scores (B, H, T, T), stays
    one row per sample (G = B, rows_per_group = H * T): it is never expanded. Any other
    broadcastable shape is expanded to one mask row per score row.
    """
    n = shape[-1]
    n_rows = math.prod(shape[:-1])
    m = mask.reshape((1,) * (len(shape) - mask.ndim) + mask.shape)  # left-pad to scores' ndim
    if len(shape) == 1:
        return np.ascontiguousarray(np.broadcast_to(m, (1, n)), dtype=np.float64), 1
    if all(k == 1 for k in m.shape[1:-1]):
        groups = m.shape[0]  # 1 (shared by every row) or the batch size
        m2 = np.broadcast_to(m.reshape(groups, m.shape[-1]), (groups, n))
        return np.ascontiguousarray(m2, dtype=np.float64), max(1, n_rows // max(groups, 1))
    full = np.broadcast_to(m, shape).reshape(n_rows, n)
    return np.ascontiguousarray(full, dtype=np.float64), 1
