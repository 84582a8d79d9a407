"""One results file and one table per task, from finished runs (results/README.md).

    python experiments/report.py --task mrpc --glue-dir PATH \\
        --run "2 / 128 / 32=runs/mrpc" --run "6 / 768 / 192=runs/mrpc-w6" \\
        --ablation "last-exit importance=runs/mrpc-last" --ablation "no TA=runs/mrpc-nota" \\
        --ablation "no exits=runs/mrpc-noexits" --naive runs/mrpc/naive/best
    python experiments/plot_results.py mrpc          # the picture: docs/images/mrpc_tradeoff.png

The teacher and the TA come from the first ``--run`` folder (``summary.json`` names their
model folders); every ``--run`` and ``--ablation`` adds its student, every ``--naive`` a model
folder of a naive-exits baseline (``LABEL=FOLDER`` names it; "naive exits" by default). For each model, on the whole dev set:

* the metric of every exit (one full pass that keeps all exits' logits);
* parameters, as a fraction of the teacher's;
* an early-exit **operating point** chosen by 2-fold cross-fitting
  (``npcosteff.operating_point.cross_fit``): on each half of dev, the threshold with the
  fewest FLOPs that keeps ``--target`` (96.5%) of the teacher's metric on that half and beats
  the majority class; applied to the other half. The threshold is never chosen on the
  samples it is scored on;
* FLOPs per sample there, on each sample's real tokens and on inputs padded to
  ``--pad-to`` (128) tokens, the paper's protocol, both as fractions of the teacher's;
* the measured speed-up: the teacher's wall-clock time over dev (full forward) over the
  model's early-exit time with its two thresholds, timed side by side in this process on
  the same batches (each half of dev batched on its own), the median of ``--repeats``
  rounds after a warm-up.

Writes ``results/<task>.json`` (schema in ``docs/results.md``), and a markdown table to
stdout (``--markdown`` writes it to a file). ``--add-to results/<task>.json`` instead adds the
students of the given runs (and the ``--naive`` baselines) to that file, keeping its rows, when
their teacher is the file's (a run retrained with the file's recipe and seed; checked on the
teacher's dev metric): a new width or baseline is added without retraining every model of the
task. Each added row's speed-up is timed against the teacher in its own report (``added`` in
the file says when).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import npcosteff  # noqa: F401  (first: its thread settings, npcosteff/threads.py, precede Numba's first parallel loop)
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# --------------------------------------------------------------------------- measuring a model
def exit_metrics(task, logits, labels):
    from npcosteff.metrics import compute_metrics, main_metric, predictions_from_logits

    regression = logits.shape[2] == 1
    return [float(compute_metrics(task, predictions_from_logits(z, regression), labels)[main_metric(task)])
            for z in logits]


def flops_of(config, n_tokens, layers):
    """(N,) FLOPs of each sample leaving at `layers` with `n_tokens` real tokens (or a constant)."""
    from npcosteff.flops import model_flops

    n_tokens = np.broadcast_to(np.asarray(n_tokens), np.shape(layers))
    cache = {}
    out = np.empty(len(layers))
    for i, (n, l) in enumerate(zip(n_tokens.tolist(), np.asarray(layers).tolist())):
        if (n, l) not in cache:
            cache[(n, l)] = model_flops(config, int(n), int(l))
        out[i] = cache[(n, l)]
    return out


def majority(task, train_labels, dev_labels):
    """(metric, label) of always predicting the training set's most frequent label (the mean for regression)."""
    from npcosteff.metrics import compute_metrics, main_metric

    train_labels, dev_labels = np.asarray(train_labels), np.asarray(dev_labels)
    if np.issubdtype(train_labels.dtype, np.floating) and len(np.unique(train_labels)) > 10:
        value = float(train_labels.mean())
        preds = np.full(len(dev_labels), value)
    else:
        value = int(np.bincount(train_labels.astype(np.int64)).argmax())
        preds = np.full(len(dev_labels), value)
    return float(compute_metrics(task, preds, dev_labels)[main_metric(task)]), value


# --------------------------------------------------------------------------- the report
def build(task, models, labels, teacher_name="teacher", target=0.965, floor=None, pad_to=128,
          thresholds=None, criterion="entropy", probe=None, majority_metric=None, metric_name=""):
    """The results dict of one task from measured models.

    models: name -> dict(role, config, parameters, logits (E, N, C), exit_layers, n_tokens,
    num_layers). ``speedup_measured`` is left None: the command line times the models.
    """
    from npcosteff.metrics import compute_metrics, main_metric, predictions_from_logits
    from npcosteff.operating_point import cross_fit, simulate_exit

    teacher = models[teacher_name]
    t_pred = predictions_from_logits(teacher["logits"][-1], teacher["logits"].shape[2] == 1)
    key = main_metric(task)

    def teacher_metric_of(idx):
        return float(compute_metrics(task, t_pred[idx], labels[idx])[key])

    t_flops = flops_of(teacher["config"], teacher["n_tokens"], np.full(len(labels), teacher["num_layers"]))
    t_flops_padded = flops_of(teacher["config"], pad_to, np.full(len(labels), teacher["num_layers"]))
    out_models = []
    for name, m in models.items():
        L = m["num_layers"]
        per_exit = exit_metrics(task, m["logits"], labels)
        exits = [None] * L
        for layer, value in zip(m["exit_layers"], per_exit):
            exits[layer - 1] = value
        if len(m["exit_layers"]) > 1:
            fit = cross_fit(task, m["logits"], m["exit_layers"], labels, thresholds,
                            cost=lambda layers, m=m: flops_of(m["config"], m["n_tokens"], layers),
                            teacher_metric_of=teacher_metric_of, target=target, floor=floor, criterion=criterion)
            metric, layers, thr = fit.metric, fit.exit_layers, list(fit.thresholds)
        else:
            metric, layers, thr = per_exit[-1], np.full(len(labels), L), None
        flops = flops_of(m["config"], m["n_tokens"], layers)
        flops_padded = flops_of(m["config"], pad_to, layers)
        # The whole trade-off on all of dev, threshold by threshold, for plots (the operating
        # point above is cross-fitted, not read off this curve).
        curve = []
        for t in (thresholds if len(m["exit_layers"]) > 1 else []):
            kw = dict(patience=int(t)) if criterion == "patience" else dict(threshold=float(t))
            left_at, z = simulate_exit(m["logits"], m["exit_layers"], criterion=criterion, **kw)
            pred = predictions_from_logits(z, z.shape[1] == 1)
            curve.append({"threshold": float(t), "metric": float(compute_metrics(task, pred, labels)[key]),
                          "flops_ratio": float(flops_of(m["config"], m["n_tokens"], left_at).mean() / t_flops.mean()),
                          "flops_ratio_padded": float(flops_of(m["config"], pad_to, left_at).mean()
                                                      / t_flops_padded.mean())})
        out_models.append({
            "name": name, "role": m["role"], "parameters": int(m["parameters"]),
            "params_ratio": m["parameters"] / teacher["parameters"], "exits": exits,
            "exit_average": float(np.mean([e for e in exits if e is not None])),
            "operating_point": {
                "threshold": thr, "criterion": criterion if thr is not None else None,
                "metric": float(metric), "metric_ratio": float(metric) / teacher_metric_of(np.arange(len(labels))),
                "flops_ratio": float(flops.mean() / t_flops.mean()),
                "flops_ratio_padded": float(flops_padded.mean() / t_flops_padded.mean()),
                "mean_exit_layer": float(np.mean(layers)), "speedup_measured": None},
            "curve": curve,
        })
    t_metric = teacher_metric_of(np.arange(len(labels)))
    return {"task": task, "metric": metric_name or key, "teacher": t_metric, "majority": majority_metric,
            "probe": probe, "target": target, "pad_to": pad_to, "dev_examples": int(len(labels)),
            "operating_point_rule": (f"2-fold cross-fitted on dev: on each half the {criterion} threshold with the "
                                     f"fewest FLOPs keeping {target:g} of the teacher's metric on that half and "
                                     f"beating the majority class, applied to the other half"),
            "models": out_models}


def markdown(results) -> str:
    L = max(len(m["exits"]) for m in results["models"])
    head = (["model", "role", "params"] + [f"exit {l}" for l in range(1, L + 1)] +
            ["avg", "threshold(s)", "metric (x teacher)", "FLOPs", "FLOPs @128", "speed-up"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
    if results.get("probe"):
        lines.append("| " + " | ".join(["linear probe (frozen)", "-", "-"] + [pct(v) for v in results["probe"]]
                                       + ["-"] * 6) + " |")
    for m in results["models"]:
        op = m["operating_point"]
        thr = "-" if op["threshold"] is None else " / ".join(f"{t:g}" for t in op["threshold"])
        cells = [m["name"], m["role"], f"{m['parameters'] / 1e6:.2f}M (1/{1 / m['params_ratio']:.1f})"]
        cells += [pct(e) for e in m["exits"]] + [pct(m["exit_average"]), thr,
                                                  f"{pct(op['metric'])} ({op['metric_ratio']:.3f})",
                                                  f"1/{1 / op['flops_ratio']:.1f}", f"1/{1 / op['flops_ratio_padded']:.1f}",
                                                  "-" if op["speedup_measured"] is None else f"{op['speedup_measured']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    if results.get("majority") is not None:
        lines.append("| " + " | ".join(["majority class", "-", "-"] + ["-"] * L + [pct(results["majority"])]
                                       + ["-"] * 5) + " |")
    searched = results.get("rates_searched_on")
    if searched and searched != results["task"]:
        lines += ["", f"Learning rates not searched on {results['task']}: taken from the search on {searched} "
                      "(docs/search.md)."]
    for entry in results.get("added", []):
        lines += ["", f"Added later (`report.py --add-to`, {entry['timing']['date']}): "
                      f"{', '.join(entry['models'])}, from runs whose teacher scores "
                      f"{100 * entry['teacher']:.1f} like the file's; their speed-ups were timed in that report."]
    if results.get("unfinished_run"):
        lines += ["", "The main run had not finished: its teacher and TA only, no student yet."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- adding a model
# Two teachers count as the same when their dev metrics agree this closely. Retrained with the
# same recipe and seed, a teacher repeats its weights bit for bit on one machine
# (tests/test_train.py) and its dev metric to float32 rounding on another CPU: STS-B's, trained
# on an AMD EPYC and again on an Intel Xeon, 0.8571680 and 0.8571676 (3.9e-7 apart). A teacher
# trained with any other setting moves it by far more (one dev example of 1,500 changes an
# accuracy by 7e-4).
SAME_TEACHER = 1e-6


def add_students(existing: dict, new: dict, what: dict) -> dict:
    """``existing`` (a results file) with the students and naive-exits baselines of ``new`` (a
    report of other runs) added.

    The rows' ratios are fractions of their own run's teacher, so they may join another file
    only when that teacher is the file's: the same task, dev set and protocol, and the same
    teacher dev metric within ``SAME_TEACHER`` (a run retraining the file's teacher with its
    recipe and seed). The file's own rows are kept; a row of the same name is replaced, unless
    it measures the same (the same exits' metrics: the same model, reported again because its
    run also holds the teacher), when the file's row and its timing stay. An added student goes
    after the file's last student, an added naive baseline after its last naive one (else
    after the TA). ``what`` (the added runs' recipe, timing, ...) is recorded under ``added``.
    """
    for key in ("task", "dev_examples", "pad_to", "target", "operating_point_rule"):
        if existing.get(key) != new.get(key):
            raise ValueError(f"cannot add to a results file with another {key}: {existing.get(key)!r} "
                             f"in the file, {new.get(key)!r} in this report")
    gap = abs(existing["teacher"] - new["teacher"])
    if gap > SAME_TEACHER:
        raise ValueError(f"the teacher of these runs scores {new['teacher']:.6f} on dev, the file's "
                         f"{existing['teacher']:.6f}: not the same teacher, so their students' ratios "
                         "cannot join the file (retrain with the file's recipe and seed, or report all "
                         "models anew)")
    in_file = {m["name"]: m["exits"] for m in existing["models"]}
    added = [m for m in new["models"] if m["role"] in ("student", "naive") and in_file.get(m["name"]) != m["exits"]]
    if not added:
        raise ValueError("these runs have no student or naive-exits baseline to add (none, or only rows "
                         "the file already has)")
    names = {m["name"] for m in added}
    rows = [m for m in existing["models"] if m["name"] not in names]
    for role, after in (("naive", ("ta", "teacher")), ("student", ("naive", "ta", "teacher"))):
        at = _after_last(rows, (role,) + after)
        rows[at:at] = [m for m in added if m["role"] == role]
    out = dict(existing)
    out["models"] = rows
    out["added"] = list(existing.get("added", [])) + [dict(what, models=sorted(names), teacher=new["teacher"])]
    return out


def _after_last(rows, roles):
    """The index after the last row of the first of `roles` that `rows` has (else the end)."""
    for role in roles:
        at = [i for i, m in enumerate(rows) if m["role"] == role]
        if at:
            return at[-1] + 1
    return len(rows)


def selection_rule(selection):
    """How a run chose its checkpoints, in words (the recipe field ``selection``)."""
    if selection == "heldout":
        return ("best exit-average metric on the held-out tenth of the training set (at most 2,000 examples, "
                "shuffle seed 0; npcosteff.data.heldout_split), never dev")
    if selection == "last":
        return "the last checkpoint"
    raise ValueError(f"unknown selection {selection!r}")


# --------------------------------------------------------------------------- command line
def _time(models, batches, thresholds_of, criterion, repeats):
    """Median seconds over dev per model, the models taking turns round by round."""
    from npcosteff.early_exit import early_exit_predict

    def once(name, model):
        thr = thresholds_of.get(name)
        t0 = time.perf_counter()
        if thr is None:
            for b in batches:
                model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        else:
            for part, t in zip(thr["halves"], thr["values"]):
                kw = dict(patience=int(t)) if criterion == "patience" else dict(threshold=float(t))
                early_exit_predict(model, part, criterion=criterion, **kw)
        return time.perf_counter() - t0

    for name, model in models.items():
        once(name, model)                                        # warm-up
    seconds = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            seconds[name].append(once(name, model))
    return {name: float(np.median(s)) for name, s in seconds.items()}


# The stages of `npcosteff run` that leave a model, in order, and the name summary.json gives it.
RUN_STAGES = (("teacher", "teacher"), ("ta", "ta"), ("recover", "student"))


def unfinished_run_summary(folder):
    """What summary.json would name for a run that has not finished: its recipe (recipe.json)
    and the models of the stages that have (a DONE.json), so that a results file can be written
    from the teacher and the TA while the student is still training. None when the folder is
    not a run or no stage has finished."""
    from npcosteff.pretrained import DONE_FILE

    recipe_file = os.path.join(folder, "recipe.json")
    if not os.path.isfile(recipe_file):
        return None
    models = [{"name": name, "folder": os.path.join(folder, stage)} for stage, name in RUN_STAGES
              if os.path.isfile(os.path.join(folder, stage, DONE_FILE))]
    if not models:
        return None
    with open(recipe_file, encoding="utf-8") as f:
        return {"recipe": json.load(f), "models": models, "unfinished": True}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER")
    p.add_argument("--ablation", action="append", default=[], metavar="LABEL=FOLDER")
    p.add_argument("--naive", action="append", default=[], metavar="[LABEL=]FOLDER",
                   help="model folder of a naive-exits baseline (label 'naive exits' unless given); repeatable")
    p.add_argument("--glue-dir", default=os.environ.get("NPCOSTEFF_GLUE_DIR"))
    p.add_argument("--target", type=float, default=0.965)
    p.add_argument("--pad-to", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rates-from", help="the task whose search chose the learning rates (default: --task)")
    p.add_argument("--output", help="results file (default: results/<task>.json)")
    p.add_argument("--markdown", help="also write the table here")
    p.add_argument("--add-to", metavar="RESULTS_JSON",
                   help="add the students of these runs to an existing results file instead of writing a "
                        "new one; their teacher must be the file's (retrained with its recipe and seed)")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="the first --run may be a run still in progress: report its finished stages")
    a = p.parse_args(argv)

    from npcosteff.data.batching import iterate_batches
    from npcosteff.flops import count_parameters
    from npcosteff.metrics import main_metric
    from npcosteff.model import CostEffModel
    from npcosteff.operating_point import exit_logits
    from npcosteff.data import load_task_data
    from npcosteff.pretrained import resolve_model_dir
    from npcosteff.recipe import Recipe

    def model_folder(run_folder, path):
        """A model folder named in a run's summary.json: as written (absolute, or relative to where
        the run was started), else relative to the folder that holds the run."""
        if os.path.isabs(path) or os.path.isdir(path):
            return path
        beside = os.path.join(os.path.dirname(os.path.abspath(run_folder)), path)
        if os.path.isdir(beside):
            return beside
        p.error(f"the model folder {path!r} named in {run_folder}/summary.json is not there")

    def split(spec, unfinished_ok=False):
        label, sep, folder = spec.rpartition("=")
        if sep and label and not os.path.isfile(os.path.join(folder, "summary.json")) and unfinished_ok:
            summary = unfinished_run_summary(folder)
            if summary is not None:
                names = ", ".join(m["name"] for m in summary["models"])
                print(f"report: {folder} has not finished; reporting its finished stages only ({names})")
                for m in summary["models"]:
                    m["folder"] = resolve_model_dir(m["folder"], what=m["name"])
                return label, summary
        if not sep or not label or not os.path.isfile(os.path.join(folder, "summary.json")):
            p.error(f"{spec!r}: give LABEL=FOLDER of a finished `npcosteff run` (with summary.json)"
                    + (", or of one whose teacher has finished (--allow-unfinished)" if unfinished_ok else ""))
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        for m in summary["models"]:
            m["folder"] = model_folder(folder, m["folder"])
        return label, summary

    runs = [split(a.run[0], a.allow_unfinished)] + [split(s) for s in a.run[1:]]
    ablations = [split(s) for s in a.ablation]
    recipe = Recipe.from_dict(runs[0][1]["recipe"])
    folders = {m["name"]: m["folder"] for m in runs[0][1]["models"]}
    entries = [("teacher", "teacher", folders["teacher"])]
    if "ta" in folders:
        entries.append(("TA", "ta", folders["ta"]))
    for spec in a.naive:
        label, sep, folder = spec.rpartition("=")
        entries.append((label if sep and label else "naive exits", "naive", folder))
    for label, summary in runs + ablations:
        student = {m["name"]: m["folder"] for m in summary["models"]}.get("student")
        if student:
            entries.append((f"student: {label}", "student", student))

    d = recipe.data
    data = load_task_data(recipe.task, a.glue_dir, d.model, d.max_length, d.max_train, d.max_eval)
    labels = np.asarray(data.dev.labels)
    batches = list(iterate_batches(data.dev, data.dev.labels, recipe.training.eval_batch_size, sort_by_length=True))
    loaded, measured = {}, {}
    for name, role, folder in entries:
        model = CostEffModel.from_pretrained(folder)
        logits, n_tokens = exit_logits(model, batches)
        loaded[name] = model
        measured[name] = dict(role=role, config=model.config, parameters=count_parameters(model.config)["total"],
                              logits=logits, exit_layers=[i + 1 for i in model.config.exit_layers],
                              n_tokens=n_tokens, num_layers=model.config.num_hidden_layers)
    maj, _ = majority(recipe.task, data.train.labels, labels)
    probe_file = os.path.join(ROOT, "results", "probe", f"{recipe.task}.json")
    probe = None
    if os.path.isfile(probe_file):
        with open(probe_file, encoding="utf-8") as f:
            probe = json.load(f)["probe"][1:]                  # layers 1..L
    thresholds = list(recipe.early_exit.thresholds)
    if recipe.early_exit.criterion == "entropy":                          # a fine grid as well, up to ln C
        thresholds = sorted(set(thresholds) | set(np.round(np.linspace(0, math.log(max(2, data.num_labels)), 41), 4)))
    results = build(recipe.task, measured, labels, target=a.target, floor=maj, pad_to=a.pad_to,
                    thresholds=thresholds, criterion=recipe.early_exit.criterion, probe=probe, majority_metric=maj,
                    metric_name=main_metric(recipe.task))
    # Time every model side by side, each half of dev with the threshold chosen on the other.
    order = np.random.default_rng(0).permutation(len(labels))
    halves = (np.sort(order[: len(labels) // 2]), np.sort(order[len(labels) // 2:]))

    def half_batches(idx):
        sub = data.dev.subset(idx)
        return list(iterate_batches(sub, sub.labels, recipe.training.eval_batch_size, sort_by_length=True))

    parts = (half_batches(halves[1]), half_batches(halves[0]))   # threshold chosen on A runs on B, and back
    thresholds_of = {m["name"]: None if m["operating_point"]["threshold"] is None else
                     {"halves": parts, "values": m["operating_point"]["threshold"]} for m in results["models"]}
    # Every model on the same batches: the teacher and the models without exits run the two
    # halves' batches too (batched apart, they pad differently from all of dev batched at once:
    # 5% more time for the teacher on STS-B).
    seconds = _time(loaded, [b for part in parts for b in part], thresholds_of, recipe.early_exit.criterion, a.repeats)
    for m in results["models"]:
        m["operating_point"]["speedup_measured"] = seconds["teacher"] / seconds[m["name"]]
    # How each row was selected: its checkpoint (the recipe's rule, which the naive exits'
    # training follows too) and its thresholds (cross-fitted above); never on the dev set scored.
    rule = selection_rule(recipe.data.selection)
    for m in results["models"]:
        m["selection"] = {"checkpoint": rule, "threshold": results["operating_point_rule"]
                          if m["operating_point"]["threshold"] is not None else None}
    # What ran: the main run's recipe, and whose search chose its learning rates.
    results["recipe"] = runs[0][1]["recipe"]
    results["seed"] = recipe.training.seed
    results["commit"] = _commit()
    results["rates_searched_on"] = a.rates_from or recipe.task
    if runs[0][1].get("unfinished"):
        results["unfinished_run"] = True        # the main run's student had not finished: teacher and TA only
    results["timing"] = {"repeats": a.repeats, "seconds": seconds, "cpu": _cpu(), "date": time.strftime("%Y-%m-%d"),
                         "load_average": os.getloadavg()[0]}
    out = a.output or a.add_to or os.path.join(ROOT, "results", f"{recipe.task}.json")
    if a.add_to:
        with open(a.add_to, encoding="utf-8") as f:
            existing = json.load(f)
        try:
            results = add_students(existing, results, {
                "recipe": results["recipe"], "rates_searched_on": results["rates_searched_on"],
                "timing": results["timing"]})
        except ValueError as e:
            p.error(f"--add-to {a.add_to}: {e}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    os.replace(out + ".tmp", out)
    md = markdown(results)
    print(md)
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(md)
    return 0


def _commit():
    """The commit of the code that wrote the results (with "+changes" when the tree differs)."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def _cpu():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
