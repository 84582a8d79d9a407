"""Where one inference forward pass spends its time, npcosteff against PyTorch, by kind of operation.

The full MiniLM-L6 in float32 on a random batch of ``--seq`` tokens (as ``bench_inference``),
each side in its own child process with ``--threads`` threads. npcosteff runs its plain layers
(``lanes.disabled()``): the functions timed below are what they call, where the lanes of the
speed path (``bench_inference``) call BLAS and the kernels from worker threads, whose clocks
would add up across the cores. The time of one pass is split into the same five kinds on
both sides:

=====================  ===========================================  ================================
kind                   npcosteff (functions timed)                  PyTorch (profiler ops, self time)
=====================  ===========================================  ================================
dense products         ``nn.linear.linear_forward`` (Q, K, V, the    ``aten::addmm``, ``aten::mm``
                       attention output, the FFN's two, the exits)
attention core         ``kernels.attention_core`` (Q K^T, softmax,   ``aten::bmm``, ``aten::_softmax``
                       P V)
GELU                   ``kernels.bias_gelu(_inference)``, with bias  ``aten::gelu``
LayerNorm              ``kernels.add_layer_norm``, ``layer_norm``    ``aten::native_layer_norm``
everything else        the rest of the pass                          the rest of the pass
=====================  ===========================================  ================================

npcosteff's kinds are timed by wrapping those functions with a clock (about a microsecond per
call); PyTorch's come from ``torch.profiler`` (self CPU time of each op, which includes the
profiler's own overhead per op). "everything else" is the mean pass time minus the four
kinds, so it holds the embeddings, reshapes and copies, the exit, Python, and on PyTorch's
side the bias adds that are not fused into ``addmm`` and the profiler. Both sides' totals
are the mean of ``--repeat`` passes *with* the instrumentation (the kinds are means too, so
that they add up; the median pass is printed beside); ``bench_inference`` gives the times
without it.

    python -m benchmarks.bench_profile [--threads 2] [--seq 128] [--batches 1 32] [--repeat 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import npcosteff  # noqa: F401  (first: its thread settings, npcosteff/threads.py, precede Numba's first parallel loop)
import numpy as np

from benchmarks.bench_inference import make_batch
from benchmarks.common import default_threads, limit_threads, print_header, report, run_child

KINDS = ("dense products", "attention core", "GELU", "LayerNorm")
TORCH_OPS = {"aten::addmm": "dense products", "aten::mm": "dense products", "aten::bmm": "attention core",
             "aten::_softmax": "attention core", "aten::gelu": "GELU", "aten::native_layer_norm": "LayerNorm"}


def npcosteff_profile(batch: int, seq: int, repeat: int) -> dict:
    """Median pass time and the mean time per pass of each kind, in seconds."""
    from npcosteff import kernels
    from npcosteff.kernels import lanes
    from npcosteff.model import CostEffModel
    from npcosteff.nn import attention, exits, ffn

    spent = dict.fromkeys(KINDS, 0.0)

    def clocked(function, kind):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = function(*args, **kwargs)
            spent[kind] += time.perf_counter() - start
            return out
        return timed

    for module in (attention, ffn, exits):          # each imported linear_forward by name
        module.linear_forward = clocked(module.linear_forward, "dense products")
    for name, kind in (("attention_core", "attention core"), ("bias_gelu", "GELU"), ("bias_gelu_inference", "GELU"),
                       ("add_layer_norm", "LayerNorm"), ("layer_norm", "LayerNorm")):
        setattr(kernels, name, clocked(getattr(kernels, name), kind))

    model = CostEffModel.from_pretrained(num_labels=2, exit_start=6, pooler="dense", dtype=np.float32)
    ids, mask, types = make_batch(batch, seq)
    with lanes.disabled():                          # the plain layers (module docstring)
        for _ in range(2):
            model(ids, mask, types)                 # warm-up: compiled kernels, thread pools
        spent.update(dict.fromkeys(KINDS, 0.0))
        passes = []
        for _ in range(repeat):
            start = time.perf_counter()
            model(ids, mask, types)
            passes.append(time.perf_counter() - start)
    return dict(total=float(np.mean(passes)), median=float(np.median(passes)),
                **{k: v / repeat for k, v in spent.items()})


def torch_profile(batch: int, seq: int, repeat: int, threads: int) -> dict:
    """The same split for PyTorch eager attention, from torch.profiler's self CPU times."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import BertForSequenceClassification
    from transformers.utils import logging

    from npcosteff.pretrained import default_model_dir

    logging.set_verbosity_error()
    torch.set_num_threads(threads)
    model = BertForSequenceClassification.from_pretrained(default_model_dir(), num_labels=2,
                                                          attn_implementation="eager").eval()
    ids, mask, types = (torch.from_numpy(a) for a in make_batch(batch, seq))

    def run():
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, token_type_ids=types)

    for _ in range(2):
        run()
    passes = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeat):
            start = time.perf_counter()
            run()
            passes.append(time.perf_counter() - start)
    spent = dict.fromkeys(KINDS, 0.0)
    for event in prof.key_averages():
        if event.key in TORCH_OPS:
            spent[TORCH_OPS[event.key]] += event.self_cpu_time_total * 1e-6 / repeat   # microseconds -> s
    return dict(total=float(np.mean(passes)), median=float(np.median(passes)), **spent)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--child", choices=("npcosteff", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        limit_threads(args.threads)
        if args.child == "npcosteff":
            report(npcosteff_profile(args.batch, args.seq, args.repeat))
        else:
            report(torch_profile(args.batch, args.seq, args.repeat, args.threads))
        return

    limit_threads(args.threads)
    print_header(__doc__, args.threads)
    for batch in args.batches:
        side = {s: run_child("benchmarks.bench_profile", ["--child", s, "--batch", batch, "--threads", args.threads,
                                                           "--seq", args.seq, "--repeat", args.repeat], args.threads)
                for s in ("npcosteff", "torch")}
        for s in side.values():
            s["everything else"] = s["total"] - sum(s[k] for k in KINDS)
        print(f"\nbatch {batch} x {args.seq} tokens, ms per pass (mean over {args.repeat} passes; the median "
              f"pass: npcosteff {1e3 * side['npcosteff']['median']:.2f}, torch {1e3 * side['torch']['median']:.2f})")
        print(f"{'kind':20s} {'npcosteff':>10s} {'torch eager':>12s} {'difference':>11s} {'ratio':>6s}")
        for kind in (*KINDS, "everything else", "total"):
            ours, theirs = side["npcosteff"][kind], side["torch"][kind]
            ratio = f"{ours / theirs:6.2f}" if theirs > 0 else f"{'-':>6s}"
            print(f"{kind:20s} {1e3 * ours:10.2f} {1e3 * theirs:12.2f} {1e3 * (ours - theirs):+11.2f} {ratio}")


if __name__ == "__main__":
    main()
