"""Inference with the full MiniLM-L6 (all 6 layers, one classifier): npcosteff vs PyTorch and ONNX Runtime, batch 1 and 32.

One forward pass in evaluation mode (no dropout, no caches kept; torch under
``torch.inference_mode()``) on a random batch of ``--seq`` tokens without padding, from the
packaged MiniLM in float32. Each side runs in its own child process with ``--threads``
threads in every pool; printed are the median time of ``--repeat`` passes (after two
warm-up passes), the time per sample and the ratios of each npcosteff side to the others. The sides run in
``--rounds`` rounds that alternate their order; each figure is the median over rounds.

npcosteff runs twice: ``npcosteff`` is the model's own ``forward`` (the plain layers, shared
out over the cores by :mod:`npcosteff.kernels.lanes_layer`), ``npcosteff-packed`` the same
model packed for inference once before the timing (:func:`npcosteff.packed_model.pack`: the
weights laid out for the products, as ONNX Runtime prepares its session).

Also measured (``--compile``): the first use of the inference path in a fresh process,
``import npcosteff`` plus one forward pass and one early-exit pass of a tiny float32 model,
once with an empty ``NUMBA_CACHE_DIR`` (every kernel it needs compiles) and once with the
cache that run filled, with the number of kernels each run compiled (warm: none;
``tests/test_numba_cache.py`` checks it).

ONNX Runtime (installed with the ``bench`` extra) is the anchor: the same checkpoint as
``transformers.BertForSequenceClassification``, exported to ONNX once before the rounds
(:func:`benchmarks.common.export_onnx`), run by a CPU session with ``--threads`` intra-op
threads and every graph optimization; its logits are checked against transformers' on the
batch it times (printed, with the largest difference). Without onnxruntime its side is
skipped and the header says so.

With ``--import-order``, npcosteff also runs in a child that imports NumPy before npcosteff
(``import numpy as np`` first, as most programs do), to show that the order costs nothing
(npcosteff/threads.py); the OpenBLAS thread wait each npcosteff child ended up with is printed.

With ``--baseline DIR`` npcosteff as it is in another checkout (for example ``git worktree add
/tmp/before HEAD~1``) runs as one more side, in the same alternating rounds, so that a change
is measured against the code before it on the same machine at the same time.

Run it on the CPU's own OpenBLAS kernel (the header says which ran):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_inference [--threads 2] [--seq 128]
        [--batches 1 32] [--rounds 3] [--sdpa] [--import-order] [--no-ort] [--compile] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if "--numpy-first" in sys.argv:     # a child of --import-order: NumPy before npcosteff, as most programs do
    import numpy  # noqa: F401
import npcosteff  # noqa: F401,E402
import numpy as np  # noqa: E402

from benchmarks.common import (default_threads, export_onnx, have_onnxruntime, limit_threads,  # noqa: E402
                               exported_model, onnxruntime_session, reference_logits, print_header, report, run_child,
                               time_calls)

SIDES = ("npcosteff", "npcosteff-packed", "torch-eager", "torch-sdpa", "onnxruntime")
OURS = ("npcosteff", "npcosteff-packed", "numpy-first", "baseline")      # the sides that run npcosteff


def make_batch(batch: int, seq: int):
    rng = np.random.default_rng(0)
    return rng.integers(1000, 30000, (batch, seq)), np.ones((batch, seq), np.int64), np.zeros((batch, seq), np.int64)


def child_compile() -> dict:
    """import npcosteff + a forward and an early-exit pass of a tiny float32 model, timed from
    process start; and how many npcosteff kernels compiled on the way."""
    import gc

    t0 = time.perf_counter()
    import npcosteff  # noqa: F401
    from npcosteff.config import CostEffConfig
    from npcosteff.early_exit import early_exit_forward
    from npcosteff.model import CostEffModel
    t_import = time.perf_counter() - t0
    config = CostEffConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=16, num_labels=2, exit_start=1)
    model = CostEffModel(config, dtype=np.float32)
    ids, mask, types = make_batch(2, 8)
    ids %= 100
    model(ids, mask, types)
    early_exit_forward(model, ids, mask, types, threshold=0.5)
    total = time.perf_counter() - t0
    from numba.core.dispatcher import Dispatcher
    compiled = sum(sum(obj.stats.cache_misses.values()) for obj in gc.get_objects()
                   if isinstance(obj, Dispatcher) and obj.py_func.__module__.startswith("npcosteff"))
    return dict(import_seconds=t_import, total_seconds=total, compiled=compiled)


def child(args) -> dict:
    if args.child == "compile":
        return child_compile()
    results = {}
    if args.child in ("npcosteff", "npcosteff-packed"):
        from npcosteff.model import CostEffModel
        from npcosteff.threads import openblas_thread_timeout

        limit_threads(args.threads)
        model = CostEffModel.from_pretrained(num_labels=2, exit_start=6, pooler="dense", dtype=np.float32)
        if args.child == "npcosteff-packed":
            from npcosteff.packed_model import pack

            model = pack(model)                            # once, as ONNX Runtime builds its session once
        for b in args.batches:
            ids, mask, types = make_batch(b, args.seq)
            results[b] = time_calls(lambda: model(ids, mask, types), args.repeat, warmup=2)
        results["openblas_timeout"] = openblas_thread_timeout()
    elif args.child == "onnxruntime":
        limit_threads(args.threads)
        session = onnxruntime_session(args.onnx, args.threads)
        reference = exported_model()                       # loaded once, for every batch's check
        for b in args.batches:
            ids, mask, types = make_batch(b, args.seq)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            logits = session.run(["logits"], feed)[0]
            results[f"diff{b}"] = float(np.abs(logits - reference_logits(reference, ids, mask, types)).max())
            results[b] = time_calls(lambda: session.run(["logits"], feed), args.repeat, warmup=2)
    else:
        import torch
        from transformers import BertForSequenceClassification
        from transformers.utils import logging

        from npcosteff.pretrained import default_model_dir

        logging.set_verbosity_error()
        limit_threads(args.threads)
        torch.set_num_threads(args.threads)
        model = BertForSequenceClassification.from_pretrained(
            default_model_dir(), num_labels=2, attn_implementation=args.child.split("-")[1]).eval()
        for b in args.batches:
            ids, mask, types = (torch.from_numpy(a) for a in make_batch(b, args.seq))

            def run():
                with torch.inference_mode():
                    model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            results[b] = time_calls(run, args.repeat, warmup=2)
    return {str(b): v for b, v in results.items()}


def side_args(side: str) -> list:
    """The child's --child argument (and flag) for a side of the table."""
    if side == "baseline":
        return ["--child", "npcosteff"]
    if side == "numpy-first":
        return ["--child", "npcosteff", "--numpy-first"]
    return ["--child", side]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the sides")
    parser.add_argument("--sdpa", action="store_true", help="also time torch with attn_implementation='sdpa'")
    parser.add_argument("--compile", action="store_true", help="also measure the cold/warm first use of the kernels")
    parser.add_argument("--baseline", metavar="DIR", help="also time npcosteff from this other checkout")
    parser.add_argument("--import-order", action="store_true",
                        help="also time npcosteff imported after NumPy (import numpy as np; import npcosteff)")
    parser.add_argument("--no-ort", action="store_true", help="leave ONNX Runtime out")
    parser.add_argument("--child", choices=SIDES + ("compile",), help=argparse.SUPPRESS)
    parser.add_argument("--numpy-first", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report(child(args))
        return

    limit_threads(args.threads)
    print_header(__doc__, args.threads)
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "benchmarks", "bench_inference.py")):
        parser.error(f"--baseline {args.baseline}: not a checkout of this repository (no benchmarks/bench_inference.py)")
    ort = not args.no_ort and have_onnxruntime()
    sides = (["npcosteff", "npcosteff-packed"] + (["numpy-first"] if args.import_order else [])
             + (["baseline"] if args.baseline else [])
             + (["onnxruntime"] if ort else []) + ["torch-eager"] + (["torch-sdpa"] if args.sdpa else []))
    workdir = tempfile.TemporaryDirectory()
    onnx_path = export_onnx(os.path.join(workdir.name, "minilm.onnx")) if ort else None
    # Rounds alternate the order of the sides, so that a change in the machine's speed during
    # the run (a shared machine) falls on both; each side's figure is its median over rounds.
    rounds = {s: [] for s in sides}
    for r in range(args.rounds):
        for s in (sides if r % 2 == 0 else sides[::-1]):
            rounds[s].append(run_child("benchmarks.bench_inference",
                                       side_args(s) + ["--threads", args.threads, "--seq", args.seq,
                                                       "--repeat", args.repeat, "--batches", *args.batches]
                                       + (["--onnx", onnx_path] if s == "onnxruntime" else []),
                                       args.threads, checkout=args.baseline if s == "baseline" else None))
        print(f"  round {r + 1}: " + "; ".join(
            f"batch {b} " + " ".join(f"{s} {1e3 * rounds[s][-1][str(b)][0]:.1f} ms" for s in sides)
            for b in args.batches), flush=True)
    res = {s: {str(b): (float(np.median([x[str(b)][0] for x in rs])), float(np.median([x[str(b)][1] for x in rs])))
               for b in args.batches} for s, rs in rounds.items()}
    workdir.cleanup()
    for s in sides:
        if "openblas_timeout" in rounds[s][0]:
            print(f"{s}: OpenBLAS thread wait read by each child (log2 cycles): "
                  f"{sorted({tuple(x['openblas_timeout']) for x in rounds[s]})}")
    if ort:
        print("onnxruntime: largest |logit - transformers' logit| on the timed batch: " + ", ".join(
            f"batch {b} {max(x['diff' + str(b)] for x in rounds['onnxruntime']):.1e}" for b in args.batches))
    print(f"\nsequence length {args.seq}, median over {args.rounds} rounds of the median of {args.repeat} "
          f"passes (wall clock)")
    print(f"{'batch':>5s} " + " ".join(f"{s + ' ms':>18s} {'ms/sample':>9s}" for s in sides))
    for b in args.batches:
        print(f"{b:5d} " + " ".join(f"{1e3 * res[s][str(b)][0]:18.2f} {1e3 * res[s][str(b)][0] / b:9.2f}"
                                    for s in sides))
    # Each npcosteff side against each other side: the ratio of the medians, and of every round.
    print("\nratios (time of the row's side / time of the column's side; the rounds' own ratios in brackets)")
    for ours in [s for s in sides if s in OURS]:
        for other in [s for s in sides if s != ours and (s not in OURS or ours == "npcosteff")]:
            print(f"  {ours + ' / ' + other:>40s}: " + "; ".join(
                f"batch {b} {res[ours][str(b)][0] / res[other][str(b)][0]:.2f} ("
                + ", ".join(f"{x[str(b)][0] / y[str(b)][0]:.2f}" for x, y in zip(rounds[ours], rounds[other])) + ")"
                for b in args.batches))
    if args.compile:
        with tempfile.TemporaryDirectory() as cache:
            env = {"NUMBA_CACHE_DIR": cache}
            cold, warm = (run_child("benchmarks.bench_inference", ["--child", "compile"], args.threads, env)
                          for _ in range(2))
        print(f"\nfirst use (import npcosteff + a forward and an early-exit pass of a tiny model, fresh process): "
              f"cold Numba cache {cold['total_seconds']:.1f} s ({cold['compiled']} kernels compiled, import "
              f"{cold['import_seconds']:.1f} s), warm cache {warm['total_seconds']:.1f} s ({warm['compiled']} "
              f"compiled, import {warm['import_seconds']:.1f} s)")


if __name__ == "__main__":
    main()
