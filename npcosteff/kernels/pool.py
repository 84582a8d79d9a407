"""The kernels' one pool of worker threads, and the BLAS thread count they work around.

Kernels hand work to other threads in lanes (:mod:`~npcosteff.kernels.lanes`): the layers
shared out at inference (one share of a layer per lane) and the heads' attention core (one
share of the samples per BLAS thread, :mod:`~npcosteff.kernels.chunked_attention`). The lanes
run with BLAS limited to one thread, so that each share is one core's work and no BLAS thread
waits on another; the dropout draws (:mod:`~npcosteff.kernels.draws`) fill their parts in the
same workers. All take their worker threads from :func:`workers`: one pool for the process,
started on first use and grown when a caller needs more workers than it has. With
``NPCOSTEFF_KERNELS=reference`` nothing calls it and no worker thread starts (:func:`started`).

The BLAS thread count is read and set through ``threadpoolctl``; without it (or when it
finds no BLAS) :func:`blas` is None, :func:`blas_threads` is 1 and :func:`one_blas_thread`
changes nothing.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

__all__ = ["blas", "blas_threads", "one_blas_thread", "workers", "started"]

_lock = threading.Lock()
_state = {"blas": None, "checked": False, "pool": None, "workers": 0}


def blas():
    """threadpoolctl's handle on the BLAS libraries of this process (None without threadpoolctl)."""
    if not _state["checked"]:
        with _lock:
            if not _state["checked"]:
                try:
                    from threadpoolctl import ThreadpoolController

                    controller = ThreadpoolController().select(user_api="blas")
                    _state["blas"] = controller if controller.lib_controllers else None
                except Exception:                          # threadpoolctl missing or unusable
                    _state["blas"] = None
                _state["checked"] = True
    return _state["blas"]


def blas_threads() -> int:
    """The number of threads BLAS now uses (the least over its libraries; 1 without threadpoolctl)."""
    handle = blas()
    return 1 if handle is None else min(lib.num_threads for lib in handle.lib_controllers)


@contextmanager
def one_blas_thread():
    """BLAS limited to one thread inside the block, its counts restored afterwards:
    threadpoolctl's ``limit`` without its bookkeeping, which costs more per use than the
    small products inside the block save (benchmarks/README.md)."""
    handle = blas()
    if handle is None:
        yield
        return
    libs = handle.lib_controllers
    saved = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, saved):
            lib.set_num_threads(n)


def workers(n: int) -> ThreadPoolExecutor:
    """The pool, with at least `n` worker threads (a larger one replaces a smaller one)."""
    with _lock:
        if _state["workers"] < n:
            if _state["pool"] is not None:
                _state["pool"].shutdown(wait=True)
            _state["pool"] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="npcosteff-worker")
            _state["workers"] = n
        return _state["pool"]


def started() -> bool:
    """Whether any worker thread has been started in this process."""
    return _state["pool"] is not None
