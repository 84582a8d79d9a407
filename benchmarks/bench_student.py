"""A slender early-exit student against the full teacher in PyTorch and ONNX Runtime, one sample at a time, in ms per sample.

The question COST-EFF answers for a user: how long does one request take with the compressed
model, against the uncompressed model run the usual way? Here:

* npcosteff: the student of a reproduction run (``--student``, e.g. ``runs/mrpc/recover``),
  ``npcosteff.early_exit.early_exit_forward`` at batch 1 with the entropy threshold of its
  operating point in ``results/<task>.json`` (the model ``--name``, by default the first
  student there; the threshold chosen on the first half of dev; ``--threshold`` overrides it);
  and the same student packed for inference once before the timing
  (:func:`npcosteff.packed_model.pack`);
* PyTorch: ``transformers.BertForSequenceClassification`` with the teacher's shapes (the
  packaged MiniLM-L6: 6 layers, 12 heads, FFN 1536), every layer, under
  ``torch.inference_mode()``, eager attention (and ``sdpa`` with ``--sdpa``);
* ONNX Runtime (with the ``bench`` extra): that same model exported to ONNX
  (:func:`benchmarks.common.export_onnx`), a CPU session with ``--threads`` intra-op threads,
  what a user deploying the uncompressed model on CPU would run.

Both sides see the same first ``--samples`` dev examples of the task, one at a time, each
at its own length (no padding), in their own child process with ``--threads`` threads; the
median of ``--repeat`` passes over them is printed per sample, with the student's mean exit
layer. The teacher's weights do not change its time, so the packaged checkpoint stands in
for the fine-tuned teacher.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_student --task mrpc \
        --student runs/mrpc/recover --glue-dir PATH [--no-ort]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import npcosteff  # noqa: F401  (first: its thread settings, npcosteff/threads.py, precede Numba's first parallel loop)
import numpy as np

from benchmarks.common import (REPO, default_threads, export_onnx, have_onnxruntime, limit_threads,
                               onnxruntime_session, print_header, report, run_child, time_calls)

SIDES = ("npcosteff", "npcosteff-packed", "torch-eager", "torch-sdpa", "onnxruntime")


def operating_threshold(task: str, name=None):
    """(threshold, model name) of the operating point of `name` in results/<task>.json (default:
    the first student with an early-exit operating point): the threshold chosen on dev's first half."""
    path = os.path.join(REPO, "results", f"{task}.json")
    if not os.path.isfile(path):
        raise SystemExit(f"no {path}: give --threshold")
    with open(path, encoding="utf-8") as f:
        models = json.load(f)["models"]
    for m in models:
        thr = m["operating_point"]["threshold"]
        if (m["name"] == name) or (name is None and m["role"] == "student" and thr is not None):
            if thr is None:
                raise SystemExit(f"{m['name']} in {path} has no early-exit operating point: give --threshold")
            return float(thr[0]), m["name"]
    raise SystemExit(f"no model {name!r} with an operating point in {path}; there are "
                     f"{[m['name'] for m in models]}")


def dev_samples(task: str, glue_dir, n: int, max_length: int):
    """The first n dev examples of `task` as (input_ids, token_type_ids) rows of their own length."""
    from npcosteff.data.batching import encode_split
    from npcosteff.data import glue_source, load_glue
    from npcosteff.tokenizer import Tokenizer

    source = glue_dir or glue_source(task=task)
    dev = encode_split(Tokenizer.from_pretrained(), load_glue(task, "validation", source, max_examples=n),
                       max_length=max_length)
    return [(np.asarray(dev.input_ids[i])[None, :], np.asarray(dev.token_type_ids[i])[None, :])
            for i in range(len(dev))]


def child(args) -> dict:
    samples = dev_samples(args.task, args.glue_dir, args.samples, args.max_length)
    if args.child in ("npcosteff", "npcosteff-packed"):
        from npcosteff.early_exit import early_exit_forward
        from npcosteff.packed_model import pack
        from npcosteff.model import CostEffModel

        limit_threads(args.threads)
        model = CostEffModel.from_pretrained(args.student)
        if args.child == "npcosteff-packed":
            model = pack(model)                            # once, as ONNX Runtime builds its session once
        layers = []

        def run():
            layers.clear()
            for ids, types in samples:
                out = early_exit_forward(model, ids, np.ones_like(ids), types, threshold=args.threshold)
                layers.append(float(np.mean(out.exit_layers)))
        wall, cpu = time_calls(run, args.repeat, warmup=1)
        return {"wall": wall / len(samples), "cpu": cpu / len(samples), "mean_exit_layer": float(np.mean(layers)),
                "layers": model.config.num_hidden_layers, "parameters": model.num_parameters()}
    if args.child == "onnxruntime":
        import onnx

        limit_threads(args.threads)
        session = onnxruntime_session(args.onnx, args.threads)
        feeds = [{"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
                 for ids, types in samples]

        def run():
            for feed in feeds:
                session.run(["logits"], feed)
        wall, cpu = time_calls(run, args.repeat, warmup=1)
        graph = onnx.load(args.onnx).graph
        return {"wall": wall / len(samples), "cpu": cpu / len(samples),
                "parameters": int(sum(np.prod(t.dims) for t in graph.initializer   # float weights (and a few scalars)
                                      if t.data_type == onnx.TensorProto.FLOAT))}
    import torch
    from transformers import BertForSequenceClassification
    from transformers.utils import logging

    from npcosteff.pretrained import default_model_dir

    logging.set_verbosity_error()
    limit_threads(args.threads)
    torch.set_num_threads(args.threads)
    model = BertForSequenceClassification.from_pretrained(
        default_model_dir(), num_labels=2, attn_implementation=args.child.split("-")[1]).eval()
    tensors = [(torch.from_numpy(ids), torch.ones(ids.shape, dtype=torch.long), torch.from_numpy(types))
               for ids, types in samples]

    def run():
        with torch.inference_mode():
            for ids, mask, types in tensors:
                model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    wall, cpu = time_calls(run, args.repeat, warmup=1)
    return {"wall": wall / len(samples), "cpu": cpu / len(samples),
            "parameters": sum(p.numel() for p in model.parameters())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--student", required=True, help="model folder of the student (e.g. runs/mrpc/recover)")
    parser.add_argument("--threshold", type=float, help="entropy threshold (default: from results/<task>.json)")
    parser.add_argument("--name", help="the model of results/<task>.json whose threshold to use")
    parser.add_argument("--glue-dir", default=os.environ.get("NPCOSTEFF_GLUE_DIR"))
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sdpa", action="store_true", help="also time torch with attn_implementation='sdpa'")
    parser.add_argument("--no-ort", action="store_true", help="leave ONNX Runtime out")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report(child(args))
        return

    name = "--threshold"
    if args.threshold is None:
        args.threshold, name = operating_threshold(args.task, args.name)
    limit_threads(args.threads)
    print_header(__doc__, args.threads)
    import tempfile

    ort = not args.no_ort and have_onnxruntime()
    sides = (["npcosteff", "npcosteff-packed", "torch-eager"] + (["torch-sdpa"] if args.sdpa else [])
             + (["onnxruntime"] if ort else []))
    workdir = tempfile.TemporaryDirectory()
    onnx_path = export_onnx(os.path.join(workdir.name, "minilm.onnx")) if ort else None
    common = ["--task", args.task, "--student", args.student, "--threshold", args.threshold,
              "--max-length", args.max_length, "--samples", args.samples, "--threads", args.threads,
              "--repeat", args.repeat] + (["--glue-dir", args.glue_dir] if args.glue_dir else [])
    res = {s: run_child("benchmarks.bench_student",
                        ["--child", s, *common] + (["--onnx", onnx_path] if s == "onnxruntime" else []), args.threads)
           for s in sides}
    workdir.cleanup()
    st = res["npcosteff"]
    print(f"\n{args.task} dev, the first {args.samples} examples one at a time; median of {args.repeat} passes")
    print(f"student {args.student} ({st['parameters'] / 1e6:.2f}M parameters), entropy threshold "
          f"{args.threshold:g} ({name}): mean exit layer {st['mean_exit_layer']:.2f} of {st['layers']}")
    packed = res["npcosteff-packed"]
    teachers = sides[2:]
    print(f"{'side':>34s} {'ms/sample':>10s} {'CPU ms':>8s} " + " ".join(f"{'/ ' + s:>18s}" for s in teachers))
    for s, label in (("npcosteff", "npcosteff student, early exit"), ("npcosteff-packed", "the same student, packed")):
        print(f"{label:>34s} {1e3 * res[s]['wall']:10.2f} {1e3 * res[s]['cpu']:8.2f} "
              + " ".join(f"{res[s]['wall'] / res[t]['wall']:18.3f}" for t in teachers))
    print(f"{'(mean exit layer, packed)':>34s} {packed['mean_exit_layer']:10.2f}")
    for s in teachers:
        label = (f"ONNX Runtime teacher ({res[s]['parameters'] / 1e6:.1f}M)" if s == "onnxruntime" else
                 f"PyTorch teacher, {s.split('-')[1]} ({res[s]['parameters'] / 1e6:.1f}M)")
        print(f"{label:>34s} {1e3 * res[s]['wall']:10.2f} {1e3 * res[s]['cpu']:8.2f}")


if __name__ == "__main__":
    main()
