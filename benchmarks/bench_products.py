"""The matrix products of one MiniLM forward pass: NumPy's BLAS against ONNX Runtime's, and what the rest of each pass costs.

A forward pass of MiniLM-L6 at batch 1 x 128 tokens spends most of its time in 24 products
of activations with weights: in each of the six layers Q, K and V (d x 3A), the attention
output (A x d), the FFN's intermediate (d x F) and output (F x d) projections. This
benchmark times exactly those 24 products, with the packaged checkpoint's own weights laid
out as :func:`npcosteff.packed_model.pack` lays them out, (in, out):

* ``numpy``: ``x @ W`` for each of them in the pass's order (NumPy's BLAS, on as many threads
  as ``--threads``), each layer's weights once, as in a pass: a layer's weights (7 MB in
  float32) do not stay in the core's cache from one product to the next;
* ``onnxruntime``: the same products as ONNX ``MatMul`` nodes in the same order, the weights
  as constant initializers, ``--threads`` intra-op threads, every graph optimization (ONNX Runtime prepares constant weights for its GEMM
  when it builds the session, where NumPy's BLAS packs its operands on every call).

The split by kind times the six products of one kind in a row on each side (one session per
kind for ONNX Runtime). Each side also times the whole pass of the same model (npcosteff's packed model; ONNX
Runtime's session of the exported checkpoint, as in ``bench_inference``), so that the table
shows, per side, the pass, its products, and the rest (attention core, softmax, GELU,
LayerNorm, embeddings, hand-offs between threads). At one thread the split is exact; at two,
NumPy's BLAS shares each product out over its threads while the packed pass gives each of its
lanes (one per core) a share of the layer, so the rest there is the difference of two ways of
running the same products. Each side runs in its own child process
for each thread count, the sides alternating over ``--rounds`` rounds; figures are medians.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_products [--threads 1 2]
        [--batch 1] [--seq 128] [--rounds 3] [--repeat 20]
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import tempfile

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import npcosteff  # noqa: F401,E402  (first: its thread settings precede any pool's start)
import numpy as np  # noqa: E402

from benchmarks.common import (default_threads, export_onnx, have_onnxruntime, limit_threads,  # noqa: E402
                               onnxruntime_session, print_header, report, run_child,
                               time_calls)

KINDS = ("qkv", "attention output", "intermediate", "output")
SIDES = ("numpy", "onnxruntime")


def make_batch(batch: int, seq: int):
    """The token batch of ``bench_inference``: random ids, no padding."""
    rng = np.random.default_rng(0)
    return rng.integers(1000, 30000, (batch, seq)), np.ones((batch, seq), np.int64), np.zeros((batch, seq), np.int64)


def packed_minilm(lanes: int):
    """The packaged MiniLM in float32, packed for `lanes` lanes, as ``bench_inference`` builds it."""
    from npcosteff.model import CostEffModel
    from npcosteff.packed_model import pack

    model = CostEffModel.from_pretrained(num_labels=2, exit_start=6, pooler="dense", dtype=np.float32)
    return pack(model, n_lanes=lanes)


def layer_weights(packed) -> list:
    """Each layer's four product weights, (in, out), in the pass's order: [(qkv, O, I, W_2), ...]."""
    return [(layer.qkv_whole, layer.attention_output, layer.intermediate, layer.output) for layer in packed.layers]


def product_inputs(weights, n_rows: int) -> list:
    """One activation (n_rows, in) per kind of product, float32 standard normal."""
    rng = np.random.default_rng(1)
    return [rng.standard_normal((n_rows, w.shape[0]), dtype=np.float32) for w in weights[0]]


def median_time(fn, repeat: int) -> float:
    """Median wall seconds of `repeat` calls of fn() after two warm-up calls."""
    return time_calls(fn, repeat, warmup=2)[0]


def child_numpy(args) -> dict:
    limit_threads(args.threads)
    packed = packed_minilm(args.threads)
    weights = layer_weights(packed)
    inputs = product_inputs(weights, args.batch * args.seq)

    def products(kinds):
        for layer in weights:
            for k in kinds:
                inputs[k] @ layer[k]                               # (N, in) @ (in, out), as the packed layer

    ids, mask, types = make_batch(args.batch, args.seq)
    result = {"pass": median_time(lambda: packed(ids, mask, types), args.repeat)}   # first, as ONNX Runtime's
    result["products"] = median_time(lambda: products(range(len(KINDS))), args.repeat)
    result["kinds"] = [median_time(lambda: products([k]), args.repeat) for k in range(len(KINDS))]
    return result


def matmul_graph(weights: list, kinds, n_rows: int, path: str) -> str:
    """An ONNX file of the `kinds` products of the six layers as MatMul nodes, in the pass's
    order, with the weights as initializers; input ``x{k}`` is kind k's activation."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, outputs = [], [], []
    for i, layer in enumerate(weights):
        for k in kinds:
            w = layer[k]
            initializers.append(numpy_helper.from_array(np.ascontiguousarray(w), f"w{i}_{k}"))
            nodes.append(helper.make_node("MatMul", [f"x{k}", f"w{i}_{k}"], [f"y{i}_{k}"]))
            outputs.append(helper.make_tensor_value_info(f"y{i}_{k}", TensorProto.FLOAT, [n_rows, w.shape[1]]))
    graph = helper.make_graph(
        nodes, "products",
        [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [n_rows, weights[0][k].shape[0]]) for k in kinds],
        outputs, initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def child_onnxruntime(args) -> dict:
    limit_threads(args.threads)
    weights = layer_weights(packed_minilm(1))                      # the same weights, (in, out)
    n_rows = args.batch * args.seq
    inputs = product_inputs(weights, n_rows)

    def timed(kinds, tmp):
        # One session at a time: each holds a pool of spinning threads, and two pools would
        # take each other's cores.
        session = onnxruntime_session(matmul_graph(weights, kinds, n_rows, os.path.join(tmp, "p.onnx")), args.threads)
        feed = {f"x{k}": inputs[k] for k in kinds}
        got = iter(session.run(None, feed))
        for layer in weights:                                      # each product against NumPy's, once
            for k in kinds:
                want = inputs[k] @ layer[k]
                err = float(np.abs(next(got) - want).max() / np.abs(want).max())
                if err > 1e-4:                                     # float32 sums of up to 1536 terms in another order
                    raise RuntimeError(f"ONNX Runtime's {KINDS[k]} products differ from NumPy's by {err:.1e} (relative)")
        seconds = median_time(functools.partial(session.run, None, feed), args.repeat)
        del session                                                # its threads go before the next session's start
        gc.collect()
        return seconds

    full = onnxruntime_session(args.onnx, args.threads)
    ids, mask, types = make_batch(args.batch, args.seq)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    result = {"pass": median_time(functools.partial(full.run, ["logits"], feed), args.repeat)}
    del full
    gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        result["products"] = timed(range(len(KINDS)), tmp)
        result["kinds"] = [timed([k], tmp) for k in range(len(KINDS))]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, default_threads()}))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the sides")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.threads = args.threads[0]
        report((child_numpy if args.child == "numpy" else child_onnxruntime)(args))
        return
    if not have_onnxruntime():
        parser.error("this benchmark compares with ONNX Runtime: pip install -e '.[bench]'")

    print_header(__doc__, max(args.threads))
    workdir = tempfile.TemporaryDirectory()
    onnx_path = export_onnx(os.path.join(workdir.name, "minilm.onnx"))
    flops = 2.0 * args.batch * args.seq * sum(w.size for layer in layer_weights(packed_minilm(1)) for w in layer)
    print(f"batch {args.batch} x {args.seq} tokens: 24 products, {flops / 1e9:.2f} GFLOP per pass")
    results = {}
    for threads in args.threads:
        rounds = {s: [] for s in SIDES}
        for r in range(args.rounds):
            for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                rounds[side].append(run_child(
                    "benchmarks.bench_products",
                    ["--child", side, "--threads", threads, "--batch", args.batch, "--seq", args.seq,
                     "--repeat", args.repeat] + (["--onnx", onnx_path] if side == "onnxruntime" else []),
                    threads))
            print(f"  {threads} thread(s), round {r + 1}: " + "; ".join(
                f"{s} products {1e3 * rounds[s][-1]['products']:.2f} ms, pass {1e3 * rounds[s][-1]['pass']:.2f} ms"
                for s in SIDES), flush=True)
        results[threads] = {s: {key: float(np.median([x[key] for x in rs])) for key in ("products", "pass")}
                            | {"kinds": np.median([x["kinds"] for x in rs], axis=0)} for s, rs in rounds.items()}
        results[threads]["ratio_rounds"] = [a["products"] / b["products"]
                                            for a, b in zip(rounds["numpy"], rounds["onnxruntime"])]
    workdir.cleanup()

    print(f"\nms per pass, median over {args.rounds} rounds of the median of {args.repeat} passes")
    print(f"{'threads':>7s} {'side':>12s} " + " ".join(f"{k:>16s}" for k in KINDS)
          + f" {'products':>9s} {'GFLOP/s':>8s} {'pass':>8s} {'the rest':>9s}")
    for threads, res in results.items():
        for side in SIDES:
            r = res[side]
            print(f"{threads:7d} {side:>12s} " + " ".join(f"{1e3 * x:16.2f}" for x in r["kinds"])
                  + f" {1e3 * r['products']:9.2f} {flops / r['products'] / 1e9:8.1f} {1e3 * r['pass']:8.2f}"
                  f" {1e3 * (r['pass'] - r['products']):9.2f}")
    print("\nnumpy / onnxruntime (the rounds' own ratios of the products in brackets)")
    for threads, res in results.items():
        n, o = res["numpy"], res["onnxruntime"]
        print(f"  {threads} thread(s): products {n['products'] / o['products']:.2f} ("
              + ", ".join(f"{x:.2f}" for x in res["ratio_rounds"]) + f"), pass {n['pass'] / o['pass']:.2f}, "
              f"the rest {(n['pass'] - n['products']) / (o['pass'] - o['products']):.2f}")


if __name__ == "__main__":
    main()
