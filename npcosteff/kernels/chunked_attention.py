"""The heads' attention core a few samples at a time, shared out over the cores.

The core of an attention block (its plain twin, step by step over the whole batch, is
:func:`npcosteff.kernels.reference.attention_core`):

    scores  = q k^T + additive_mask                     (B, H, T, T)
    probs   = softmax(scores)                           (B, H, T, T)
    weights = probs * probs_dropout * head_mask         (B, H, T, T)
    context = weights v                                 (B, H, T, d_h)

and its backward (:func:`~npcosteff.kernels.reference.attention_core_backward`):

    dweights = dcontext v^T,  dv = weights^T dcontext
    dscores  = softmax backward of dweights * head_mask * probs_dropout (+ dprobs_extra)
    dq = dscores k,           dk = dscores^T q

Step by step over the batch, every line is a pass over memory: at MiniLM's training shape
(32 samples x 12 heads x 128 x 128, float32) each (B, H, T, T) array is 25 MB, far more
than the caches hold, and forward and backward write or read such an array about seventeen
times per layer. Here each core takes a contiguous share of the samples and runs every step
on a chunk of them before the next chunk (:data:`~npcosteff.kernels.common.CORE_CHUNK_FLOATS`:
one MiniLM sample at 128 tokens, 768 KB per (H, T, T) array), so a chunk's scores, weights and
gradients stay in the core's cache; what goes to memory is probs (kept for the backward), the
dropout mask and the small (T, d_h) arrays. The backward recomputes the weights from probs and
the mask instead of keeping a third (B, H, T, T) array from the forward pass.

The numbers are those of the step-by-step composition of the fast kernels, to the bit: each
(T, d_h) product is the same single-threaded BLAS call that ``np.matmul`` makes for it over
the whole batch, and each row of the softmax, of the weights and of their backward is the
same loop, run serially inside a share (:func:`~npcosteff.kernels.common.serial`). The shares
run as lanes (:func:`npcosteff.kernels.lanes.run`): BLAS at one thread, so that the cores
meet twice per call instead of once for each of the B * H tiny products (a multi-threaded
BLAS splits each of them over its threads, which then wait on each other whenever another
process holds a core). Fewer samples than cores, or little work (:data:`MIN_FLOPS`), take one
share, in the calling thread, as does a core called inside a lane.
"""

from __future__ import annotations

import numpy as np

from . import common, lanes, pool
from .checks import check_attention_core
from .fast_softmax import softmax
from .fused import attention_probs_backward, attention_weights
from .inference import softmax_inference

__all__ = ["attention_core", "attention_core_backward", "MIN_FLOPS"]

# Below this many floating-point operations of products the core runs in one share: the
# hand-off to a worker thread costs more than the second core saves (benchmarks/README.md).
MIN_FLOPS = 50e6


def _shares(B: int, H: int, T: int, d_h: int) -> list:
    """Contiguous shares of the B samples, one per BLAS thread (inside a lane BLAS has one);
    one share for little work or fewer samples than threads."""
    flops = 4.0 * B * H * T * T * d_h                                  # the two products of the forward
    n = pool.blas_threads()
    if flops < MIN_FLOPS or B < n:
        n = 1
    return lanes.row_parts(B, n)


def _run(fn, shares) -> None:
    """fn(share) for each share: two or more as lanes; one in the calling thread, with BLAS at
    one thread all the same (a multi-threaded BLAS would split each tiny product)."""
    if len(shares) > 1:
        lanes.run(fn, shares)
        return
    with pool.one_blas_thread():
        for share in shares:
            fn(share)


def _chunks(share: slice, H: int, T: int):
    """The share's samples as slices of one chunk each (:func:`.common.core_chunk_samples`)."""
    per_chunk = common.core_chunk_samples(H, T)
    for lo in range(share.start, share.stop, per_chunk):
        yield slice(lo, min(lo + per_chunk, share.stop))


def attention_core(q, k, v, additive_mask=None, probs_dropout=None, head_mask=None, inference=False):
    """:func:`npcosteff.kernels.reference.attention_core` by chunks of samples (module
    docstring): q, k, v (B, H, T, d_h) -> (context (B, H, T, d_h), probs (B, H, T, T))."""
    mask, probs_dropout, head_mask, _ = check_attention_core(q, k, v, additive_mask, probs_dropout, head_mask)
    B, H, T, d_h = q.shape
    probs = np.empty((B, H, T, T), q.dtype)                            # (B, H, T, T), kept for the backward
    context = np.empty((B, H, T, d_h), q.dtype)                        # (B, H, T, d_h)
    row_softmax = softmax_inference if inference else softmax

    def share(samples):
        for c in _chunks(samples, H, T):
            scores = np.matmul(q[c], k[c].transpose(0, 1, 3, 2))       # (b, H, T, T), in cache
            probs[c] = row_softmax(scores, None if mask is None else mask[c])
            weights = attention_weights(probs[c], None if probs_dropout is None else probs_dropout[c], head_mask)
            np.matmul(weights, v[c], out=context[c])                   # (b, H, T, d_h)

    _run(share, _shares(B, H, T, d_h))
    return context, probs


def attention_core_backward(dcontext, q, k, v, probs, probs_dropout=None, head_mask=None, dprobs_extra=None):
    """:func:`npcosteff.kernels.reference.attention_core_backward` by chunks of samples:
    -> (dq, dk, dv), each (B, H, T, d_h)."""
    _, probs_dropout, head_mask, dprobs_extra = check_attention_core(
        q, k, v, None, probs_dropout, head_mask, dcontext=dcontext, probs=probs, dprobs_extra=dprobs_extra)
    B, H, T, d_h = q.shape
    dq, dk, dv = (np.empty((B, H, T, d_h), q.dtype) for _ in range(3))   # (B, H, T, d_h) each

    def share(samples):
        for c in _chunks(samples, H, T):
            drop = None if probs_dropout is None else probs_dropout[c]
            weights = attention_weights(probs[c], drop, head_mask)     # (b, H, T, T), recomputed
            dweights = np.matmul(dcontext[c], v[c].transpose(0, 1, 3, 2))   # (b, H, T, T)
            np.matmul(weights.transpose(0, 1, 3, 2), dcontext[c], out=dv[c])
            dscores = attention_probs_backward(dweights, probs[c], head_mask, drop,
                                               None if dprobs_extra is None else dprobs_extra[c])
            np.matmul(dscores, k[c], out=dq[c])
            np.matmul(dscores.transpose(0, 1, 3, 2), q[c], out=dk[c])

    _run(share, _shares(B, H, T, d_h))
    return dq, dk, dv
