"""Uniform draws for the dropout masks, filled by several threads, equal to ``rng.random``.

A training step of MiniLM at batch 32 x 128 draws about 57 million uniform numbers for its
dropout masks (the attention probabilities, 32 x 12 x 128 x 128 per layer, and the hidden
states), and ``rng.random`` draws them in one thread: it was the largest step of a training
step after the matrix products (benchmarks/README.md). The draws of a permuted congruential
generator can be cut into parts without changing them, because its state can jump ahead:
``PCG64.advance(k)`` puts a copy where the generator will be after ``k`` more 64-bit outputs,
in a few hundred operations. :func:`uniform` gives each of ``n`` threads a copy of the
generator advanced to the start of its part, lets each fill its part of the output (NumPy's
fill runs without the GIL), and leaves the caller's generator where one ``rng.random(shape,
dtype)`` would have left it. The numbers are those of ``rng.random(shape, dtype)``, bit for
bit, and so is the generator's state afterwards (tests/test_kernels.py).

How the draws consume the generator (NumPy's ``random_standard_uniform_fill``): a float64 is
one 64-bit output (its top 53 bits); a float32 is one 32-bit half (its top 24 bits), and the
two halves of a 64-bit output serve two draws, the second kept in the generator's buffer
(``has_uint32``, ``uinteger`` of its state) until the next float32 draw. So a part of float32
draws may start only where the buffer is empty: every part but the first starts at an even
number of draws after the buffered one. ``advance`` empties the buffer of its copy, which is
then right for such a start; the caller's buffer is restored for float64 draws, which do not
touch it.

Other bit generators (MT19937, Philox, SFC64) and small draws take ``rng.random`` itself.
"""

from __future__ import annotations

import numpy as np

from . import pool

__all__ = ["uniform", "MIN_PART"]

# Fewest draws per thread: below this, the hand-off costs more than the part (a hidden-state
# mask of one small batch). 2^18 float32 draws take about half a millisecond (PCG64, one core).
MIN_PART = 1 << 18
_JUMPABLE = (np.random.PCG64, np.random.PCG64DXSM)   # the bit generators whose advance counts 64-bit outputs


def _part_starts(n: int, parts: int, buffered: int, per_output: int) -> list:
    """Start (in draws) of each of `parts` parts of n draws: every part but the first begins
    where the generator's 32-bit buffer is empty (float32: an even number of draws after the
    `buffered` one)."""
    starts = [0]
    for j in range(1, parts):
        s = j * n // parts
        if per_output == 2 and (s - buffered) % 2:
            s += 1
        starts.append(max(s, starts[-1]))
    return starts


def uniform(rng: np.random.Generator, shape, dtype, threads: int) -> np.ndarray:
    """``rng.random(shape, dtype)`` (float32 or float64), drawn by up to `threads` threads,
    with the same numbers and the same generator state afterwards (module docstring)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    bit_generator = rng.bit_generator
    parts = min(int(threads), n // MIN_PART)
    if parts < 2 or type(bit_generator) not in _JUMPABLE:
        return rng.random(shape, dtype=dtype)
    state = bit_generator.state
    per_output = 2 if dtype == np.float32 else 1                     # draws per 64-bit output
    buffered = int(state["has_uint32"]) if per_output == 2 else 0    # a float32 waiting in the buffer
    starts = _part_starts(n, parts, buffered, per_output) + [n]
    out = np.empty(n, dtype)                                         # (n,), reshaped at the end
    generators = []
    for j in range(parts):
        copy = type(bit_generator)()
        copy.state = state
        if j > 0:
            copy.advance((starts[j] - buffered) // per_output)       # 64-bit outputs before part j
        generators.append(np.random.Generator(copy))

    def fill(j):
        generators[j].random(out=out[starts[j]:starts[j + 1]], dtype=dtype)

    executor = pool.workers(parts - 1)
    futures = [executor.submit(fill, j) for j in range(1, parts)]
    try:
        fill(0)
    finally:
        for f in futures:                                            # every part done before the state moves
            f.result()
    end = generators[-1].bit_generator.state                         # where one rng.random would stop
    if per_output == 1:                                              # float64 draws leave the buffer as it was
        end["has_uint32"], end["uinteger"] = state["has_uint32"], state["uinteger"]
    bit_generator.state = end
    return out.reshape(shape)
