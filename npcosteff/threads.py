"""How the two thread pools of a training step share the cores.

A training step alternates between two kinds of parallel work many times per layer: matrix
products in NumPy's BLAS (OpenBLAS, its own threads) and the elementwise loops of
:mod:`npcosteff.kernels` (Numba, its own threads). Each library keeps its threads spinning
for a while after a parallel call, waiting for the next one. On a machine with few cores the
idle pool then spins on the very cores the busy pool needs: on 2 cores the Numba loops ran
3-4 times slower inside a training step than on their own, and the whole step 20-35% slower.

Two settings make an idle pool sleep instead; :func:`configure` applies them when
``npcosteff`` is imported, each only if the user has not chosen otherwise:

* ``OPENBLAS_THREAD_TIMEOUT=4`` (environment): OpenBLAS threads go to sleep after 2^4 clock
  cycles of waiting instead of its default 2^28 (about 0.1 s). OpenBLAS reads the variable
  when it is loaded, that is when NumPy is first imported: it takes effect when npcosteff is
  imported before NumPy (as the ``npcosteff`` command does); otherwise set it in the shell
  (npcosteff warns when NumPy came first without it).
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

__all__ = ["OPENBLAS_TIMEOUT", "NUMBA_LAYER", "configure"]

OPENBLAS_TIMEOUT = "4"       # log2 of the clock cycles an idle OpenBLAS thread waits before sleeping
NUMBA_LAYER = "workqueue"    # Numba threading layer whose idle threads sleep


def configure() -> None:
    """Apply the two settings (module docstring) unless the user has set them.

    Must run before NumPy's first import for the OpenBLAS setting to count, and before Numba's
    first parallel call for the threading layer to count; later calls change nothing.
    """
    numpy_first = "numpy" in sys.modules and "OPENBLAS_THREAD_TIMEOUT" not in os.environ
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_TIMEOUT)
    if numpy_first:
        _warn_if_openblas_started()
    if "NUMBA_THREADING_LAYER" not in os.environ:
        try:
            import numba
        except ImportError:                    # no Numba: the NumPy reference kernels run
            return
        if numba.config.THREADING_LAYER == "default":
            numba.config.THREADING_LAYER = NUMBA_LAYER
        _warn_if_started_before(numba)


def _warn_if_openblas_started() -> None:
    """Warn when NumPy, imported before npcosteff, has loaded OpenBLAS without
    ``OPENBLAS_THREAD_TIMEOUT``: its idle threads then spin for their default wait, which the
    setting cannot change any more. Measured on 2 cores (6 December 2026, early exit over STS-B
    dev, every model in one process): a 2-head, FFN-128 student took 2.05 s with NumPy imported
    first and 1.23-1.33 s with npcosteff first; the naive-exits baseline 13.4 s against 8.0-8.3 s."""
    try:
        from threadpoolctl import threadpool_info
        openblas = any(lib.get("internal_api") == "openblas" and lib.get("num_threads", 1) > 1
                       for lib in threadpool_info())       # one thread: none idles
    except Exception:                          # threadpoolctl missing or unusable: no way to tell
        return
    if openblas:
        warnings.warn(
            "NumPy was imported before npcosteff, so its OpenBLAS started without OPENBLAS_THREAD_TIMEOUT and its "
            "idle threads spin on the cores that npcosteff's kernels need (inference 1.5-1.7 times slower on "
            "2 cores). Import npcosteff before NumPy, or set OPENBLAS_THREAD_TIMEOUT=4 in the environment "
            "(npcosteff/threads.py).", RuntimeWarning, stacklevel=3)


def _warn_if_started_before(numba) -> None:
    """Warn when Numba's threads already run under another layer: a parallel loop or
    ``numba.set_num_threads`` before ``import npcosteff`` starts them, and the layer cannot
    change afterwards. Measured on 2 cores (4 December 2026): one batch-1 forward pass of
    MiniLM-L6 took 59-75 ms with OpenMP started that way, 42 ms with ``workqueue``."""
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
