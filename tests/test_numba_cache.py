"""Warm Numba cache, no compile: the kernels are ``cache=True``, so a fresh process whose cache
folder was filled by an earlier one loads every kernel of the inference path (a forward pass
and an early-exit pass, float32) from the cache and compiles none."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh process: the counts are those of one process's dispatchers.
SCRIPT = r"""
import gc, json
import numpy as np
from numba.core.dispatcher import Dispatcher

from npcosteff.config import CostEffConfig
from npcosteff.early_exit import early_exit_forward
from npcosteff.model import CostEffModel

config = CostEffConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                       intermediate_size=20, max_position_embeddings=24, num_labels=2, exit_start=1)
model = CostEffModel(config, dtype=np.float32, seed=0)
ids = np.random.default_rng(0).integers(4, 40, (3, 10))
mask = np.ones_like(ids)
mask[0, 7:] = 0
model(ids, mask, np.zeros_like(ids))
early_exit_forward(model, ids, mask, np.zeros_like(ids), threshold=0.5)
stats = {}
for obj in gc.get_objects():
    if isinstance(obj, Dispatcher) and obj.py_func.__module__.startswith("npcosteff") and obj.signatures:
        s = obj.stats
        stats[obj.py_func.__qualname__] = [sum(s.cache_hits.values()), sum(s.cache_misses.values())]
print(json.dumps(stats))
"""


def _run(cache_dir):
    env = dict(os.environ, NPCOSTEFF_KERNELS="fast", NUMBA_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_inference_path_compiles_nothing_with_a_warm_cache(tmp_path):
    cold = _run(tmp_path)
    assert cold, "the inference path ran no compiled kernel"
    assert all(misses > 0 for _, misses in cold.values()), cold      # empty cache: each one compiled
    warm = _run(tmp_path)
    # Helpers such as the row sums compile in the cold run as callees; a cached caller does not
    # load them at all, so the warm run may list fewer kernels, never others.
    assert warm and set(warm) <= set(cold), (cold, warm)
    compiled = {name: misses for name, (_, misses) in warm.items() if misses}
    assert not compiled, f"compiled again with a warm cache: {compiled}"
    assert all(hits > 0 for hits, _ in warm.values()), warm
