"""Linear probes of the frozen, pretrained encoder: the baseline every exit should beat.

For each layer l = 0..L the hidden states of the *pretrained* model (no fine-tuning) are
mean-pooled over the real tokens of each example, and a linear model is fitted on the
training examples: scikit-learn's ``LogisticRegression`` with its default C = 1 for
classification, ``Ridge`` with its default alpha = 1 for STS-B. Each probe is scored on dev
with the task's metric. An exit that is trained jointly with its layer and still scores
below the frozen probe of that layer is under-trained.

    python experiments/linear_probe.py --task sst2 --glue-dir PATH        # all 67,349 examples
    python experiments/linear_probe.py --task mrpc --glue-dir PATH --max-train 4000

Writes ``results/probe/<task>.json``: ``{"task", "metric", "train_examples", "layers":
[0..L], "probe": [metric of layer 0, ..., layer L], ...}``; ``report.py`` reads the probes of
layers 1..L into each task's table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import npcosteff  # noqa: F401  (first: its thread settings, npcosteff/threads.py, precede Numba's first parallel loop)
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def pooled_features(model, encoded, batch_size=64, progress=True):
    """(N, L+1, d) mean-pooled hidden states of every example, in the split's order."""
    from npcosteff.data.batching import iterate_batches
    from npcosteff.progress import progress_bar

    n, L, d = len(encoded), model.config.num_hidden_layers, model.config.hidden_size
    out = np.zeros((n, L + 1, d), np.float32)
    batches = list(iterate_batches(encoded, None, batch_size, sort_by_length=True))
    for batch in progress_bar(batches, desc="features", disable=not progress):
        hs = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).hidden_states
        m = batch["attention_mask"].astype(np.float32)[:, :, None]            # (B, T, 1)
        for l, h in enumerate(hs):                                             # h (B, T, d)
            out[batch["indices"], l] = (h * m).sum(axis=1) / m.sum(axis=1)
    return out


def fit_probes(task, train_x, train_y, dev_x, dev_y, regression):
    """The dev metric of a linear probe on each layer's features."""
    from sklearn.linear_model import LogisticRegression, Ridge

    from npcosteff.metrics import compute_metrics, main_metric

    scores = []
    for l in range(train_x.shape[1]):
        if regression:
            model = Ridge().fit(train_x[:, l], train_y)
            preds = model.predict(dev_x[:, l])
        else:
            model = LogisticRegression(max_iter=3000).fit(train_x[:, l], train_y)
            preds = model.predict(dev_x[:, l])
        scores.append(float(compute_metrics(task, preds, dev_y)[main_metric(task)]))
    return scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--glue-dir", default=os.environ.get("NPCOSTEFF_GLUE_DIR"))
    p.add_argument("--model", default=None, help="pretrained BERT folder (default: the packaged MiniLM)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train", type=int, default=None, help="first N training examples (default: all)")
    p.add_argument("--output", default=None, help="default: results/probe/<task>.json")
    a = p.parse_args(argv)

    from npcosteff.metrics import main_metric
    from npcosteff.model import CostEffModel
    from npcosteff.data import load_task_data

    clock = time.time()
    data = load_task_data(a.task, a.glue_dir, a.model, a.max_length, a.max_train)
    model = CostEffModel.from_pretrained(a.model, num_labels=data.num_labels)
    train_x = pooled_features(model, data.train)
    dev_x = pooled_features(model, data.dev)
    scores = fit_probes(data.task, train_x, np.asarray(data.train.labels), dev_x, np.asarray(data.dev.labels),
                        data.is_regression)
    result = {"task": data.task, "metric": main_metric(data.task), "train_examples": len(data.train),
              "dev_examples": len(data.dev), "max_length": a.max_length,
              "probe_model": "Ridge(alpha=1)" if data.is_regression else "LogisticRegression(C=1)",
              "features": "mean over real tokens of the frozen pretrained encoder's hidden state",
              "layers": list(range(len(scores))), "probe": scores, "seconds": round(time.time() - clock, 1)}
    out = a.output or os.path.join(ROOT, "results", "probe", f"{data.task}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, out)
    print(f"{data.task} probe ({result['metric']}), layers 0..{len(scores) - 1}: "
          + " / ".join(f"{s:.4f}" for s in scores) + f"  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
