"""STS-B: the TA's exits when regression distills every exit, and when it distills the last
exit alone (the authors' rule, `regression_distill="final"`), from the same teacher.

    python experiments/regression_distill.py --glue-dir shipped            # the shipped slices
    python experiments/regression_distill.py --glue-dir PATH --max-train 2000

Prints the dev metric of every exit of both TAs and writes results/regression_distill.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glue-dir", default="shipped")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-eval", type=int, default=None)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--output", default=os.path.join(ROOT, "results", "regression_distill.json"))
    a = p.parse_args(argv)

    from npcosteff.data import load_task_data
    from npcosteff.stages import finetune, train_ta
    from npcosteff.presets import get_preset
    from npcosteff.train import evaluate

    recipe = get_preset("stsb").replace({"finetune.epochs": a.epochs, "ta.epochs": a.epochs,
                                         "data.max_train": a.max_train, "data.max_eval": a.max_eval})
    data = load_task_data("stsb", a.glue_dir, None, recipe.data.max_length, a.max_train, a.max_eval)
    result = {"train_examples": len(data.train), "dev_examples": len(data.dev), "epochs": a.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        teacher, _ = finetune(data, recipe.finetune, recipe.training, os.path.join(tmp, "teacher"), progress=False)
        result["teacher"] = evaluate(teacher, data.dev, "stsb")["final"]
        for rule in ("all", "final"):
            training = dataclasses.replace(recipe.training, regression_distill=rule)
            ta, _ = train_ta(data, teacher, recipe.ta, training, os.path.join(tmp, f"ta-{rule}"), progress=False)
            scores = evaluate(ta, data.dev, "stsb")
            result[f"ta_{rule}"] = {str(k): v["combined"] for k, v in scores["exits"].items()}
            print(f"TA, regression_distill={rule}: exits " +
                  " / ".join(f"{v:.3f}" for v in result[f"ta_{rule}"].values()), flush=True)
    print(f"teacher {result['teacher']:.3f}")
    os.makedirs(os.path.dirname(a.output), exist_ok=True)
    with open(a.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
