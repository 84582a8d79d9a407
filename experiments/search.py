"""A small, documented hyperparameter search per task, scored on held-out *training* data.

The GLUE dev sets are what the reproduction reports, so the search never looks at them: each
task's training set is split once (a seeded shuffle; the last ``holdout`` examples are held
out, 10% and at most 2,000) and every trial trains on the rest and is scored on the held-out
part. The chosen values go into ``npcosteff/presets.py``; the table goes into
``docs/search.md`` (``--table``).

Trials of a search run one at a time; each appends one JSON line to
``results/search/<task>.jsonl`` when it finishes, and a rerun skips the trials already there,
so an interrupted search resumes where it stopped (the trial in progress starts again).

Usage::

    python experiments/search.py --task mrpc --stage teacher --glue-dir PATH
    python experiments/search.py --task mrpc --stage ta --glue-dir PATH   # from the best teacher
    python experiments/search.py --task stsb --stage exit --teacher runs/stsb/teacher/best \
        --set ta_learning_rate=2e-4 --glue-dir PATH                        # the exits' learning rate
    python experiments/search.py --table                                  # docs/search.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import npcosteff  # noqa: F401  (first: its thread settings, npcosteff/threads.py, precede Numba's first parallel loop)
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(ROOT, "results", "search")
RUNS = os.path.join(ROOT, "runs", "search")

# The grids. Teacher: the learning rate, with the epochs of the authors' scripts where the CPU
# allows; TA: its learning rate (the TA distills from the best teacher of the first search).
TEACHER_GRID = {
    "mrpc": [{"finetune.learning_rate": lr, "finetune.epochs": 5.0} for lr in (2e-5, 5e-5, 1e-4)],
    "rte": [{"finetune.learning_rate": lr, "finetune.epochs": 5.0} for lr in (5e-5, 1e-4)],
    "stsb": [{"finetune.learning_rate": lr, "finetune.epochs": 5.0} for lr in (5e-5, 1e-4)],
    "cola": [{"finetune.learning_rate": lr, "finetune.epochs": 4.0} for lr in (5e-5, 1e-4)],
    "sst2": [{"finetune.learning_rate": lr, "finetune.epochs": 1.0, "data.max_train": 20000} for lr in (5e-5, 1e-4)],
}
# TA trials run 2 epochs (2/3 of `hidden`, then 2 of `pred_ta`) to keep the search affordable;
# the runs then use the preset's epochs with the chosen rate.
TA_GRID = {
    task: [{"ta.learning_rate": lr, "ta.epochs": 2.0} for lr in (5e-5, 1e-4, 2e-4)] for task in TEACHER_GRID
}
# Exit heads: the exits' learning rate as a multiple of the TA's (recipe setting
# training.exit_lr_multiplier), TA trials at the chosen TA rate on `train_examples` of the training part
# (to keep a trial near ten minutes), distilling from the teacher given with --teacher.
EXIT_GRID = {
    task: [{"training.exit_lr_multiplier": m, "ta.epochs": 2.0, "train_examples": 2000} for m in (1.0, 10.0, 30.0, 100.0)]
    for task in TEACHER_GRID
}
SEARCH_ONLY = ("data.max_train", "ta.epochs", "train_examples")   # settings of a trial that never go into a run


def _done(task):
    path = os.path.join(RESULTS, f"{task}.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _append(task, record):
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{task}.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _trial_name(stage, overrides):
    return stage + "-" + "-".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in sorted(overrides.items()))


def run_search(task, stage, glue_dir, preset=None, teacher_dir=None, base_overrides=None):
    from npcosteff.data import heldout_split, load_task_data
    from npcosteff.stages import finetune, train_ta
    from npcosteff.presets import get_preset
    from npcosteff.train import evaluate

    base = get_preset(preset or task).replace(base_overrides or {})
    grid = {"teacher": TEACHER_GRID, "ta": TA_GRID, "exit": EXIT_GRID}[stage][task]
    finished = {r["trial"] for r in _done(task)}
    teacher = None
    if stage == "exit":
        if teacher_dir is None:
            raise SystemExit("--stage exit needs --teacher (a fine-tuned teacher of this task)")
        from npcosteff.model import CostEffModel
        teacher = CostEffModel.from_pretrained(teacher_dir)

    def load_teacher():
        """The best teacher trial's model, loaded only when a TA trial is left to run."""
        teachers = [r for r in _done(task) if r["stage"] == "teacher"]
        if not teachers:
            raise SystemExit(f"no finished teacher trial for {task}: run --stage teacher first")
        best = max(teachers, key=lambda r: r["holdout"])
        if not os.path.isdir(best["model_dir"]):
            raise SystemExit(f"the best teacher trial's model {best['model_dir']} is gone: remove its line "
                             f"from results/search/{task}.jsonl and rerun --stage teacher")
        from npcosteff.model import CostEffModel
        print(f"[search] TA trials distill from {best['trial']} (held-out {best['holdout']:.4f})", flush=True)
        return CostEffModel.from_pretrained(best["model_dir"])

    for overrides in grid:
        name = _trial_name(stage, overrides)
        if name in finished:
            print(f"[search] {task} {name}: done before, skipped", flush=True)
            continue
        recipe = base.replace({k: v for k, v in overrides.items() if k != "train_examples"})
        if stage == "ta" and teacher is None:
            teacher = load_teacher()
        data = load_task_data(task, glue_dir, recipe.data.model, recipe.data.max_length, recipe.data.max_train,
                              recipe.data.max_eval)
        train, held = heldout_split(data.train)
        if "train_examples" in overrides:            # the first N of the training part (its order is seeded)
            train = train.subset(np.arange(min(len(train), overrides["train_examples"])))
        data = dataclasses.replace(data, train=train, heldout=held, dev=held)   # chosen and scored on held-out
        folder = os.path.join(RUNS, task, name)
        clock = time.time()
        print(f"[search] {task} {name}: {len(train)} training, {len(held)} held-out examples", flush=True)
        if stage == "teacher":
            model, _ = finetune(data, recipe.finetune, recipe.training, folder, recipe.data.model, progress=False)
        else:
            model, _ = train_ta(data, teacher, recipe.ta, recipe.training, folder, recipe.data.model, progress=False)
        scores = evaluate(model, held, task, recipe.training.eval_batch_size)
        record = dict(task=task, stage=stage, trial=name, overrides={**(base_overrides or {}), **overrides},
                      holdout=scores["average"], teacher=teacher_dir if stage == "exit" else None,
                      holdout_exits={str(k): v[scores["main_metric"]] for k, v in scores["exits"].items()},
                      metric=scores["main_metric"], seconds=round(time.time() - clock, 1),
                      model_dir=os.path.join(folder, "best"), train_examples=len(train),
                      holdout_examples=len(held))
        _append(task, record)
        print(f"[search] {task} {name}: held-out {scores['main_metric']} {scores['average']:.4f} "
              f"in {record['seconds']:.0f} s", flush=True)


def table() -> str:
    """docs/search.md: every finished trial, best per task and stage marked."""
    lines = ["# Hyperparameter search", "",
             "Each trial trains on the training set minus a held-out tenth (at most 2,000 examples, a",
             "seeded shuffle) and is scored on that held-out part, never on GLUE dev, which the",
             "reproduction reports. TA trials distill from the best teacher trial of their task; the",
             "score of a TA is its metric averaged over exits. Written by `experiments/search.py --table`.",
             "",
             "One seed per trial, and no trial was repeated: the spread between seeds is not measured,",
             "so a choice by less than a point (CoLA's teacher, 0.367 against 0.358) is the better",
             "score of one draw, not a shown difference.",
             "",
             "Minutes: the MRPC and STS-B trials (December 2-4, 2026) ran with NumPy imported before",
             "npcosteff, so OpenBLAS's idle threads spun on the cores the training needed",
             "(`npcosteff/threads.py`): their minutes may be longer than the same trial's would be now (the",
             "effect was measured at inference, 1.5-1.7 times, not in training). Scores do not depend on it.",
             ""]
    for path in sorted(os.listdir(RESULTS)) if os.path.isdir(RESULTS) else []:
        if not path.endswith(".jsonl"):
            continue
        records = _done(path[:-len(".jsonl")])
        for stage in ("teacher", "ta", "exit"):
            rs = [r for r in records if r["stage"] == stage]
            if not rs:
                continue
            best = max(rs, key=lambda r: r["holdout"])
            lines += [f"## {rs[0]['task']}: {stage}", ""]
            if stage == "exit":
                lines += [f"TA trials with the exits' learning rate at a multiple of the TA's "
                          f"(`training.exit_lr_multiplier`), on the first {rs[0]['overrides'].get('train_examples', 'all')} "
                          f"examples of the training part. They distill from {rs[0]['teacher']}, a teacher "
                          f"fine-tuned on the whole training set, held-out part included: the held-out "
                          f"scores compare the trials with one another, not with the other stages.", ""]
            lines += [
                      f"| trial | held-out {rs[0]['metric']} | per exit | minutes |", "|---|---|---|---|"]
            for r in rs:
                mark = " **(chosen)**" if r is best else ""
                exits = " / ".join(f"{v:.3f}" for v in r["holdout_exits"].values())
                settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
                lines.append(f"| {settings}{mark} | {r['holdout']:.4f} | {exits} | {r['seconds'] / 60:.1f} |")
            lines.append("")
    return "\n".join(lines)


def best_settings(task) -> dict:
    """The overrides of the best finished trial of each stage of `task` (teacher, TA, exit heads)."""
    chosen = {}
    for stage in ("teacher", "ta", "exit"):
        rs = [r for r in _done(task) if r["stage"] == stage]
        if rs:
            chosen.update(max(rs, key=lambda r: r["holdout"])["overrides"])
    for key in SEARCH_ONLY:
        chosen.pop(key, None)
    if "finetune.learning_rate" in chosen:
        # Not searched: pruning and recovery keep the paper's ratios to the fine-tuning rate
        # (BERT-base: 2e-5 fine-tuning, 1e-5 pruning, 3e-5 hidden and 2e-5 pred recovery).
        lr = chosen["finetune.learning_rate"]
        chosen.update({"slenderize.learning_rate": lr / 2, "recover.hidden_learning_rate": 1.5 * lr,
                       "recover.pred_learning_rate": lr})
    return chosen


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task")
    p.add_argument("--stage", choices=("teacher", "ta", "exit"))
    p.add_argument("--teacher", help="--stage exit: the fine-tuned teacher the TA trials distill from")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="--stage exit: a recipe setting of every trial, e.g. the chosen ta.learning_rate")
    p.add_argument("--glue-dir", default=os.environ.get("NPCOSTEFF_GLUE_DIR"))
    p.add_argument("--preset", help="the recipe the trials start from (default: the task's preset)")
    p.add_argument("--table", action="store_true", help="write docs/search.md from the finished trials")
    p.add_argument("--best", action="store_true", help="print the chosen settings of --task as --set flags")
    a = p.parse_args(argv)
    if a.best:
        print(" ".join(f"--set {k}={v:g}" if isinstance(v, float) else f"--set {k}={v}"
                       for k, v in best_settings(a.task).items()))
        return 0
    if a.table:
        text = table()
        with open(os.path.join(ROOT, "docs", "search.md"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(text)
        return 0
    if not (a.task and a.stage):
        p.error("give --task and --stage (or --table)")
    from npcosteff.recipe import parse_override
    run_search(a.task, a.stage, a.glue_dir, a.preset, a.teacher, dict(parse_override(t) for t in a.set))
    return 0


if __name__ == "__main__":
    sys.exit(main())
