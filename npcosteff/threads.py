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
    setting cannot change any more, and inference on few cores slows down markedly
    (benchmarks/README.md)."""
    try:
        from threadpoolctl import threadpool_info
        openblas = any(lib.get("internal_api") == "openblas" and lib.get("num_threads", 1) > 1
                       for lib in threadpool_info())       # one thread: none idles
    except Exception:                          # threadpoolctl missing or unusable: no way to tell
        return
    if openblas:
        warnings.warn(
            "NumPy was imported before npcosteff, so its OpenBLAS started without OPENBLAS_THREAD_TIMEOUT and its "
            "idle threads spin on the cores that npcosteff's kernels need, which slows inference markedly on "
            "few cores. Import npcosteff before NumPy, or set OPENBLAS_THREAD_TIMEOUT=4 in the environment "
            "(npcosteff/threads.py).", RuntimeWarning, stacklevel=3)


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
