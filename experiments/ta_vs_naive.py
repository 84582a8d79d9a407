"""The teacher-assistant against naively attached exits, per exit, on a GLUE dev set.

    python experiments/ta_vs_naive.py --task mrpc --teacher runs/mrpc/teacher --ta runs/mrpc/ta \\
        --glue-dir path/to/glue --epochs 3 --output runs/mrpc/ta_vs_naive

* TA: the pretrained model with an exit after every layer, `hidden` distillation from the
  fine-tuned teacher for a third of the epochs, then `pred_ta` with gradient equilibrium;
* naive: the fine-tuned teacher with exits attached at every layer, trained on the hard loss
  of all exits, without gradient equilibrium.

Like for like by default: the naive exits take the TA's pooler (``--pooler``, default the
TA's; the teacher's dense pooler would give every naive exit a fresh 384 x 384 layer the TA's
exits lack) and train as many steps as the TA (``--epochs`` times ``1 + --hidden-fraction``:
the TA's ``hidden`` third, then its ``pred_ta`` epochs). Both choose their checkpoint on the
held-out tenth of the training set (``--selection heldout``; ``last`` keeps the last one),
never on dev.

``--exit-lr-multiplier`` sets the rate of the naive exits' parameters as a multiple of
``--learning-rate``, as the recipe field ``exit_lr_multiplier`` does for the TA: give the TA's
value for a like-for-like comparison (a TA whose exits learn 100 times faster against naive
exits at 1 would credit the TA with what the faster exits do).

`--teacher` and `--ta` take a model folder or a stage folder of `npcosteff run`; without `--ta`
the TA is trained here. The data settings (--max-train, --max-length) must be the ones the
teacher and TA were trained with.

Writes <output>/ta_vs_naive.json and .md (a table of the dev metric per exit).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import npcosteff  # noqa: E402, F401  (first: its thread settings, npcosteff/threads.py, precede Numba's first parallel loop)
import numpy as np  # noqa: E402

from npcosteff.metrics import main_metric  # noqa: E402
from npcosteff.model import CostEffModel  # noqa: E402
from npcosteff.data import load_task_data  # noqa: E402
from npcosteff.stages import train_naive_exits, train_ta  # noqa: E402
from npcosteff.pretrained import resolve_model_dir  # noqa: E402
from npcosteff.recipe import TeacherAssistant, Training  # noqa: E402
from npcosteff.train import evaluate  # noqa: E402


def table(rows: dict, key: str) -> str:
    layers = sorted({l for r in rows.values() for l in r["exits"]})
    head = "| model | " + " | ".join(f"exit {l}" for l in layers) + " | average |"
    sep = "|---" * (len(layers) + 2) + "|"
    lines = [head, sep]
    for name, r in rows.items():
        cells = [f"{100 * r['exits'][l][key]:.1f}" if l in r["exits"] else "" for l in layers]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * r['average']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--teacher", required=True, help="folder of the fine-tuned teacher")
    p.add_argument("--ta", default=None, help="folder of a trained TA (default: train one here)")
    p.add_argument("--glue-dir", default=None)
    p.add_argument("--output", required=True)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-eval", type=int, default=None)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--exit-lr-multiplier", type=float, default=1.0,
                   help="the exits' learning rate as a multiple of --learning-rate (the TA's recipe value)")
    p.add_argument("--hidden-fraction", type=float, default=1 / 3,
                   help="the TA's hidden share (its recipe's ta.hidden_fraction): the naive exits train "
                        "--epochs x (1 + this), the TA's steps")
    p.add_argument("--pooler", default=None, help="the naive exits' pooler (default: the TA's, else the teacher's)")
    p.add_argument("--selection", choices=("heldout", "last"), default="heldout",
                   help="checkpoint: best on the held-out tenth of the training set, or the last")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)

    data = load_task_data(args.task, args.glue_dir, max_length=args.max_length, max_train=args.max_train,
                          max_eval=args.max_eval, heldout=args.selection == "heldout")
    teacher = CostEffModel.from_pretrained(resolve_model_dir(args.teacher, what="teacher"))
    # The TA's settings (the naive exits take them all, so that the two differ in training alone)
    # and the shared training settings, as a recipe's `ta` and `training` sections.
    ta_settings = TeacherAssistant(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                                   hidden_fraction=args.hidden_fraction, pooler=args.pooler or teacher.config.pooler)
    training = Training(seed=args.seed, exit_lr_multiplier=args.exit_lr_multiplier)
    rows = {"fine-tuned teacher": evaluate(teacher, data.dev, data.task)}
    if args.ta is not None:
        ta = CostEffModel.from_pretrained(resolve_model_dir(args.ta, what="TA"))
        ta_settings = dataclasses.replace(ta_settings, pooler=args.pooler or ta.config.pooler)
    else:
        ta, _ = train_ta(data, teacher, ta_settings, training, os.path.join(args.output, "ta"))
    rows["TA (hidden, then pred; GE)"] = evaluate(ta, data.dev, data.task)
    pooler = ta_settings.pooler
    naive, result = train_naive_exits(data, teacher, ta_settings, training, os.path.join(args.output, "naive_exits"))
    rows["teacher + naive exits (hard, no GE)"] = evaluate(naive, data.dev, data.task)

    key = main_metric(data.task)
    md = f"{data.task} dev, {key} (%), per exit\n\n" + table(rows, key) + "\n"
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "ta_vs_naive.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.output, "ta_vs_naive.json"), "w") as f:
        json.dump({**{k: {"average": v["average"], "exits": {str(l): m for l, m in v["exits"].items()}}
                      for k, v in rows.items()},
                   "naive_training": {"pooler": pooler, "epochs": args.epochs * (1 + args.hidden_fraction),
                                      "steps": result["steps"],
                                      "seed": args.seed, "selection": args.selection,
                                      "exit_lr_multiplier": args.exit_lr_multiplier}}, f, indent=2)
    print(md)


if __name__ == "__main__":
    main()
