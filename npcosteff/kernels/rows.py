"""Row reductions in float64 shared by the Numba kernels (sums, dot products, squared deviations).

Each is compiled with ``reassoc`` so that LLVM may split the sum into vector lanes (a
sequential sum waits on every previous add). The order of the additions is then fixed by the
compiled code, not by the thread count, and differs from a sequential sum only by float64
rounding (about 1e-16 relative, far below float32's 6e-8). Vectorized sums made LayerNorm and
its backward much faster than four interleaved accumulators compiled without
``reassoc`` (benchmarks/README.md, "Measurements behind the kernels' design").
"""

from __future__ import annotations

import numpy as np
from numba import njit

_jit_sum = dict(fastmath={"reassoc", "contract"}, cache=True)


@njit(**_jit_sum)
def row_sum(a):
    """sum_j a_j in float64, a (n,)."""
    s = 0.0
    for j in range(a.shape[0]):
        s += np.float64(a[j])
    return s


@njit(**_jit_sum)
def row_dot(a, b):
    """sum_j a_j b_j in float64, a, b (n,)."""
    s = 0.0
    for j in range(a.shape[0]):
        s += np.float64(a[j]) * np.float64(b[j])
    return s


@njit(**_jit_sum)
def row_sq_dev(a, mu):
    """sum_j (a_j - mu)^2 in float64, a (n,)."""
    s = 0.0
    for j in range(a.shape[0]):
        c = np.float64(a[j]) - mu
        s += c * c
    return s
