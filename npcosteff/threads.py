"""How the two thread pools of a training step share the cores.

A training step alternates between two kinds of parallel work many times per layer: matrix
products in NumPy's BLAS (OpenBLAS, its own threads) and the elementwise loops of
:mod:`npcosteff.kernels` (Numba, its own threads). Each library keeps its threads spinning
for a while after a parallel call, waiting for the next one. On a machine with few cores the
idle pool then spins on the very cores the busy pool needs, and both slow down
(benchmarks/README.md, "Measurements behind the kernels' design").

Two settings make an idle pool sleep instead; :func:`configure` applies them when
``npcosteff`` is imported, each only if the user has not chosen otherwise:

* ``OPENBLAS_THREAD_TIMEOUT=4`` (environment): OpenBLAS threads go to sleep after 2^4 clock
  cycles of waiting instead of its default 2^28 (about 0.1 s). OpenBLAS reads the variable
  when it is loaded, that is when NumPy is first imported. When npcosteff is imported first
  the variable is simply in place. When NumPy came first (``import numpy as np`` then
  ``import npcosteff``, the usual order), OpenBLAS has already read its settings and started
  its threads, so :func:`configure` asks it to read them again (``openblas_read_env``) and
  stops its idle threads (``blas_thread_shutdown_``, what OpenBLAS itself does in a forked
  child); its next parallel call starts them afresh with the short wait. Both functions are
  exported by the OpenBLAS that NumPy ships; with a BLAS that lacks them (another build, MKL)
  nothing is changed, and npcosteff warns only if that BLAS is an OpenBLAS whose idle threads
  still spin.
  PyTorch does not use NumPy's OpenBLAS, so the setting does not touch it.
* Numba's ``workqueue`` threading layer instead of OpenMP, whose threads spin (``OMP_WAIT_POLICY``
  is not set to ``PASSIVE`` globally because that would also slow PyTorch's OpenMP pool).
  ``workqueue`` supports no nested parallelism and no concurrent launches from several Python
  threads, which npcosteff never does; set ``NUMBA_THREADING_LAYER`` to choose another layer.

Numba's layer is fixed once its threads start: a parallel loop or ``numba.set_num_threads``
before ``import npcosteff`` starts the default (OpenMP) one, and npcosteff then warns.

Results do not depend on either setting: the loops split their work the same way under any
threading layer, and BLAS results do not depend on how long its threads wait.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["OPENBLAS_TIMEOUT", "NUMBA_LAYER", "configure", "openblas_libraries", "openblas_thread_timeout",
           "timeout_set_here"]

OPENBLAS_TIMEOUT = "4"       # log2 of the clock cycles an idle OpenBLAS thread waits before sleeping
NUMBA_LAYER = "workqueue"    # Numba threading layer whose idle threads sleep


def configure() -> None:
    """Apply the two settings (module docstring) unless the user has set them.

    Runs on ``import npcosteff``; later calls change nothing. The OpenBLAS setting counts in
    either import order (after NumPy, by restarting OpenBLAS's idle threads); the threading
    layer counts only before Numba's first parallel call.
    """
    numpy_first = "numpy" in sys.modules and "OPENBLAS_THREAD_TIMEOUT" not in os.environ
    if "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_TIMEOUT
        _state["set_here"] = True
    if numpy_first and not _restart_openblas_threads():
        _warn_if_openblas_started()
    if "NUMBA_THREADING_LAYER" not in os.environ:
        try:
            import numba
        except ImportError:                    # no Numba: the NumPy reference kernels run
            return
        if numba.config.THREADING_LAYER == "default":
            numba.config.THREADING_LAYER = NUMBA_LAYER
        _warn_if_started_before(numba)


_state = {"set_here": False}


def timeout_set_here() -> bool:
    """Whether ``OPENBLAS_THREAD_TIMEOUT`` in this process's environment is npcosteff's (set on
    import) rather than the user's: a program that starts others as a user would (the
    benchmarks) leaves it out of their environment."""
    return _state["set_here"]


def openblas_libraries() -> list:
    """ctypes handles of the OpenBLAS libraries loaded in this process (through threadpoolctl;
    empty without it)."""
    import ctypes

    try:
        from threadpoolctl import threadpool_info
        paths = [lib["filepath"] for lib in threadpool_info() if lib.get("internal_api") == "openblas"]
    except Exception:                          # threadpoolctl missing or unusable: no way to find them
        return []
    return [ctypes.CDLL(path) for path in paths]          # the loaded library, not a second copy


def openblas_thread_timeout() -> list:
    """The thread wait (log2 of clock cycles, as in ``OPENBLAS_THREAD_TIMEOUT``; 0 for the
    compiled-in default) that each loaded OpenBLAS has read, for benchmarks and tests."""
    return [int(lib.openblas_thread_timeout()) for lib in openblas_libraries()
            if hasattr(lib, "openblas_thread_timeout")]


def _restart_openblas_threads() -> bool:
    """Make every loaded OpenBLAS read ``OPENBLAS_THREAD_TIMEOUT`` again and stop its idle
    threads, so that the ones it starts next wait the short time. True when every OpenBLAS
    now has the setting (or there is none), False when one could not be changed.

    Safe at import: no BLAS call is running (OpenBLAS stops its threads the same way in a
    forked child). Its threads start again on its next parallel call, a few microseconds.
    """
    wanted = int(os.environ["OPENBLAS_THREAD_TIMEOUT"])
    try:
        libs = openblas_libraries()
        for lib in libs:
            if not all(hasattr(lib, f) for f in ("openblas_read_env", "openblas_thread_timeout",
                                                  "blas_thread_shutdown_")):
                return False
            lib.openblas_read_env()
            if int(lib.openblas_thread_timeout()) != wanted:
                return False
            lib.blas_thread_shutdown_()
    except Exception:                          # an unexpected build: leave it as it is, and warn
        return False
    return True


def _warn_if_openblas_started() -> None:
    """Warn when NumPy, imported before npcosteff, has loaded an OpenBLAS whose idle threads
    could not be made to sleep (a build without the functions :func:`_restart_openblas_threads`
    uses): they spin for their default wait, and inference on few cores slows down markedly
    (benchmarks/README.md)."""
    try:
        from threadpoolctl import threadpool_info
        openblas = any(lib.get("internal_api") == "openblas" and lib.get("num_threads", 1) > 1
                       for lib in threadpool_info())       # one thread: none idles
    except Exception:                          # threadpoolctl missing or unusable: no way to tell
        return
    if openblas:
        warnings.warn(
            "NumPy was imported before npcosteff and its OpenBLAS could not be told to let idle threads sleep, so they "
            "spin on the cores that npcosteff's kernels need, which slows inference markedly on few cores. Import "
            "npcosteff before NumPy, or set OPENBLAS_THREAD_TIMEOUT=4 in the environment (npcosteff/threads.py).",
            RuntimeWarning, stacklevel=3)


def _warn_if_started_before(numba) -> None:
    """Warn when Numba's threads already run under another layer: a parallel loop or
    ``numba.set_num_threads`` before ``import npcosteff`` starts them, and the layer cannot
    change afterwards; OpenMP's spinning threads then slow a forward pass (benchmarks/README.md)."""
    try:
        layer = numba.threading_layer()
    except ValueError:                         # not started yet: the choice above applies
        return
    if layer != NUMBA_LAYER:
        warnings.warn(
            f"Numba's threads were started with the {layer!r} threading layer before npcosteff was imported "
            f"(by a parallel loop or numba.set_num_threads); its idle threads spin on the cores that the matrix "
            f"products need, which slows npcosteff's kernels. Import npcosteff first, or set "
            f"NUMBA_THREADING_LAYER to choose a layer yourself (npcosteff/threads.py).",
            RuntimeWarning, stacklevel=3)
