"""Lanes: a layer at inference split over the cores by rows, by samples or by heads.

One sample of 128 tokens is little work for two cores: each matrix product of a layer
(128 x 384 by 384 x 384) is too small for a multi-threaded BLAS to split well, and the
elementwise loops (bias + GELU, softmax, LayerNorm) are too short to be worth waking Numba's
worker threads, so they run in one thread while the other core idles. Yet every step of a
layer is independent across something: the projections, the output dense, LayerNorm and the
FFN across rows (tokens), the attention core (scores, softmax, context) across heads and
samples; and for one sentence, whose rows are few, a head's whole way through the block
(projections, core, its part of the output dense) across heads and the FFN across neurons,
each lane's part of the output summed by the caller (:mod:`~npcosteff.kernels.lanes_layer`,
the layer's steps cut that way).

This module is the runner (the attention core, :mod:`~npcosteff.kernels.chunked_attention`, runs
its shares of samples through it too, in training as at inference). A lane is one share: :func:`run` hands each lane but the first to
a worker thread of the kernels' pool (:mod:`~npcosteff.kernels.pool`), runs the first in the
calling thread, and waits for all of them, with BLAS limited to one thread and every Numba
loop run in its calling thread (:func:`inside`), so the lanes never compete for the same
threads. Each lane computes its rows exactly as the whole call would: the results are those
of the unsplit layer up to the summation order of BLAS (tests/test_lanes.py).

Each hand-off to a worker has a cost, paid four times per layer for several samples and
twice for one, so a layer takes lanes (both its blocks, or neither: a layer with its
attention unsplit and its FFN in lanes ran slower than either) only when the matrix products
of the layer over the batch come to at least :data:`MIN_FLOPS` (``flops.layer_flops``);
below that the hand-offs cost more than the second core saves (:func:`count`; the
measurements are in benchmarks/README.md, "Measurements behind the kernels' design").

Only float32 layers with the ``fast`` kernels take lanes (the speed path; a float64 model
runs its exact kernels unsplit); with ``NPCOSTEFF_KERNELS=reference`` no worker thread runs and
the layers take their plain path.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from . import pool

__all__ = ["MIN_FLOPS", "by_width", "count", "inside", "row_parts", "run", "run_and_sum", "disabled"]

# The least work worth sharing out: FLOPs of a layer's matrix products over the batch, at the
# measured break-even of the hand-offs against the second core (benchmarks/README.md).
MIN_FLOPS = 300e6

_local = threading.local()
_lock = threading.Lock()
_state = {"disabled": 0}


def inside() -> bool:
    """True in the calling thread of a lane: the kernels then run their serial loops (two
    lanes must not launch Numba's parallel loops at once, and each lane is one core's work)."""
    return getattr(_local, "depth", 0) > 0


@contextmanager
def disabled():
    """No lanes inside the block (every layer takes its unsplit path); for tests and benchmarks."""
    with _lock:
        _state["disabled"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["disabled"] -= 1


def count(n_rows: int, dtype, flops: float) -> int:
    """How many lanes a layer of `n_rows` rows (B * T) whose matrix products come to `flops`
    takes at inference: the number of BLAS threads (at most `n_rows`) for float32 rows with
    the fast kernels and at least :data:`MIN_FLOPS` of work, else 1 (no lanes: the unsplit
    path)."""
    from . import current

    if (np.dtype(dtype) != np.float32 or flops < MIN_FLOPS or _state["disabled"] or inside()
            or current() != "fast"):
        return 1
    if pool.blas() is None:
        return 1
    return max(1, min(pool.blas_threads(), n_rows))


def by_width(n_samples: int, lanes: int, width: int) -> bool:
    """Whether a block of `n_samples` samples goes into `lanes` lanes across its `width`
    (the heads of attention, the neurons of the FFN) rather than across rows: when there are
    fewer samples than lanes (one sentence: a share of its rows makes BLAS's blocks too short)
    and at least one head or neuron per lane."""
    return n_samples < lanes <= width


def row_parts(n: int, lanes: int) -> list:
    """`lanes` contiguous slices that cover range(n), as equal as possible (none empty when n >= lanes)."""
    bounds = np.linspace(0, n, lanes + 1).astype(int)
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def _in_lane(fn, part):
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        return fn(part)
    finally:
        _local.depth -= 1


def run(fn, parts) -> None:
    """``fn(part)`` for every part, the first in the calling thread and the others in worker
    threads at the same time, with BLAS at one thread; returns when all have finished and
    raises the first error any of them raised. `fn` writes its results into arrays it shares
    with the caller, each part into its own rows."""
    parts = list(parts)
    if not parts:
        return
    with pool.one_blas_thread():
        executor = pool.workers(len(parts) - 1) if len(parts) > 1 else None
        futures = [executor.submit(_in_lane, fn, part) for part in parts[1:]]
        try:
            _in_lane(fn, parts[0])
        finally:
            errors = []
            for f in futures:                      # wait for every lane before BLAS gets its threads back
                try:
                    f.result()
                except BaseException as exc:       # noqa: BLE001 - re-raised below
                    errors.append(exc)
        if errors:
            raise errors[0]


def run_and_sum(fn, parts):
    """``fn(part)`` for every part in lanes (:func:`run`), each returning an array of the same
    shape; returns their sum, taken in the calling thread in the order of `parts` (the first
    part's array, added into)."""
    parts = list(parts)
    results = [None] * len(parts)

    def one(j):
        results[j] = fn(parts[j])
    run(one, range(len(parts)))
    total = results[0]
    for result in results[1:]:
        total += result
    return total
