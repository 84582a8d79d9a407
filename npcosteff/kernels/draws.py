"""Dropout masks drawn by several threads from the generator's raw bits, equal to the reference's.

A training step of MiniLM at batch 32 x 128 draws about 57 million uniform numbers for its
dropout masks (the attention probabilities, 32 x 12 x 128 x 128 per layer, and the hidden
states). The reference draws them with ``rng.random(shape, dtype)`` in one thread and then
compares them with p (:func:`npcosteff.kernels.reference.dropout_mask`); here the same
numbers are made, and compared, in parts and in several threads.

**The same numbers.** NumPy turns the bits of the generator into uniform numbers by a fixed
rule (``random_standard_uniform_fill``): a float64 is the top 53 bits of one 64-bit output
times 2^-53; a float32 is the top 24 bits of a 32-bit half times 2^-24, the two halves of a
64-bit output serving two draws, low half first, the high half kept in the generator's buffer
(``has_uint32``, ``uinteger`` of its state) until the next float32 draw. Both products are
exact, so :func:`dropout_multiplier` reads the raw outputs (``bit_generator.random_raw``,
about a third faster than ``rng.random``'s fill), applies the rule and the comparison
``u >= p`` in one compiled pass per block of outputs while they are in cache, and writes the
mask: bit for bit the reference's mask, and the generator's state afterwards (its position and
its buffer) is the state ``rng.random(shape, dtype)`` leaves (tests/test_kernels.py).

**In parts.** The draws of a permuted congruential generator can be cut into parts without
changing them, because its state can jump ahead: ``PCG64.advance(k)`` puts a copy where the
generator will be after ``k`` more 64-bit outputs, in a few hundred operations. Each of
``threads`` workers takes a copy advanced to the start of its part and fills its part of the
mask (NumPy's ``random_raw`` and the compiled pass both run without the GIL). A float32 part
may start only where the buffer is empty: every part but the first starts at an even number of
draws after the buffered one.

Other bit generators (MT19937, Philox, SFC64) and small masks take the reference's way:
``rng.random`` in the calling thread, then the comparison.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import pool, reference

__all__ = ["dropout_multiplier", "MIN_PART"]

# Fewest draws per thread: below this, the hand-off costs more than the part (a hidden-state
# mask of one small batch). 2^18 float32 draws take about a third of a millisecond (PCG64, one core).
MIN_PART = 1 << 18
# 64-bit outputs per block of a part: 256 KB of raw bits, read back while in the core's cache.
BLOCK_OUTPUTS = 1 << 15
_JUMPABLE = (np.random.PCG64, np.random.PCG64DXSM)   # the bit generators whose advance counts 64-bit outputs
_FLOAT32_STEP = np.float32(1.0 / 16777216.0)      # 2^-24: a float32 draw is (32-bit half >> 8) * 2^-24
_FLOAT64_STEP = 1.0 / 9007199254740992.0          # 2^-53: a float64 draw is (64-bit output >> 11) * 2^-53


@njit(nogil=True, fastmath=False, cache=True)
def _mask_from_halves(bits, p, scale, out):
    """out (k,) float32 <- scale where the float32 draw of each 32-bit half in bits (k,) is >= p, else 0."""
    for i in range(out.shape[0]):
        u = np.float32(bits[i] >> np.uint32(8)) * _FLOAT32_STEP      # exact: 24 bits times 2^-24
        out[i] = scale if u >= p else np.float32(0.0)


@njit(nogil=True, fastmath=False, cache=True)
def _mask_from_outputs(bits, p, scale, out):
    """out (k,) float64 <- scale where the float64 draw of each 64-bit output in bits (k,) is >= p, else 0."""
    for i in range(out.shape[0]):
        u = np.float64(bits[i] >> np.uint64(11)) * _FLOAT64_STEP     # exact: 53 bits times 2^-53
        out[i] = scale if u >= p else 0.0


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


def _fill(bit_generator, out, p, scale, per_output) -> int:
    """Fill out (k,) with the mask of the next k draws taken from fresh 64-bit outputs of
    `bit_generator` (its 32-bit buffer not used), a block at a time; returns the last output
    drawn (its high half is what a float32 draw would leave in the buffer), None for none."""
    k = out.shape[0]
    last = None
    for lo in range(0, k, BLOCK_OUTPUTS * per_output):
        hi = min(k, lo + BLOCK_OUTPUTS * per_output)
        raw = bit_generator.random_raw(-(-(hi - lo) // per_output))                # (outputs,) uint64
        if per_output == 2:
            _mask_from_halves(raw.view(np.uint32)[:hi - lo], p, scale, out[lo:hi])   # low half, then high
        else:
            _mask_from_outputs(raw, p, scale, out[lo:hi])
        last = int(raw[-1])
    return last


def dropout_multiplier(rng: np.random.Generator, shape, p: float, dtype, threads: int) -> np.ndarray:
    """The inverted-dropout multiplier of :func:`npcosteff.kernels.reference.dropout_mask`
    (``rng.random(shape, dtype) >= p``, kept elements scaled by ``1 / (1 - p)``) for 0 < p < 1,
    drawn by up to `threads` threads; the same mask, to the bit, and the same generator state
    afterwards (module docstring)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    bit_generator = rng.bit_generator
    parts = min(int(threads), n // MIN_PART)
    if parts < 2 or type(bit_generator) not in _JUMPABLE:
        return reference.dropout_mask(rng, shape, p, dtype)                           # the reference itself
    threshold, scale = dtype.type(p), dtype.type(1.0 / (1.0 - p))                   # as the reference rounds them
    state = bit_generator.state
    per_output = 2 if dtype == np.float32 else 1                     # draws per 64-bit output
    buffered = int(state["has_uint32"]) if per_output == 2 else 0    # a float32 draw waiting in the buffer
    starts = _part_starts(n, parts, buffered, per_output) + [n]
    out = np.empty(n, dtype)                                         # (n,), reshaped at the end
    if buffered:                                                     # the first draw is the buffered half
        _mask_from_halves(np.array([state["uinteger"]], np.uint32), threshold, scale, out[:1])
    generators = []
    for j in range(parts):
        copy = type(bit_generator)()
        copy.state = state
        if j > 0:
            copy.advance((starts[j] - buffered) // per_output)       # 64-bit outputs before part j
        generators.append(copy)
    last = [None] * parts                                            # each part's last 64-bit output

    def fill(j):
        lo = starts[j] + (buffered if j == 0 else 0)                 # part 0's buffered draw is done
        last[j] = _fill(generators[j], out[lo:starts[j + 1]], threshold, scale, per_output)

    executor = pool.workers(parts - 1)
    futures = [executor.submit(fill, j) for j in range(1, parts)]
    try:
        fill(0)
    finally:
        for f in futures:                                            # every part done before the state moves
            f.result()
    end = generators[-1].state                                       # the position after the last output
    if per_output == 1:                                              # float64 draws leave the buffer as it was
        end["has_uint32"], end["uinteger"] = state["has_uint32"], state["uinteger"]
    else:                                                            # as NumPy's 32-bit draws leave it
        from_outputs = n - buffered                                  # draws taken from fresh outputs
        end["has_uint32"] = from_outputs % 2                         # an odd count leaves a high half
        drawn = [x for x in last if x is not None]
        end["uinteger"] = (drawn[-1] >> 32) if drawn else state["uinteger"]
    bit_generator.state = end
    return out.reshape(shape)
