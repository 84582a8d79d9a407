"""npcosteff.allocator: training keeps its freed memory (glibc), unless the user chose otherwise.

Each check runs in a fresh interpreter, because the setting is process-wide and permanent.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from npcosteff import allocator

GLIBC = allocator._glibc() is not None and hasattr(allocator._glibc(), "mallinfo2")

# Allocate, touch and free a 64 MB array; report where glibc put it (mallinfo2: bytes in blocks of
# their own mmap while it lives) and how much freed memory the heap holds after it is freed.
REUSE = """
import ctypes, sys
import numpy as np
from npcosteff.allocator import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
a = np.ones(8 << 20)                             # 64 MB
mapped = mallinfo2().hblkhd
del a
print(applied, mapped, mallinfo2().fordblks)
"""
MB64 = 64 << 20


def _run(code, *args, **env):
    clean = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS + ("NPCOSTEFF_KEEP_FREED_MEMORY",)}
    out = subprocess.run([sys.executable, "-c", code, *args], env={**clean, **env}, capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not GLIBC, reason="glibc >= 2.33 reports where its blocks live (mallinfo2); elsewhere "
                    "keep_freed_memory changes nothing or cannot be observed")
def test_freed_memory_is_reused_without_page_faults():
    applied, mapped, free_after = map(eval, _run(REUSE, "keep"))
    assert applied is True
    assert mapped < MB64 and free_after >= MB64        # from the heap, and kept there once freed
    _, mapped, free_after = map(eval, _run(REUSE, "default"))
    assert mapped >= MB64 and free_after < MB64        # glibc's default: its own mmap, given back


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "100000"}, {"GLIBC_TUNABLES": "glibc.malloc.mxfast=0"},
                                 {"NPCOSTEFF_KEEP_FREED_MEMORY": "0"}])
def test_the_users_settings_are_left_alone(env):
    code = "from npcosteff.allocator import keep_freed_memory; print(keep_freed_memory())"
    assert _run(code, **env) == ["False"]


def test_the_training_loop_applies_it(monkeypatch):
    import numpy as np

    from npcosteff.config import CostEffConfig
    from npcosteff.data.batching import EncodedSplit
    from npcosteff.model import CostEffModel
    from npcosteff.train import Trainer, TrainingArguments

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    ids = [np.array([2, 5, 6, 3]), np.array([2, 7, 3])]
    split = EncodedSplit(ids, [np.zeros(len(x), np.int64) for x in ids], np.array([0, 1]), 8)
    config = CostEffConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=16, max_position_embeddings=16, num_labels=2, exit_start=1)
    Trainer(CostEffModel(config, dtype=np.float64, seed=0),
            TrainingArguments(task="sst2", max_steps=1, batch_size=2, progress=False), split).train()
    assert calls == [1]


def test_packing_a_model_applies_it(monkeypatch):
    import numpy as np

    from npcosteff.config import CostEffConfig
    from npcosteff.model import CostEffModel
    from npcosteff.packed_model import pack

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    config = CostEffConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=16, max_position_embeddings=16, num_labels=2, exit_start=1)
    pack(CostEffModel(config, dtype=np.float32, seed=0))
    assert calls == [1]
