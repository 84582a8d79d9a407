"""Lanes: a layer at inference split over the cores by rows, by samples or by heads.

One sample of 128 tokens is little work for two cores: each matrix product of a layer
(128 x 384 by 384 x 384) is too small for a multi-threaded BLAS to split well, and the
elementwise loops (bias + GELU, softmax, LayerNorm) are too short to be worth waking Numba's
worker threads, so they run in one thread while the other core idles. Yet every step of a
layer is independent across something: the projections, the output dense, LayerNorm and the
FFN across rows (tokens), the attention core (scores, softmax, context) across heads and
samples; and for one sentence, whose rows are few, a head's whole way through the block
(projections, core, its part of the output dense) across heads and the FFN across neurons,
each lane's part of the output summed by the caller (npcosteff/nn/attention.py, ffn.py).
A lane is one such share: :func:`run` hands each lane but the first to a worker
thread, runs the first in the calling thread, and waits for all of them, with BLAS limited
to one thread and every Numba loop run in its calling thread (:func:`inside`), so the lanes
never compete for the same threads. Each lane computes its rows exactly as the whole call
would: the results are those of the unsplit layer up to the summation order of BLAS
(tests/test_lanes.py).

Handing a lane to a worker costs from about 30 microseconds to a few hundred, four times
per layer for several samples, twice for one. Measured on 2 cores (5 December 2026, MiniLM-L6, 128 tokens, float32, median ms per forward pass with /
without lanes, one process, the sides alternating): batch 1 32.9 / 37.6, batch 4 93 / 118,
batch 8 174 / 231, batch 16 331 / 399, batch 32 674-698 / 803-928: a float32 forward pass at
inference (no dropout, no cache) takes lanes when BLAS has more than one thread and the
layer has the work (below; benchmarks/README.md has the side-by-side figures against
PyTorch).

A share is worth its hand-offs only when there is enough work to share: a layer takes lanes
(both its blocks, or neither: a layer with its attention unsplit and its FFN in lanes ran
slower than either) when the matrix products of the layer over the batch come to at least
:data:`MIN_FLOPS` (``flops.layer_flops``). Measured on 2 cores (5 December 2026, whole
forward passes, median ms with every layer in lanes / none): MiniLM at 1 x 16 tokens (57
MFLOP a layer) 13.0 / 8.3, 1 x 64 (233) 21.3 / 20.5, 1 x 96 (354) 26.2 / 28.9, 1 x 128
(478) 37.7 / 44.5; a 6-head, FFN-768 student at 1 x 128 (239) 19.2 / 16.2, 2 x 128 (478)
34.8 / 37.9; a 2-head, FFN-128 student at 1 x 16 (6 MFLOP) 7.6 / 3.6, 4 x 128 (218) 16.9 /
17.6, 8 x 128 (436) 29.2 / 32.1. Below about 300 MFLOP a layer's four hand-offs (a few
hundred microseconds on that virtual machine, the worker's wake-up and BLAS's thread count
set and reset included) cost more than the second core saves: a short sentence through a
slender early-exit student ran twice as slowly with lanes in every layer.

Only float32 layers with the ``fast`` kernels take lanes (the speed path; a float64 model
runs its exact kernels unsplit); with ``NPCOSTEFF_KERNELS=reference`` no worker thread runs and
the layers take their plain path.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from .batched import _blas, _one_blas_thread

__all__ = ["MIN_FLOPS", "by_width", "count", "inside", "row_parts", "run", "run_and_sum", "disabled"]

# The least work worth sharing out: FLOPs of a layer's matrix products over the batch, at
# the measured break-even (between 233 and 354 MFLOP for MiniLM, 218 and 436 for a student).
MIN_FLOPS = 300e6

_local = threading.local()
_lock = threading.Lock()
_state = {"pool": None, "workers": 0, "disabled": 0}


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
    blas = _blas()
    if blas is None:
        return 1
    return max(1, min(min(lib.num_threads for lib in blas.lib_controllers), n_rows))


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


def _pool(workers: int) -> ThreadPoolExecutor:
    with _lock:
        if _state["workers"] < workers:
            if _state["pool"] is not None:
                _state["pool"].shutdown(wait=True)
            _state["pool"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npcosteff-lane")
            _state["workers"] = workers
        return _state["pool"]


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
    blas = _blas()
    with _one_blas_thread(blas) if blas is not None else _nothing():
        futures = [_pool(len(parts) - 1).submit(_in_lane, fn, part) for part in parts[1:]] if len(parts) > 1 else []
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


@contextmanager
def _nothing():
    yield
