"""Lanes: a layer at inference split over the cores by rows, by samples or by heads.

One sample of 128 tokens is little work for two cores: each matrix product of a layer
(128 x 384 by 384 x 384) is too small for a multi-threaded BLAS to split well, and the
elementwise loops (bias + GELU, softmax, LayerNorm) are too short to be worth waking Numba's
worker threads, so they run in one thread while the other core idles. Yet every step of a
layer is independent across something: the projections, the output dense, LayerNorm and the
FFN across rows (tokens), the attention core (scores, softmax, context) across heads and
samples. A lane is one such share: :func:`run` hands each lane but the first to a worker
thread, runs the first in the calling thread, and waits for all of them, with BLAS limited
to one thread and every Numba loop run in its calling thread (:func:`inside`), so the lanes
never compete for the same threads. Each lane computes its rows exactly as the whole call
would: the results are those of the unsplit layer up to the summation order of BLAS
(tests/test_lanes.py).

Handing a lane to a worker costs about 30 microseconds, four times per layer. Measured
on 2 cores (5 December 2026, MiniLM-L6, 128 tokens, float32, median ms per forward pass with /
without lanes, one process, the sides alternating): batch 1 32.9 / 37.6, batch 4 93 / 118,
batch 8 174 / 231, batch 16 331 / 399, batch 32 674-698 / 803-928; every batch size gains, so
every float32 forward pass at inference (no dropout, no cache) takes lanes when BLAS has
more than one thread (benchmarks/README.md has the side-by-side figures against PyTorch).

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

__all__ = ["count", "inside", "row_parts", "run", "disabled"]

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


def count(n_rows: int, dtype) -> int:
    """How many lanes a layer of `n_rows` rows (B * T) takes at inference: the number of BLAS
    threads (at most `n_rows`) for float32 rows with the fast kernels, else 1 (no lanes: the
    unsplit path)."""
    from . import current

    if np.dtype(dtype) != np.float32 or _state["disabled"] or inside() or current() != "fast":
        return 1
    blas = _blas()
    if blas is None:
        return 1
    return max(1, min(min(lib.num_threads for lib in blas.lib_controllers), n_rows))


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


@contextmanager
def _nothing():
    yield
