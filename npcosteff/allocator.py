"""Training and serving keep their freed memory: no page faults for the arrays every step allocates again.

Every training step allocates the same large arrays again: the activations a layer keeps for
its backward pass, its gradients, the dropout masks (25 MB each for the attention of MiniLM at
32 x 128 tokens). glibc's ``malloc`` serves such sizes from fresh ``mmap`` pages or from the top
of its heap, and when they are freed it gives the pages back to the operating system (``munmap``,
or trimming the heap's top). The next step then touches the same amount of memory anew, and
every 4 KiB page costs a page fault: about a quarter of a second of kernel time per step of
MiniLM at batch 32, a tenth of the step (the ``sys s`` column of ``bench_train_step``,
benchmarks/README.md).

:func:`keep_freed_memory` asks glibc to keep what is freed, with two documented ``mallopt``
settings: ``M_MMAP_MAX = 0`` (large blocks come from the heap, not from their own ``mmap``) and
``M_TRIM_THRESHOLD`` at its largest (the heap's free top is not given back). The process's peak
memory does not change (the same arrays are live at the peak); what changes is that the freed
memory stays with the process, ready for the next step, until the process ends. The training
loop (:class:`npcosteff.train.Trainer`) calls it when it starts, and :func:`npcosteff.packed_model.pack`
when it prepares a model for serving (a pass over a batch allocates the same arrays as the pass
before it: 50 ms of page faults in a 600 ms pass of MiniLM at 32 x 128 tokens).

It changes nothing, and returns False, where the C library is not glibc (macOS, musl), or
where the user chose the allocator's settings through its environment (``MALLOC_MMAP_MAX_``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, or
``GLIBC_TUNABLES``), or where ``NPCOSTEFF_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory", "USER_SETTINGS"]

# The environment through which a user sets glibc's allocator: if any is set, it is theirs.
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "GLIBC_TUNABLES")
_M_TRIM_THRESHOLD = -1                 # <malloc.h>: keep up to this many free bytes at the heap's top
_M_MMAP_MAX = -4                       # <malloc.h>: at most this many blocks in their own mmap
_INT_MAX = 2**31 - 1
_state = {"applied": None}


def _glibc():
    """The process's C library if it is glibc (it exports ``gnu_get_libc_version``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version                          # AttributeError off glibc (musl)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory in the process (module docstring); once per
    process. Returns whether the settings are in effect."""
    if _state["applied"] is not None:
        return _state["applied"]
    applied = False
    if os.environ.get("NPCOSTEFF_KEEP_FREED_MEMORY", "1").strip() != "0" and not any(
            name in os.environ for name in USER_SETTINGS):
        libc = _glibc()
        if libc is not None:
            # mallopt returns 1 on success; both settings are plain integers glibc accepts.
            applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    _state["applied"] = applied
    return applied
