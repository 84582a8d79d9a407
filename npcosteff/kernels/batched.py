"""Batched matrix products of the attention heads, parallel over the batch.

Attention multiplies B * H small matrices per product: (T, d_h) x (d_h, T) for the scores,
(T, T) x (T, d_h) for the context, and four such products in the backward pass.
``np.matmul`` runs them as B * H separate BLAS calls, and a multi-threaded BLAS splits
each tiny call across its threads: the threads then meet B * H times per product. That
costs little on an idle machine, but when the cores are shared with other processes every
meeting waits for a descheduled thread, and the products become 10 to 50 times slower.

:func:`batched_matmul` therefore gives each BLAS thread its own share of the batch instead:
the batch axis is cut into as many contiguous
chunks as BLAS has threads, each chunk is one ``np.matmul`` call in a worker thread with
BLAS limited to one thread (NumPy releases the GIL inside), and the threads meet once per
product. Results are those of
``np.matmul``: every (T, d_h) product is the same single-threaded BLAS call.

Handing shares to the worker threads costs about 0.15-0.2 ms per product, so a product of
little work (under :data:`POOL_MIN_FLOPS`: one sample's heads at inference, a slender
student's two heads over short sentences) runs as one call with BLAS limited to one thread.

The BLAS thread count is read (and temporarily set to 1) through ``threadpoolctl``; without
it, or with one BLAS thread, the function is plain ``np.matmul``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

__all__ = ["batched_matmul"]

# Below this many floating-point operations a product runs as one single-threaded call. Measured
# on 2 cores (2 December 2026, float32, queue paused): (32, 2, 25, 32) x (32, 2, 32, 25), 2.6
# MFLOP, 0.22 ms through the pool against 0.07 ms in one call; (32, 12, 25, 32), 15 MFLOP, about
# even (0.49 / 0.47 ms); (8, 12, 128, 32) x (.., 32, 128), 101 MFLOP, 0.72 ms against 1.25 ms.
POOL_MIN_FLOPS = 50e6

_lock = threading.Lock()
_state = {"blas": None, "pool": None, "workers": 0, "checked": False}


def _blas():
    """threadpoolctl's handle on the BLAS libraries of this process (None without threadpoolctl)."""
    if not _state["checked"]:
        with _lock:
            if not _state["checked"]:
                try:
                    from threadpoolctl import ThreadpoolController

                    blas = ThreadpoolController().select(user_api="blas")
                    _state["blas"] = blas if blas.lib_controllers else None
                except Exception:                          # threadpoolctl missing or unusable
                    _state["blas"] = None
                _state["checked"] = True
    return _state["blas"]


def _pool(workers: int) -> ThreadPoolExecutor:
    with _lock:
        if _state["workers"] < workers:
            if _state["pool"] is not None:
                _state["pool"].shutdown(wait=True)
            _state["pool"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npcosteff-heads")
            _state["workers"] = workers
        return _state["pool"]


@contextmanager
def _one_blas_thread(blas):
    """BLAS limited to one thread inside the block: threadpoolctl's ``limit`` without its
    bookkeeping (22 against 7 microseconds per use, measured 5 December 2026; a batch-1
    forward pass enters it 12 times)."""
    libs = blas.lib_controllers
    saved = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, saved):
            lib.set_num_threads(n)


def batched_matmul(a, b, out=None):
    """``np.matmul(a, b, out=out)`` for a (n, ..., p, k) and b (n, ..., k, q) with the same
    leading axes, run as one single-threaded BLAS share of the batch axis per BLAS thread
    (one single-threaded call when the batch has fewer entries than there are threads, or the
    product fewer than :data:`POOL_MIN_FLOPS` operations).

    Returns out (n, ..., p, q), a new array when `out` is None; `out` may be a strided view
    (for example the heads of a (B*T, H*d_h) array) as long as each matrix is BLAS-readable.
    """
    blas = _blas()
    threads = 1 if blas is None else min(lib.num_threads for lib in blas.lib_controllers)
    if threads <= 1 or a.ndim < 3 or b.ndim != a.ndim or a.shape[:-2] != b.shape[:-2]:
        return np.matmul(a, b, out=out)
    flops = 2.0 * np.prod(a.shape[:-1], dtype=np.float64) * a.shape[-1] * b.shape[-1]
    if a.shape[0] < threads or flops < POOL_MIN_FLOPS:
        # Fewer samples than threads (batch 1 at inference), or little work: a share per thread
        # costs more in hand-offs than it saves; one BLAS thread runs these small products
        # fastest, and no thread meets another.
        with _one_blas_thread(blas):
            return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(a.shape[:-1] + b.shape[-1:], np.result_type(a, b))
    n = a.shape[0]
    bounds = np.linspace(0, n, threads + 1).astype(int)             # contiguous shares of the batch
    pool = _pool(threads)
    with _one_blas_thread(blas):
        futures = [pool.submit(np.matmul, a[lo:hi], b[lo:hi], out=out[lo:hi])
                   for lo, hi in zip(bounds[:-1], bounds[1:])]
        for f in futures:
            f.result()
    return out
