"""One training step of MiniLM-L6 (d=384, 6 layers, 12 heads, FFN 1536, vocab 30522): npcosteff vs PyTorch.

A step is forward with dropout (p = 0.1 on hidden states and attention probabilities),
cross-entropy on the classifier (npcosteff: one exit after the last layer with BERT's dense
pooler, i.e. ``BertForSequenceClassification``), backward, gradient clipping to norm 1 and
AdamW (lr 2e-5, weight decay 0.01). Both sides start from the packaged MiniLM checkpoint,
in float32, on the same random batch (token ids 1000..29999, no padding).

Each side runs in its own child process with every thread pool limited to ``--threads``
(NumPy's BLAS and Numba; torch.set_num_threads), for ``--rounds`` rounds that alternate the
sides (so that a change of machine load hits both), each timing ``--steps`` steps after one
warm-up step. Printed: median wall-clock step time, its split into forward / backward /
optimizer, the FLOP rate of the step's matrix products against the machine's measured
sgemm rate, peak memory, the npcosteff / torch ratios, and the step's floor: its matrix
products alone at the measured sgemm rate, the least time any side that calls a BLAS of that
rate can take.

Memory: each child records its peak resident set (``ru_maxrss``) after imports and one
tiny warm-up step (libraries loaded, kernels compiled: its baseline), and again after the
timed steps. "train MB" = peak - baseline: parameters, gradients, AdamW moments,
activations and temporaries, counted the same way for both sides (torch allocates its
gradients and moments lazily, npcosteff up front; both are inside the difference).

Allocator: the npcosteff child keeps freed memory in its process, as npcosteff's training loop
does (``npcosteff.allocator.keep_freed_memory``: no page faults for the arrays each step
allocates again); the torch child runs with glibc's defaults. ``--malloc-env`` gives both sides
glibc's environment variables for the same effect (npcosteff's own setting then stands aside),
which is the comparison of the two libraries on an equal allocator.

Also measured (``--compile``): the first-use cost of the Numba kernels: ``import npcosteff``
plus one training step of a tiny model, in a fresh process with an empty
``NUMBA_CACHE_DIR`` (cold: everything compiles) and again with the filled cache (warm).

    python -m benchmarks.bench_train_step [--threads 2] [--rounds 2] [--steps 5] [--sdpa] [--compile] [--malloc-env]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import npcosteff  # noqa: F401  (first: its thread settings, npcosteff/threads.py, precede Numba's first parallel loop)
import numpy as np

from benchmarks.common import (DEFAULT_POOLS, blas_summary, default_threads, limit_threads, machine_summary,
                               peak_rss_mb, pools_summary, report, run_child, sgemm_rate, thread_env,
                               torch_summary)

SIDES = ("npcosteff", "torch-eager", "torch-sdpa")
# glibc keeps freed memory in the process instead of returning it (and faulting it in again).
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "4000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}


def step_flops(batch: int, seq: int) -> float:
    """Matrix-product FLOPs of one training step: 3x the forward's (the backward computes the
    input and the weight gradient of every product, each as costly as the forward product)."""
    from npcosteff.config import CostEffConfig
    from npcosteff.flops import model_flops
    from npcosteff.pretrained import default_model_dir

    config = CostEffConfig.from_json(default_model_dir(), num_labels=2, exit_start=6, pooler="dense")
    return 3.0 * batch * model_flops(config, seq)


def make_batch(batch: int, seq: int):
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (batch, seq))
    labels = rng.integers(0, 2, batch)
    return ids, np.ones((batch, seq), np.int64), np.zeros((batch, seq), np.int64), labels


# ---------------------------------------------------------------------------- children
def child_npcosteff(args):
    from npcosteff.config import CostEffConfig
    from npcosteff.objectives import objective_loss
    from npcosteff.model import CostEffModel
    from npcosteff.nn.dropout import Dropout
    from npcosteff.optim import AdamW, clip_grad_norm
    from npcosteff.allocator import keep_freed_memory

    limit_threads(args.threads)
    kept = keep_freed_memory()          # as the training loop does (npcosteff/allocator.py)

    def make_step(model, ids, mask, types, labels):
        optimizer = AdamW(model.params, 2e-5, weight_decay=0.01, names=model.param_names)
        counter = [0]

        def step():
            t0 = time.perf_counter()
            model.zero_grad()
            dropout = Dropout(np.random.default_rng(counter[0]), 0.1, 0.1)
            counter[0] += 1
            out = model(ids, mask, types, training=True, dropout=dropout, return_cache=True)
            loss = objective_loss("hard", out, labels, mask, final_only=True)
            t1 = time.perf_counter()
            model.backward(out.cache, loss.grad_hidden_states, loss.grad_logits, loss.grad_attentions)
            del out
            t2 = time.perf_counter()
            clip_grad_norm(model.grads, 1.0, names=model.param_names)
            optimizer.step(model.grads, lr=2e-5)
            t3 = time.perf_counter()
            return t1 - t0, t2 - t1, t3 - t2
        return step

    tiny = CostEffConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16, num_labels=2, exit_start=2,
                         pooler="dense")
    tiny_batch = make_batch(2, 8)
    tiny_batch = (tiny_batch[0] % 100,) + tiny_batch[1:]
    make_step(CostEffModel(tiny, dtype=np.float32), *tiny_batch)()      # kernels loaded/compiled
    baseline = peak_rss_mb()
    model = CostEffModel.from_pretrained(num_labels=2, exit_start=6, pooler="dense", dtype=np.float32)
    return dict(run_steps(make_step(model, *make_batch(args.batch, args.seq)), args, baseline),
                freed_memory_kept=kept)


def child_torch(args, attn):
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging

    from npcosteff.pretrained import default_model_dir

    logging.set_verbosity_error()
    limit_threads(args.threads)
    torch.set_num_threads(args.threads)

    def make_step(model, ids, mask, types, labels):
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
        ids, mask, types, labels = (torch.from_numpy(a) for a in (ids, mask, types, labels))

        def step():
            t0 = time.perf_counter()
            optimizer.zero_grad()
            loss = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            t3 = time.perf_counter()
            return t1 - t0, t2 - t1, t3 - t2
        return step

    tiny = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=16, num_labels=2, attn_implementation=attn)
    tiny_batch = make_batch(2, 8)
    tiny_batch = (tiny_batch[0] % 100,) + tiny_batch[1:]
    make_step(BertForSequenceClassification(tiny), *tiny_batch)()       # libraries initialized
    baseline = peak_rss_mb()
    model = BertForSequenceClassification.from_pretrained(default_model_dir(), num_labels=2, attn_implementation=attn)
    return run_steps(make_step(model, *make_batch(args.batch, args.seq)), args, baseline)


def run_steps(step, args, baseline):
    import resource

    step()                                                               # warm-up step
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    phases, walls, cpus = [], [], []
    for _ in range(args.steps):
        w0, c0 = time.perf_counter(), time.process_time()
        phases.append(step())
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return dict(wall=walls, cpu=cpus, phases=phases, rss_baseline=baseline, rss_peak=peak_rss_mb(),
                minor_faults_per_step=(r1.ru_minflt - r0.ru_minflt) / args.steps,
                system_seconds_per_step=(r1.ru_stime - r0.ru_stime) / args.steps)


def child_compile(args):
    """import npcosteff + one float32 training step of a tiny model, timed from process start."""
    t0 = time.perf_counter()
    import npcosteff  # noqa: F401
    from npcosteff.config import CostEffConfig
    from npcosteff.objectives import objective_loss
    from npcosteff.model import CostEffModel
    from npcosteff.nn.dropout import Dropout
    from npcosteff.optim import AdamW, clip_grad_norm
    t_import = time.perf_counter() - t0
    config = CostEffConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=16, num_labels=2, exit_start=1,
                           embedding_rank=4)
    model = CostEffModel(config, dtype=np.float32)
    ids, mask, types, labels = make_batch(2, 8)
    ids %= 100
    out = model(ids, mask, types, training=True, dropout=Dropout(np.random.default_rng(0), 0.1, 0.1),
                return_cache=True)
    loss = objective_loss("hard", out, labels, mask)
    model.backward(out.cache, loss.grad_hidden_states, loss.grad_logits, loss.grad_attentions)
    clip_grad_norm(model.grads, 1.0)
    AdamW(model.params, 1e-3).step(model.grads)
    return dict(import_seconds=t_import, total_seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------- parent
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the sides")
    parser.add_argument("--sdpa", action="store_true", help="also time torch with attn_implementation='sdpa'")
    parser.add_argument("--compile", action="store_true", help="also measure the cold/warm Numba compile time")
    parser.add_argument("--malloc-env", action="store_true",
                        help="run both sides with glibc keeping freed memory (MALLOC_TRIM_THRESHOLD_, "
                             "MALLOC_MMAP_THRESHOLD_): no page faults of re-allocated arrays")
    parser.add_argument("--default-pools", action="store_true",
                        help="run both sides with OpenBLAS's and Numba's default thread-pool settings "
                             "(OPENBLAS_THREAD_TIMEOUT=28, NUMBA_THREADING_LAYER=omp) instead of "
                             "npcosteff's (npcosteff/threads.py)")
    parser.add_argument("--child", choices=SIDES + ("compile",), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child == "npcosteff":
            result = child_npcosteff(args)
        elif args.child == "compile":
            result = child_compile(args)
        else:
            result = child_torch(args, args.child.split("-")[1])
        report(result)
        return

    limit_threads(args.threads)
    print(__doc__.splitlines()[0])
    print(machine_summary())
    print(f"threads per side: {args.threads}; NumPy BLAS pools in this process:\n  " +
          blas_summary().replace("\n", "\n  "))
    print(torch_summary())
    rate = sgemm_rate(args.threads)
    flops = step_flops(args.batch, args.seq)
    print(f"measured sgemm rate (NumPy, 2048^3, {args.threads} threads): {rate:.1f} GFLOP/s")
    print(f"batch {args.batch} x {args.seq} tokens; matrix-product work per step {flops / 1e9:.1f} GFLOP; "
          f"{args.rounds} rounds x {args.steps} steps per side\n")

    sides = ["npcosteff", "torch-eager"] + (["torch-sdpa"] if args.sdpa else [])
    malloc_env = dict(MALLOC_ENV) if args.malloc_env else {}
    if malloc_env:
        print("both sides run with " + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()))
    if args.default_pools:
        malloc_env.update(DEFAULT_POOLS)
    print("both sides: " + pools_summary({**thread_env(args.threads), **malloc_env}))
    runs = {s: [] for s in sides}
    for r in range(args.rounds):
        for s in (sides if r % 2 == 0 else sides[::-1]):
            runs[s].append(run_child("benchmarks.bench_train_step",
                                     ["--child", s, "--threads", args.threads, "--batch", args.batch,
                                      "--seq", args.seq, "--steps", args.steps], args.threads, malloc_env))
            print(f"  round {r + 1}: {s:12s} median step {np.median(runs[s][-1]['wall']):.3f} s", flush=True)

    summary = {}
    for s, rs in runs.items():
        wall = np.concatenate([x["wall"] for x in rs])
        phases = np.concatenate([x["phases"] for x in rs])
        summary[s] = dict(wall=float(np.median(wall)), cpu=float(np.median(np.concatenate([x["cpu"] for x in rs]))),
                          fwd=float(np.median(phases[:, 0])), bwd=float(np.median(phases[:, 1])),
                          opt=float(np.median(phases[:, 2])),
                          spread=(float(wall.min()), float(wall.max())),
                          mem=float(max(x["rss_peak"] - x["rss_baseline"] for x in rs)),
                          peak=float(max(x["rss_peak"] for x in rs)),
                          faults=float(np.median([x["minor_faults_per_step"] for x in rs])),
                          sys=float(np.median([x["system_seconds_per_step"] for x in rs])))
    print(f"\n{'side':12s} {'step s':>7s} {'min..max':>13s} {'fwd':>6s} {'bwd':>6s} {'opt':>6s} {'cpu s':>6s} "
          f"{'GFLOP/s':>8s} {'%sgemm':>7s} {'train MB':>9s} {'peak MB':>8s} {'sys s':>6s}")
    for s, m in summary.items():
        gf = flops / m["wall"] / 1e9
        print(f"{s:12s} {m['wall']:7.3f} {m['spread'][0]:6.2f}..{m['spread'][1]:<6.2f} {m['fwd']:6.3f} "
              f"{m['bwd']:6.3f} {m['opt']:6.3f} {m['cpu']:6.2f} {gf:8.1f} {100 * gf / rate:6.1f}% "
              f"{m['mem']:9.0f} {m['peak']:8.0f} {m['sys']:6.3f}")
    ours = summary["npcosteff"]
    kept = {x.get("freed_memory_kept") for x in runs["npcosteff"]}
    print("npcosteff keeps freed memory in its process as its training loop does "
          f"(npcosteff.allocator.keep_freed_memory): {'yes' if kept == {True} else 'no' if kept == {False} else kept}")
    for s in sides[1:]:
        print(f"npcosteff / {s}: time {ours['wall'] / summary[s]['wall']:.2f} (median wall), "
              f"{ours['cpu'] / summary[s]['cpu']:.2f} (median CPU); "
              f"train memory {ours['mem'] / summary[s]['mem']:.2f}")
    floor = flops / (rate * 1e9)                    # s: every product at the measured sgemm rate
    print(f"floor: the step's matrix products alone at the measured sgemm rate take {floor:.3f} s = " +
          ", ".join(f"{floor / summary[s]['wall']:.2f} of {s}'s step" for s in sides[1:]) +
          " (no step that runs its products at this rate can be faster; 75% of sgemm is "
          f"{floor / 0.75:.3f} s)")
    print("train MB = peak resident memory - the child's resident memory after imports and a tiny "
          "warm-up step (params, grads, AdamW moments, activations, temporaries). "
          "sys s = kernel time per step (page faults of fresh allocations).")

    if args.compile:
        with tempfile.TemporaryDirectory() as cache:
            env = {"NUMBA_CACHE_DIR": cache}
            cold = run_child("benchmarks.bench_train_step", ["--child", "compile"], args.threads, env)
            warm = run_child("benchmarks.bench_train_step", ["--child", "compile"], args.threads, env)
        print(f"\nfirst use (import npcosteff + one tiny training step, fresh process): "
              f"cold Numba cache {cold['total_seconds']:.1f} s (import {cold['import_seconds']:.1f} s), "
              f"warm cache {warm['total_seconds']:.1f} s (import {warm['import_seconds']:.1f} s)")


if __name__ == "__main__":
    main()
