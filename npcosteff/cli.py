"""The ``npcosteff`` command line: each stage of the COST-EFF recipe (docs/method.md, 6) as a subcommand.

The commands only turn their options into a recipe and call `npcosteff.runs` (stages, run and
stage folders, summaries), which experiments and tutorials call directly.

::

    npcosteff demo                                         # demo preset, SST-2, packaged MiniLM
    npcosteff run --preset quick --output runs/quick       # all stages from one recipe
    npcosteff run --config my_recipe.toml --no-ta          # ... with an ablation

    npcosteff finetune   --task sst2 --output runs/t/teacher
    npcosteff train-ta   --task sst2 --teacher runs/t/teacher --output runs/t/ta
    npcosteff slenderize --task sst2 --ta runs/t/ta --output runs/t/slenderize --heads 2 --ffn 256 --rank 64
    npcosteff recover    --task sst2 --student runs/t/slenderize --teacher runs/t/ta --output runs/t/recover
    npcosteff evaluate   --task sst2 --model runs/t/recover
    npcosteff sweep      --task sst2 --model ta=runs/t/ta --model student=runs/t/recover --output runs/t/sweep
    npcosteff predict    --model runs/t/recover "a gripping, funny film" --explain   # early exit, sentence by sentence

Every stage writes one folder (stage.json, log.txt, metrics.jsonl, its checkpoints and, last,
DONE.json: see npcosteff.runs.folders).

A model argument (``--teacher``, ``--ta``, ``--student``, ``--model``) is either a model folder
(config.json, model.safetensors) or a finished stage folder (its DONE.json names the model).
An interrupted stage resumes from its last checkpoint when the same command is run again; a
finished one (DONE.json) is skipped. ``run`` lays its stages out as::

    <output>/recipe.json  teacher/  ta/  slenderize/  recover/  sweep/  summary.md  summary.json  log.txt

GLUE comes from ``--glue-dir SOURCE``: a folder in GLUE's TSV layout, ``hub`` (``nyu-mll/glue``
through `datasets`) or ``shipped`` (the small GLUE slices inside the package). Without it,
``$NPCOSTEFF_GLUE_DIR`` decides when set, else the hub; ``demo`` runs on the shipped slices.

User errors (unknown task or preset, bad settings, missing or corrupt files, a folder that is
not a model, no data or a bad data row) end with exit code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from typing import Optional

from .early_exit import CRITERIA, default_thresholds
from .presets import PRESETS, get_preset, load_recipe
from .recipe import SECTIONS, Recipe, RecipeError, field_type, parse_override, parse_value
from .runs import LOG_FILE, DataUnavailable, UserError, check_targets, console, describe, load_data, load_model, \
    pretrained_dir, run_recipe, stage_finetune, stage_recover, stage_slenderize, stage_train_ta, sweep_models, \
    sweep_table, tokenizer_dir
from .runs.folders import dtype_of, write_json
from .runs.summary import fmt_count

__all__ = ["main", "build_parser"]

DEMO_OUTPUT = "npcosteff-demo"


# --------------------------------------------------------------------------- recipes from options
# Every recipe option of a command is a recipe setting: its dest is the setting's name
# (``finetune.epochs``), its flag the field's name (``--epochs``); `_recipe_from_args` collects
# them. They are derived from the recipe's sections (npcosteff.recipe), never listed here.
def _recipe_from_args(args, base: Optional[Recipe] = None) -> Recipe:
    """The recipe: --preset / --config (or `base`), then the setting options given, then --set."""
    if getattr(args, "preset", None) and getattr(args, "config", None):
        raise UserError("give either --preset or --config, not both")
    try:
        if getattr(args, "config", None):
            recipe = load_recipe(args.config)
        elif getattr(args, "preset", None):
            recipe = get_preset(args.preset)
        else:
            recipe = base or Recipe()
        changes = {}
        for key, value in vars(args).items():
            if "." in key and value is not None:           # a setting option that was given
                if isinstance(value, list):                # a list of numbers, given as several values
                    value = ",".join(value)
                changes[key] = value if isinstance(value, bool) else parse_value(key, value)
        for text in getattr(args, "set", None) or []:
            k, v = parse_override(text)
            changes[k] = v
        return recipe.replace(changes) if changes else recipe
    except RecipeError as e:
        raise UserError(str(e)) from None


def _setting_options(p, section, title, skip=()):
    """An option per field of recipe section `section` (``--max-steps`` sets ``finetune.max_steps``)."""
    g = p.add_argument_group(title)
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name in skip:
            continue
        key = f"{section}.{f.name}"
        kind, _ = field_type(key)
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            g.add_argument(flag, dest=key, action="store_true", default=None, help=f"sets {key}")
        elif kind is tuple:
            g.add_argument(flag, dest=key, nargs="+", metavar="X", help=f"sets {key}")
        else:
            g.add_argument(flag, dest=key, metavar=kind.__name__.upper(), help=f"sets {key}")
    return g


# --------------------------------------------------------------------------- commands
def cmd_finetune(args):
    recipe = _recipe_from_args(args)
    pre = pretrained_dir(recipe.data.model)
    data = load_data(recipe, args.glue_dir, tokenizer_dir(pre))
    stage_finetune(recipe, data, args.output, pre, progress=not args.no_progress)
    console.say(f"outputs: {args.output}")


def cmd_train_ta(args):
    recipe = _recipe_from_args(args)
    pre = pretrained_dir(recipe.data.model)
    from .data.glue import get_task
    teacher = load_model(args.teacher, dtype_of(recipe), "teacher", get_task(recipe.task))
    data = load_data(recipe, args.glue_dir, tokenizer_dir(teacher.folder, pre))
    stage_train_ta(recipe, data, teacher, args.output, pre, progress=not args.no_progress)
    console.say(f"outputs: {args.output}")


def cmd_slenderize(args):
    recipe = _recipe_from_args(args)
    from .data.glue import get_task
    ta = load_model(args.ta, dtype_of(recipe), "TA", get_task(recipe.task))
    teacher = ta if args.teacher is None else load_model(args.teacher, dtype_of(recipe), "teacher",
                                                         get_task(recipe.task))
    check_targets(ta.config, recipe)
    data = load_data(recipe, args.glue_dir, tokenizer_dir(ta.folder))
    stage_slenderize(recipe, data, ta, teacher, args.output, progress=not args.no_progress)
    console.say(f"outputs: {args.output}")


def cmd_recover(args):
    recipe = _recipe_from_args(args)
    from .data.glue import get_task
    student = load_model(args.student, dtype_of(recipe), "student", get_task(recipe.task))
    teacher = load_model(args.teacher, dtype_of(recipe), "teacher", get_task(recipe.task))
    data = load_data(recipe, args.glue_dir, tokenizer_dir(student.folder, teacher.folder))
    stage_recover(recipe, data, student, teacher, args.output, progress=not args.no_progress)
    console.say(f"outputs: {args.output}")


def cmd_evaluate(args):
    recipe = _recipe_from_args(args)
    from .data.glue import get_task
    model = load_model(args.model, dtype_of(recipe), "model", get_task(recipe.task))
    data = load_data(recipe, args.glue_dir, tokenizer_dir(model.folder), need_train=False)
    summary = describe(model, data.dev, recipe.task, recipe.training.eval_batch_size)
    c = model.config
    metrics = list(next(iter(summary["dev"]["exits"].values())))
    console.say(f"model {model.folder}: {c.num_hidden_layers} layers, heads {c.heads_per_layer}, FFN "
                f"{c.intermediate_per_layer}, embedding rank {c.embedding_rank or 'full'}")
    console.say(f"parameters: {summary['parameters']:,} ({summary['encoder_parameters']:,} without exits)")
    console.say(f"dev: {summary['dev_examples']} examples of {recipe.task}, {summary['mean_tokens']:.1f} tokens "
                f"on average; FLOPs per example through every layer and exit: "
                f"{fmt_count(summary['flops_per_sample'])}")
    console.say("| exit | " + " | ".join(metrics) + " | FLOPs/example to this exit |")
    console.say("|---" * (len(metrics) + 2) + "|")
    for layer, m in summary["dev"]["exits"].items():
        console.say(f"| {layer} | " + " | ".join(f"{100 * m[k]:.2f}" for k in metrics) +
                    f" | {fmt_count(summary['flops_to_exit'][layer])} |")
    console.say(f"{summary['dev']['main_metric']} averaged over exits: {100 * summary['dev']['average']:.2f}")
    if args.json:
        write_json(args.json, {"model": model.folder, "task": recipe.task, **summary})
        console.say(f"written: {args.json}")


_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _named_models(specs):
    named = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep:
            folder, name = spec, os.path.basename(os.path.normpath(spec))
        if not _NAME.match(name):
            raise UserError(f"model name {name!r} (in {spec!r}) may only use letters, digits, '.', '_' and '-'")
        if name in named:
            raise UserError(f"model name {name!r} is given twice")
        named[name] = folder
    return named


def cmd_sweep(args):
    criterion = getattr(args, "early_exit.criterion")
    if criterion is not None and getattr(args, "early_exit.thresholds") is None:
        # Another criterion without thresholds: that criterion's default sweep.
        setattr(args, "early_exit.thresholds", [str(t) for t in default_thresholds(criterion)])
    recipe = _recipe_from_args(args)
    from .data.glue import get_task
    models = {name: load_model(folder, dtype_of(recipe), f"model {name}", get_task(recipe.task))
              for name, folder in _named_models(args.model).items()}
    first = next(iter(models.values()))
    data = load_data(recipe, args.glue_dir, tokenizer_dir(first.folder), need_train=False)
    with console.logging_to(os.path.join(args.output, LOG_FILE)):
        curves, png = sweep_models(models, data, recipe, args.output, progress=not args.no_progress)
        for name, rows in curves.items():
            console.say(f"{name}:")
            console.say(sweep_table(rows, recipe.early_exit.criterion))
        console.say(f"plot: {png}")


def _check_ablations(args):
    if args.no_slenderize and args.no_exits:
        raise UserError("--no-exits shapes the slender student, and --no-slenderize trains none")
    if args.no_slenderize and getattr(args, "slenderize.last_exit_only"):
        raise UserError("--last-exit-only changes the slenderization's importance, and --no-slenderize skips it")
    if args.no_slenderize and args.no_ta:
        raise UserError("--no-ta with --no-slenderize would train only the fine-tuned teacher")


def cmd_run(args):
    if not args.preset and not args.config:
        raise UserError("give a recipe: --preset NAME (one of " + ", ".join(PRESETS) + ") or --config FILE")
    _check_ablations(args)
    recipe = _recipe_from_args(args)
    switches = {"use_ta": not args.no_ta, "use_exits": not args.no_exits, "use_slenderize": not args.no_slenderize}
    recipe = recipe.replace({k: False for k, on in switches.items() if not on})
    output = args.output or os.path.join("runs", f"{recipe.name}-{recipe.task}")
    run_recipe(recipe, output, args.glue_dir, progress=not args.no_progress, reuse=args.reuse)


def cmd_demo(args):
    recipe = get_preset(args.preset)
    caps = {f"data.{k}": v for k in ("max_train", "max_eval") if (v := getattr(args, k, None)) is not None}
    try:
        recipe = recipe.replace({**caps, **dict(parse_override(s) for s in args.set or [])})
    except RecipeError as e:
        raise UserError(str(e)) from None
    from .data import SHIPPED, describe_source, get_task, glue_source, is_shipped, load_glue
    spec = get_task(recipe.task)
    try:
        # --glue-dir, else $NPCOSTEFF_GLUE_DIR, else the slices in the package: runs offline.
        source = glue_source(args.glue_dir, default=SHIPPED, task=spec)
        # Read the data first: without it there is nothing to show, and the error says how to get it.
        for split, n in (("train", recipe.data.max_train), ("validation", recipe.data.max_eval)):
            load_glue(spec, split, source, n)
    except (FileNotFoundError, RuntimeError, ValueError) as e:    # no data there; a slice too small; a bad row
        raise DataUnavailable(spec.name, e) from None
    if is_shipped(source):
        where = (f"on {describe_source(source)} ({recipe.data.max_train} training and {recipe.data.max_eval} dev "
                 f"sentences; full GLUE: --glue-dir FOLDER, --glue-dir hub or NPCOSTEFF_GLUE_DIR)")
    else:
        where = f"on GLUE from {describe_source(source)}"
    console.say(f"npcosteff demo: the {recipe.name} recipe on {spec.tsv_folder} with the packaged MiniLM, {where}")
    run_recipe(recipe, args.output, source, progress=not args.no_progress)
    return 0


def cmd_predict(args):
    from .predict import predict_sentences

    predict_sentences(args.model, args.sentences, args.file, args.task, args.criterion, args.threshold,
                      args.max_length, args.explain, args.json)


# --------------------------------------------------------------------------- parser
GLUE_DIR_HELP = ("where GLUE comes from: a folder in GLUE's TSV layout, 'hub' (nyu-mll/glue through datasets) or "
                 "'shipped' (the small GLUE slices in the package; default: $NPCOSTEFF_GLUE_DIR, else the hub)")


def _data_options(p, task_required=True):
    g = _setting_options(p, "data", "data", skip=("model",))
    for action in g._group_actions:                      # the task: required by the stage commands
        if action.dest == "data.task":
            action.required = task_required
            action.help = ("GLUE task: sst2, mrpc, stsb, cola, qqp, mnli, qnli, rte, wnli (GLUE folder names such "
                           "as SST-2 work too)")
    g.add_argument("--glue-dir", metavar="SOURCE", help=GLUE_DIR_HELP)
    g.add_argument("--eval-batch-size", dest="training.eval_batch_size", metavar="INT",
                   help="sets training.eval_batch_size")


def _recipe_options(p, seed=True):
    """--preset, --config, --set; and --seed (training.seed), unless the command's section has one."""
    g = p.add_argument_group("recipe (defaults: the paper's BERT-base settings)")
    g.add_argument("--preset", help=f"start from a preset recipe: {', '.join(PRESETS)}")
    g.add_argument("--config", help="start from a recipe file (.json or .toml)")
    g.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="set any recipe setting, e.g. --set training.warmup_proportion=0.06 (repeatable)")
    if seed:
        g.add_argument("--seed", dest="training.seed", metavar="INT", help="sets training.seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _pretrained_option(p, what="pretrained BERT folder (default: the packaged MiniLM)"):
    p.add_argument("--model", dest="data.model", metavar="PATH", help=what)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npcosteff", description="COST-EFF (slenderized multi-exit BERT) in NumPy: train, slenderize, "
                                      "evaluate and sweep early exit on GLUE.",
        epilog="Run `npcosteff demo` for the whole method on SST-2 in about four minutes.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("finetune", help="stage 1: fine-tune the pretrained model (the teacher)")
    _data_options(p)
    p.add_argument("--output", required=True, help="stage folder to write")
    _pretrained_option(p)
    _setting_options(p, "finetune", "fine-tuning (the recipe's finetune section)")
    _recipe_options(p, seed=False)
    p.set_defaults(func=cmd_finetune)

    # Stages 2-4: the models a stage starts from (name, required, help), then its section's options.
    for name, help_text, func, section, models in (
            ("train-ta", "stage 2: the multi-exit teacher-assistant", cmd_train_ta, "ta",
             [("--teacher", True, "fine-tuned teacher (model or stage folder)")]),
            ("slenderize", "stage 3: prune the TA in width (heads, FFN, embedding rank)", cmd_slenderize,
             "slenderize", [("--ta", True, "the multi-exit TA (model or stage folder)"),
                            ("--teacher", False, "model distilled from (default: the TA)")]),
            ("recover", "stage 4: recover the slender student by distillation", cmd_recover, "recover",
             [("--student", True, "the slenderized student (model or stage folder)"),
              ("--teacher", True, "the TA it learns from (model or stage folder)")])):
        p = sub.add_parser(name, help=help_text)
        _data_options(p)
        for flag, required, what in models:
            p.add_argument(flag, required=required, help=what)
        p.add_argument("--output", required=True)
        if name == "train-ta":
            _pretrained_option(p, "pretrained BERT folder the TA starts from (default: the packaged MiniLM)")
        _setting_options(p, section, f"the recipe's {section} section")
        _recipe_options(p)
        p.set_defaults(func=func)

    p = sub.add_parser("evaluate", help="dev metrics of every exit, parameters and FLOPs")
    _data_options(p)
    p.add_argument("--model", required=True, help="model or stage folder")
    p.add_argument("--json", help="also write the results to this JSON file")
    _recipe_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="early-exit threshold sweep: CSV, JSON and a PNG of metric against FLOPs")
    _data_options(p)
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                   help="a model to sweep (repeatable); one curve per model")
    p.add_argument("--output", required=True)
    _setting_options(p, "early_exit", "early exit (the recipe's early_exit section)", skip=("summary_thresholds",))
    _recipe_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "predict", help="early exit on your own sentences: each one's label, the exit it leaves at, and why",
        description="Classify sentences with a trained multi-exit model, one at a time (batch 1), with early exit: "
                    "each sentence leaves at the first exit confident enough under the criterion, else at the last "
                    "layer. One row per sentence (text, label, confidence, exit layer, milliseconds), then the mean "
                    "exit layer and the total time.")
    p.add_argument("sentences", nargs="*", metavar="SENTENCE",
                   help="sentences to classify (a sentence pair: the two texts separated by a TAB); without them, "
                        "--file F, else standard input (one per line)")
    p.add_argument("--model", required=True, metavar="DIR", help="a model folder or a finished stage folder "
                                                                 "(e.g. npcosteff-demo/recover)")
    p.add_argument("--file", metavar="F", help="read examples from F, one per line (a sentence pair: two texts "
                                               "separated by a TAB)")
    p.add_argument("--task", help="GLUE task: sst2, mrpc, stsb, cola, qqp, mnli, qnli, rte, wnli (default: the task "
                                  "the stage or run folder recorded)")
    p.add_argument("--criterion", choices=CRITERIA, help="early-exit criterion (default: entropy; patience for "
                                                         "regression tasks such as stsb)")
    p.add_argument("--threshold", metavar="T",
                   help="default: the operating point the model's run chose on held-out data (its summary.json), "
                        "else the criterion's default; entropy: leave at the first exit whose entropy is below T "
                        "(default 0.3; 0 never leaves "
                        "early, above ln 2 = 0.69 two-class sentences all leave at the first exit); max_prob: leave "
                        "when the top probability is above T (default 0.9); patience: leave when the prediction has "
                        "agreed with the exit before T times in a row (default 2)")
    p.add_argument("--max-length", default="128", metavar="INT",
                   help="tokens per example at most, special tokens included (default: 128)")
    p.add_argument("--explain", action="store_true",
                   help="under each sentence, one line per exit up to the one it leaves at: the exit's label, "
                        "confidence, entropy and the rule's decision")
    p.add_argument("--json", metavar="OUT", help="also write the rows (with --explain, every exit's step) to this "
                                                 "JSON file")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("run", help="all stages from one recipe, with a summary table and plot")
    _data_options(p, task_required=False)
    _pretrained_option(p)
    _recipe_options(p)
    p.add_argument("--output", help="run folder (default: runs/<recipe>-<task>)")
    p.add_argument("--reuse", metavar="RUN", help="take the finished teacher and TA of run folder RUN (linked, "
                                                  "not retrained): another width or an ablation of the same recipe")
    a = p.add_argument_group("ablations")
    a.add_argument("--no-ta", action="store_true", help="distill the student from the fine-tuned teacher directly")
    a.add_argument("--last-exit-only", dest="slenderize.last_exit_only", action="store_true", default=None,
                   help="importance from the last exit's loss only (sets slenderize.last_exit_only)")
    a.add_argument("--no-exits", action="store_true", help="slenderization without exits (final exit only)")
    a.add_argument("--no-slenderize", action="store_true", help="exits without slenderization (the TA is final)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the whole method on SST-2 with the packaged MiniLM, in about four minutes")
    p.add_argument("--glue-dir", metavar="SOURCE",
                   help="where GLUE comes from: a folder in GLUE's TSV layout, 'hub' (nyu-mll/glue through "
                        "datasets) or 'shipped' (the GLUE slices in the package; default: $NPCOSTEFF_GLUE_DIR, "
                        "else shipped)")
    p.add_argument("--output", default=DEMO_OUTPUT, help=f"run folder (default: {DEMO_OUTPUT})")
    p.add_argument("--preset", default="demo", choices=("demo", "quick"),
                   help="demo (default: about four minutes) or quick (about a minute, a smoke test)")
    p.add_argument("--max-train", type=int, metavar="N", help="the first N training sentences only (smaller runs)")
    p.add_argument("--max-eval", type=int, metavar="N", help="the first N dev sentences only (smaller runs)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="change a setting of the recipe, e.g. --set data.max_train=1000 for a shorter run")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def _check_paths(args):
    """--output names a folder (or nothing yet), --json a file (or nothing yet): else a one-line error."""
    output, json_file = getattr(args, "output", None), getattr(args, "json", None)
    if output and os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"--output {output!r} is a file: give a folder (it is created when missing)")
    if json_file and os.path.isdir(json_file):
        raise UserError(f"--json {json_file!r} is a folder: give a file name, e.g. {os.path.join(json_file, 'out.json')}")


def main(argv=None) -> int:
    """Entry point of the ``npcosteff`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_paths(args)
        return args.func(args) or 0
    except UserError as e:
        print(f"npcosteff {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"npcosteff {args.command}: interrupted; run the same command again to resume from the last "
              f"checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
