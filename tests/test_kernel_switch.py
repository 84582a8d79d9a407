"""The kernel switch reaches everything: with ``NPCOSTEFF_KERNELS=reference`` a training run
(forward with dropout, backward, clipping, AdamW) and an early-exit pass run no compiled
function and start no worker thread, so the whole model is plain NumPy; with the default
``fast`` kernels the same run does use them (so the check can fail)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh process: which kernels are selected is fixed when npcosteff is imported.
SCRIPT = r"""
import json, sys, types
import numpy as np
import numba.core.registry
from threadpoolctl import threadpool_limits

from npcosteff import kernels
from npcosteff.kernels import pool
from npcosteff.config import CostEffConfig
from npcosteff.data.batching import EncodedSplit
from npcosteff.early_exit import early_exit_forward
from npcosteff.model import CostEffModel
from npcosteff.train import Trainer, TrainingArguments

rng = np.random.default_rng(0)
ids = [np.concatenate([[2], rng.integers(4, 40, int(t)), [3]]) for t in rng.integers(2, 9, 24)]
split = EncodedSplit(ids, [np.zeros(len(x), np.int64) for x in ids], np.array([int(x[1] % 2) for x in ids]), 12)
config = CostEffConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                       intermediate_size=20, max_position_embeddings=24, num_labels=2, exit_start=1,
                       embedding_rank=8)
model = CostEffModel(config, dtype=np.float32, seed=0)
with threadpool_limits(2):        # two BLAS threads: the threaded batched products would start
    Trainer(model, TrainingArguments(task="sst2", max_steps=3, batch_size=8, eval_every=3, progress=False,
                                     learning_rate=1e-3, seed=0), split, split, output_dir=sys.argv[1]).train()
    batch = np.stack([np.pad(x, (0, 12 - len(x))) for x in ids[:4]])
    early_exit_forward(model, batch, (batch > 0).astype(np.int64), np.zeros_like(batch), threshold=0.3)

compiled = []
for name, module in list(sys.modules.items()):
    if name.startswith("npcosteff") and isinstance(module, types.ModuleType):
        for attr, obj in vars(module).items():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and obj.signatures:
                compiled.append(f"{name}.{attr}")
print(json.dumps({"kernels": kernels.current(), "compiled": sorted(set(compiled)),
                  "threads_started": pool.started()}))
"""


def _run(tmp_path, implementation):
    env = dict(os.environ, NPCOSTEFF_KERNELS=implementation)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / implementation)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reference_switch_runs_no_compiled_function(tmp_path):
    got = _run(tmp_path, "reference")
    assert got["kernels"] == "reference"
    assert got["compiled"] == [], f"compiled functions ran under NPCOSTEFF_KERNELS=reference: {got['compiled']}"
    assert not got["threads_started"]


@pytest.mark.slow
def test_fast_switch_does_run_compiled_functions(tmp_path):
    got = _run(tmp_path, "fast")
    assert got["kernels"] == "fast"
    for expected in ("npcosteff.kernels.fused._adamw_loop", "npcosteff.kernels.fused._scatter_add_rows",
                     "npcosteff.kernels.fast_softmax._softmax_loop_f32_serial"):
        assert expected in got["compiled"], got["compiled"]
