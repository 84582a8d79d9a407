"""Early exit on SST-2 dev: wall-clock per sample at the entropy threshold that halves the FLOPs.

The model is the packaged MiniLM-L6 with an exit after every layer (``cls_tanh`` pooler),
trained for ``--train-steps`` steps of the hard loss on all exits (SST-2 train, batch 32,
lr 5e-5, gradient equilibrium) so that the exits' entropies mean something; the trained
model is kept in ``--model-dir`` (default ``runs/bench_early_exit_sst2``, ignored by git)
and reused by later runs.

The threshold: one full pass over the dev set gives every exit's entropy for every sample;
since a sample's exit depends only on its own entropies, the exit layer and the analytic
FLOPs (:func:`npcosteff.flops.model_flops`, exits evaluated on the way included) follow for
any threshold, and bisection finds the threshold whose mean FLOPs are ``--flops-fraction``
(0.5) of the full model's. An early-exit pass at that threshold confirms the exit layers.

Timed (median of ``--repeat`` passes, wall clock, ``--threads`` threads; the full and the
early-exit pass take turns, so that changes of machine load hit both):

* batch 1: each of the first ``--samples`` dev samples alone: the full forward pass
  (``model(...)``, every layer and exit) against ``npcosteff.early_exit.early_exit_forward``;
* batched: all dev samples in batches of ``--batch`` in dev order (dynamic padding): the
  full forward against early exit, which drops finished samples and trailing padding
  between layers.

    python -m benchmarks.bench_early_exit [--threads 2] [--train-steps 300] [--samples 300]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import npcosteff  # noqa: F401  (first: its thread settings, npcosteff/threads.py, precede Numba's first parallel loop)
import numpy as np

from benchmarks.common import REPO, blas_summary, default_threads, limit_threads, machine_summary


def glue_dir() -> str:
    """Where SST-2 comes from: $NPCOSTEFF_GLUE_DIR when set, else the Hugging Face hub (the full
    dev set is timed: the shipped slices are too small here); see npcosteff.data.glue_source."""
    from npcosteff.data import glue_source

    return glue_source(task="sst2")


def trained_model(model_dir: str, steps: int, data_dir: str):
    """The multi-exit SST-2 model: loaded from `model_dir`, or trained and saved there."""
    from npcosteff.data.batching import encode_split
    from npcosteff.data import load_glue
    from npcosteff.model import CostEffModel
    from npcosteff.pretrained import default_model_dir
    from npcosteff.tokenizer import Tokenizer
    from npcosteff.train import Trainer, TrainingArguments

    if os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        print(f"model: {model_dir} (trained earlier)")
        return CostEffModel.from_pretrained(model_dir)
    tokenizer = Tokenizer.from_pretrained()
    train = encode_split(tokenizer, load_glue("sst2", "train", data_dir, max_examples=steps * 32), max_length=64)
    model = CostEffModel.from_pretrained(num_labels=2, exit_start=1)
    args = TrainingArguments(task="sst2", objective="hard", max_steps=steps, final_only=False, batch_size=32,
                             learning_rate=5e-5, progress=False, save_best=False, seed=0)
    t0 = time.perf_counter()
    Trainer(model, args, train).train()
    print(f"model: trained exits for {steps} steps in {time.perf_counter() - t0:.0f} s, saved to {model_dir}")
    model.save_pretrained(model_dir, os.path.join(default_model_dir(), "tokenizer.json"))
    return model


def exit_layers_at(entropies: np.ndarray, threshold: float) -> np.ndarray:
    """(N, L) per-exit entropies -> (N,) 1-based exit layer: the first exit below the threshold."""
    below = entropies < threshold
    below[:, -1] = True                                             # the last exit always answers
    return below.argmax(axis=1) + 1


def flops_fraction(config, lengths, layers) -> float:
    from npcosteff.flops import model_flops

    full = sum(model_flops(config, int(n)) for n in lengths)
    return sum(model_flops(config, int(n), int(l)) for n, l in zip(lengths, layers)) / full


def median_seconds(fns, repeat: int) -> list:
    """Median wall-clock seconds of each function; the functions take turns in every round,
    so that a change of machine load affects all of them alike."""
    for fn in fns:
        fn()                                                        # warm-up
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--model-dir", default=os.path.join(REPO, "runs", "bench_early_exit_sst2"))
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--flops-fraction", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=300, help="dev samples timed at batch 1")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from npcosteff.data.batching import encode_split, iterate_batches
    from npcosteff.data import load_glue
    from npcosteff.early_exit import early_exit_forward, early_exit_predict
    from npcosteff.losses import entropy
    from npcosteff.tokenizer import Tokenizer

    limit_threads(args.threads)
    print(__doc__.splitlines()[0])
    print(machine_summary())
    print(f"threads: {args.threads}; BLAS pools:\n  " + blas_summary().replace("\n", "\n  "))
    data_dir = glue_dir()
    model = trained_model(args.model_dir, args.train_steps, data_dir)
    c = model.config
    dev = encode_split(Tokenizer.from_pretrained(), load_glue("sst2", "validation", data_dir), max_length=128)
    labels = dev.labels
    batches = list(iterate_batches(dev, labels, args.batch))       # dev order, dynamic padding

    # Every exit's entropy for every dev sample, from one full pass.
    ent = np.empty((len(dev), len(c.exit_layers)))
    full_pred = np.empty(len(dev), np.int64)
    for b in batches:
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        ent[b["indices"]] = np.stack([entropy(z) for z in out.logits], axis=1)
        full_pred[b["indices"]] = out.logits[-1].argmax(axis=1)
    lengths = dev.lengths

    lo, hi = 0.0, math.log(c.num_labels) + 1e-6                     # entropy lies in [0, log C]
    for _ in range(50):                                             # bisection on the FLOPs fraction
        mid = 0.5 * (lo + hi)
        if flops_fraction(c, lengths, exit_layers_at(ent, mid)) > args.flops_fraction:
            lo = mid
        else:
            hi = mid
    tau = hi
    layers = exit_layers_at(ent, tau)
    frac = flops_fraction(c, lengths, layers)
    res = early_exit_predict(model, batches, threshold=tau)
    order = np.concatenate([b["indices"] for b in batches])
    agree = np.mean(res.exit_layers == layers[order])
    ee_pred = np.empty(len(dev), np.int64)
    ee_pred[order] = res.logits.argmax(axis=1)
    print(f"\nSST-2 dev: {len(dev)} samples, mean length {lengths.mean():.1f} tokens")
    print(f"entropy threshold {tau:.4f}: analytic FLOPs {100 * frac:.1f}% of the full model, mean exit layer "
          f"{layers.mean():.2f}, exit histogram {np.bincount(layers, minlength=c.num_hidden_layers + 1)[1:].tolist()}; "
          f"early-exit pass agrees on {100 * agree:.1f}% of exit layers")
    print(f"accuracy: full model (last exit) {np.mean(full_pred == labels):.4f}, "
          f"early exit {np.mean(ee_pred == labels):.4f}")

    # batch 1
    singles = [(dev.input_ids[i][None, :], dev.token_type_ids[i][None, :]) for i in range(min(args.samples, len(dev)))]
    ones = [np.ones_like(ids) for ids, _ in singles]

    def full_1():
        for (ids, types), m in zip(singles, ones):
            model(ids, m, types)

    def early_1():
        for (ids, types), m in zip(singles, ones):
            early_exit_forward(model, ids, m, types, threshold=tau)

    def full_b():
        for b in batches:
            model(b["input_ids"], b["attention_mask"], b["token_type_ids"])

    def early_b():
        for b in batches:
            early_exit_forward(model, b["input_ids"], b["attention_mask"], b["token_type_ids"], threshold=tau)

    n1 = len(singles)
    t_full_1, t_early_1 = (t / n1 for t in median_seconds([full_1, early_1], args.repeat))
    ex1 = exit_layers_at(ent[:n1], tau)
    frac1 = flops_fraction(c, lengths[:n1], ex1)
    t_full_b, t_early_b = (t / len(dev) for t in median_seconds([full_b, early_b], args.repeat))
    print(f"\n{'':28s} {'full ms/sample':>15s} {'early ms/sample':>16s} {'time saved':>11s} {'FLOPs saved':>12s}")
    print(f"{'batch 1 (' + str(n1) + ' samples)':28s} {1e3 * t_full_1:15.2f} {1e3 * t_early_1:16.2f} "
          f"{100 * (1 - t_early_1 / t_full_1):10.1f}% {100 * (1 - frac1):11.1f}%")
    print(f"{'batch ' + str(args.batch) + ' (' + str(len(dev)) + ' samples)':28s} {1e3 * t_full_b:15.2f} "
          f"{1e3 * t_early_b:16.2f} {100 * (1 - t_early_b / t_full_b):10.1f}% {100 * (1 - frac):11.1f}%")
    print("full = model(...) over all layers and exits; early = early_exit_forward at the threshold above "
          f"(median of {args.repeat} passes, wall clock).")


if __name__ == "__main__":
    main()
