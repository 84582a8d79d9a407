"""Batched matrix products of the attention heads, parallel over the batch.

Attention multiplies B * H small matrices per product: (T, d_h) x (d_h, T) for the scores,
(T, T) x (T, d_h) for the context, and four such products in the backward pass.
``np.matmul`` runs them as B * H separate BLAS calls, and a multi-threaded BLAS splits
each tiny call across its threads: the threads then meet B * H times per product. That
costs little on an idle machine, but when the cores are shared with other processes every
meeting waits for a descheduled thread, and the products become many times slower
(benchmarks/README.md).

:func:`batched_matmul` therefore gives each BLAS thread its own share of the batch instead:
the batch axis is cut into as many contiguous chunks as BLAS has threads, each chunk is one
``np.matmul`` call in a worker thread of the kernels' pool (:mod:`~npcosteff.kernels.pool`)
with BLAS limited to one thread (NumPy releases the GIL inside), and the threads meet once
per product. Results are those of ``np.matmul``: every (T, d_h) product is the same
single-threaded BLAS call.

Handing shares to the worker threads has a fixed cost per product, so a product of little
work (under :data:`POOL_MIN_FLOPS`: one sample's heads at inference, a slender student's two
heads over short sentences) runs as one call with BLAS limited to one thread.

The BLAS thread count is read (and temporarily set to 1) through ``threadpoolctl``; without
it, or with one BLAS thread, the function is plain ``np.matmul``.
"""

from __future__ import annotations

import numpy as np

from . import pool

__all__ = ["batched_matmul"]

# Below this many floating-point operations a product runs as one single-threaded call: the
# hand-off to the pool costs more than it saves (benchmarks/README.md).
POOL_MIN_FLOPS = 50e6


def batched_matmul(a, b, out=None):
    """``np.matmul(a, b, out=out)`` for a (n, ..., p, k) and b (n, ..., k, q) with the same
    leading axes, run as one single-threaded BLAS share of the batch axis per BLAS thread
    (one single-threaded call when the batch has fewer entries than there are threads, or the
    product fewer than :data:`POOL_MIN_FLOPS` operations).

    Returns out (n, ..., p, q), a new array when `out` is None; `out` may be a strided view
    (for example the heads of a (B*T, H*d_h) array) as long as each matrix is BLAS-readable.
    """
    threads = pool.blas_threads()
    if threads <= 1 or a.ndim < 3 or b.ndim != a.ndim or a.shape[:-2] != b.shape[:-2]:
        return np.matmul(a, b, out=out)
    flops = 2.0 * np.prod(a.shape[:-1], dtype=np.float64) * a.shape[-1] * b.shape[-1]
    if a.shape[0] < threads or flops < POOL_MIN_FLOPS:
        # Fewer samples than threads (batch 1 at inference), or little work: a share per thread
        # costs more in hand-offs than it saves; one BLAS thread runs these small products
        # fastest, and no thread meets another.
        with pool.one_blas_thread():
            return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(a.shape[:-1] + b.shape[-1:], np.result_type(a, b))
    n = a.shape[0]
    bounds = np.linspace(0, n, threads + 1).astype(int)             # contiguous shares of the batch
    executor = pool.workers(threads)
    with pool.one_blas_thread():
        futures = [executor.submit(np.matmul, a[lo:hi], b[lo:hi], out=out[lo:hi])
                   for lo, hi in zip(bounds[:-1], bounds[1:])]
        for f in futures:
            f.result()
    return out
