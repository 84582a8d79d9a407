"""Early exit on your own sentences: the label, the exit each one leaves at, and why
(docs/method.md, 7). What ``npcosteff predict`` runs (`predict_sentences`).

Each example goes through `npcosteff.early_exit.early_exit_forward` alone (batch 1), on the model
packed for inference once (`npcosteff.packed_model.pack`), timed:
it leaves at the first exit whose prediction is confident enough under the criterion, or at
the last layer. `explain_exits` says why: it runs the model's full forward pass (every exit's
logits) and asks the same rule, `npcosteff.early_exit.ExitRule`, exit after exit, up to the
exit where the sample leaves; the live pass and the replay must agree (`predict_example`
records whether they do)::

    model = load_model("runs/quick/recover", np.float32, task_spec=get_task("sst2"))   # npcosteff.runs
    tok = load_tokenizer(model.folder)
    examples = read_examples(["a fine film"], get_task("sst2"))
    rows = [predict_example(model, tok, x, get_task("sst2"), "entropy", 0.3, explain=True) for x in examples]
    print(format_rows(rows, model.config.num_hidden_layers, "entropy", 0.3))
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from .early_exit import CRITERIA, ExitRule, early_exit_forward
from .packed_model import pack
from .losses import entropy as exit_entropy
from .losses import log_softmax
from .pretrained import DONE_FILE
from .runs.folders import RECIPE_FILE, UserError, console, load_model, load_tokenizer, model_folder, recorded_task, \
    write_json

__all__ = ["DEFAULT_THRESHOLDS", "REGRESSION_DEFAULT", "Example", "choose_rule", "read_examples", "predict_task",
           "read_input", "predict_example", "explain_exits", "format_rows", "rule_words", "predict_sentences",
           "TEXT_WIDTH"]

# The thresholds `npcosteff predict` uses when none is given, per criterion.
DEFAULT_THRESHOLDS = {"entropy": 0.3, "max_prob": 0.9, "patience": 2}
# Regression tasks (STS-B) have no class probabilities: patience, 2 exits in a row.
REGRESSION_DEFAULT = ("patience", 2)
TEXT_WIDTH = 50          # the table shows the first 50 characters of a text


@dataclass
class Example:
    """One example to predict: its text (and second text for a pair task) and where it came from."""
    text: str
    text_pair: Optional[str]
    where: str                  # "line 3 of reviews.txt", "argument 2", ...


# --------------------------------------------------------------------------- settings and input
def choose_rule(spec, criterion=None, threshold=None) -> tuple:
    """(criterion, threshold) for task `spec`: the defaults filled in and the values checked.

    Classification: entropy at 0.3 unless told (max_prob: 0.9; patience: 2). Regression:
    patience 2; entropy and max_prob need class probabilities and are refused."""
    if criterion is None:
        criterion = REGRESSION_DEFAULT[0] if spec.is_regression else "entropy"
    if criterion not in CRITERIA:
        raise UserError(f"--criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")
    if spec.is_regression and criterion != "patience":
        raise UserError(f"task {spec.name} is a regression task: its exits give a score, not class probabilities, "
                        f"so early exit needs --criterion patience (not {criterion})")
    if threshold is None:
        return criterion, DEFAULT_THRESHOLDS[criterion]
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise UserError(f"--threshold {threshold!r} is not a number") from None
    if criterion == "patience":
        if not value.is_integer() or value < 1:
            raise UserError(f"--threshold {threshold} with --criterion patience is the number of exits in a row that "
                            f"must agree: a whole number >= 1")
        return criterion, int(value)
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--threshold {threshold} must be a finite number >= 0")
    if criterion == "max_prob" and value > 1:
        raise UserError(f"--threshold {threshold} with --criterion max_prob is a probability: at most 1")
    return criterion, value


def read_examples(lines: Iterable, spec, source: Optional[str] = None) -> list:
    """Examples from texts: `lines` are the lines of `source` (a file, "standard input"), or
    the command's arguments when `source` is None. A pair task takes two texts separated by
    a TAB; a one-sentence task takes no TAB. Blank lines are skipped. Errors name the line."""
    examples = []
    for n, raw in enumerate(lines, start=1):
        text = raw.rstrip("\r\n")
        where = f"argument {n}" if source is None else f"line {n} of {source}"
        if not text.strip():
            if source is None:
                raise UserError(f"{where} is empty: give a sentence")
            continue
        fields = text.split("\t")
        if spec.is_pair:
            if len(fields) == 1:
                raise UserError(f"{where} has no TAB: task {spec.name} takes sentence pairs, the two texts "
                                f"separated by a TAB")
            if len(fields) > 2:
                raise UserError(f"{where} has {len(fields) - 1} TABs: a pair of task {spec.name} is two texts "
                                f"separated by one TAB")
            if not fields[0].strip() or not fields[1].strip():
                raise UserError(f"{where}: the {'first' if not fields[0].strip() else 'second'} text of the pair "
                                f"is empty")
            examples.append(Example(fields[0].strip(), fields[1].strip(), where))
        else:
            if len(fields) > 1:
                raise UserError(f"{where} has a TAB: task {spec.name} takes one sentence per "
                                f"{'line' if source is not None else 'argument'} (a TAB separates the two texts of "
                                f"a pair task such as mrpc)")
            examples.append(Example(text.strip(), None, where))
    return examples


def predict_task(path, task=None):
    """The TaskSpec of `task`, else of the task the folders of model or stage folder `path`
    recorded (`npcosteff.runs.folders.recorded_task`); a UserError naming --task when none did."""
    from .data.glue import get_task

    task = task or recorded_task(path)
    if task is None:
        raise UserError(f"no task recorded for {model_folder(path)!r} (no stage {DONE_FILE} or run {RECIPE_FILE} names "
                        f"one): give --task, e.g. --task sst2")
    try:
        return get_task(task)
    except ValueError as e:
        raise UserError(str(e)) from None


def read_input(spec, sentences=(), file=None, stdin=None) -> list:
    """The examples: `sentences` (the command's arguments), else the lines of `file`, else the
    lines of `stdin` (default: standard input) when it is not a terminal."""
    if sentences and file:
        raise UserError("give sentences as arguments or --file F, not both")
    if sentences:
        return read_examples(sentences, spec)
    if file:
        try:
            with open(file, encoding="utf-8-sig") as f:
                return read_examples(f.read().splitlines(), spec, file)
        except FileNotFoundError:
            raise UserError(f"--file {file!r} does not exist") from None
        except UnicodeDecodeError as e:
            raise UserError(f"--file {file!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise UserError(f"--file {file!r} cannot be read: {e.strerror or e}") from None
    stdin = sys.stdin if stdin is None else stdin
    if stdin is None or stdin.isatty():
        raise UserError("give sentences: as arguments, with --file F (one per line), or on standard input")
    return read_examples(stdin.read().splitlines(), spec, "standard input")


# --------------------------------------------------------------------------- one example
def _probabilities(z: np.ndarray) -> np.ndarray:
    """z (1, C) -> softmax (C,) in float64."""
    return np.exp(log_softmax(np.asarray(z, dtype=np.float64)))[0]


def _prediction(z: np.ndarray, spec) -> tuple:
    """(label, confidence) of one exit's logits z (1, C): the label name and its softmax
    probability; regression: the score and None."""
    if spec.is_regression:
        return float(z[0, 0]), None
    p = _probabilities(z)
    k = int(p.argmax())
    return spec.label_names[k], float(p[k])


def explain_exits(logits: Iterable, exit_layers: Iterable, spec, criterion, threshold,
                  regression_tolerance=0.1) -> list:
    """Why a sample leaves where it does: `ExitRule` asked at each exit, shallowest first.

    `logits`: each exit's logits (1, C) for one sample (the model's full forward pass),
    `exit_layers` their 1-based layers. Returns one dict per exit up to and including the one
    where the sample leaves: layer, label, confidence, entropy (None for regression),
    ``leaves`` and ``reason``, the rule's decision in words."""
    rule = ExitRule(criterion, threshold if criterion == "patience" else None, spec.is_regression,
                    regression_tolerance)
    logits, exit_layers = list(logits), list(exit_layers)
    steps, previous, streak = [], None, 0
    for k, (z, layer) in enumerate(zip(logits, exit_layers)):
        z = np.asarray(z)[:1]
        leaves = bool(rule.leave(z, None if criterion == "patience" else threshold)[0])
        label, confidence = _prediction(z, spec)
        ent = None if spec.is_regression else float(rule.entropy[0] if criterion == "entropy" else exit_entropy(z)[0])
        if criterion == "entropy":
            reason = f"entropy {ent:.3f} {'<' if leaves else '>='} {threshold:g}"
        elif criterion == "max_prob":
            reason = f"confidence {confidence:.3f} {'>' if leaves else '<='} {threshold:g}"
        else:
            # The count of agreeing exits in a row, for the words only: the decision is the rule's.
            same = previous is not None and (abs(label - previous) < regression_tolerance if spec.is_regression
                                             else label == previous)
            streak = streak + 1 if same else 0
            previous = label
            note = "" if streak else " (a new prediction)" if k else " (the first exit)"
            reason = f"agreed with the exit before {streak} time(s) in a row{note} {'>=' if leaves else '<'} " \
                     f"patience {threshold}"
        last = k == len(logits) - 1
        if leaves:
            reason += ": leaves here"
        elif last:
            reason += ", but it is the last exit: leaves here"
        else:
            reason += ": goes on"
        steps.append({"layer": int(layer), "label": label, "confidence": confidence, "entropy": ent,
                      "leaves": leaves or last, "reason": reason})
        if leaves or last:
            break
    return steps


def predict_example(model, tokenizer, example: Example, spec, criterion, threshold, max_length=128,
                    explain=False, regression_tolerance=0.1) -> dict:
    """Early exit on one example (batch 1), timed; with `explain`, the steps of `explain_exits`.

    Returns the row: text (and text_pair), label, confidence (None for regression),
    exit_layer, num_layers, ms (the early-exit pass alone, tokenization excluded), and with
    `explain` ``exits`` and ``explanation_agrees`` (the replay leaves where the live pass left)."""
    batch = tokenizer([example.text], None if example.text_pair is None else [example.text_pair],
                      max_length=max_length)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    patience = threshold if criterion == "patience" else None
    clock = time.perf_counter()
    result = early_exit_forward(model, ids, mask, types, criterion=criterion,
                                threshold=0.0 if criterion == "patience" else threshold, patience=patience,
                                regression_tolerance=regression_tolerance)
    ms = 1e3 * (time.perf_counter() - clock)
    label, confidence = _prediction(result.logits[:1], spec)
    row = {"text": example.text, "text_pair": example.text_pair, "label": label, "confidence": confidence,
           "exit_layer": int(result.exit_layers[0]), "num_layers": int(result.num_layers), "ms": ms,
           "tokens": int(result.n_tokens[0])}
    if example.text_pair is None:
        del row["text_pair"]
    if explain:
        out = model(ids, mask, types)                  # every exit's logits, (1, C) each
        steps = explain_exits(out.logits, out.exit_layers, spec, criterion, threshold, regression_tolerance)
        row["exits"] = steps
        row["explanation_agrees"] = steps[-1]["layer"] == row["exit_layer"]
    return row


# --------------------------------------------------------------------------- printing
def _short(text: str, width=TEXT_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _fmt_label(label) -> str:
    return f"{label:.2f}" if isinstance(label, float) else str(label)


def rule_words(criterion, threshold) -> str:
    """The early-exit rule in words, for the line above the table."""
    if criterion == "entropy":
        return f"a sentence leaves at the first exit whose entropy is below {threshold:g}"
    if criterion == "max_prob":
        return f"a sentence leaves at the first exit whose top probability is above {threshold:g}"
    return f"a sentence leaves once its prediction has agreed with the exit before {threshold} time(s) in a row"


def format_rows(rows: list, num_layers: int, criterion, threshold) -> str:
    """The rows as a plain table (with each row's exit steps under it when explained), and a
    last line: the mean exit layer and the total time."""
    head = ["text", "label", "confidence", "exit", "ms"]
    cells = []
    for r in rows:
        text = r["text"] if r.get("text_pair") is None else f"{r['text']} [SEP] {r['text_pair']}"
        cells.append([_short(text), _fmt_label(r["label"]),
                      "-" if r["confidence"] is None else f"{r['confidence']:.2f}",
                      f"{r['exit_layer']} / {r['num_layers']}", f"{r['ms']:.1f}"])
    widths = [max(len(c[k]) for c in cells + [head]) for k in range(len(head))]
    right = (False, False, True, True, True)

    def line(c):
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(c, widths, right)).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    for r, c in zip(rows, cells):
        out.append(line(c))
        for s in r.get("exits", []):
            conf = "" if s["confidence"] is None or criterion == "max_prob" else f", confidence {s['confidence']:.2f}"
            ent = "" if s["entropy"] is None or criterion == "entropy" else f", entropy {s['entropy']:.3f}"
            out.append(f"    exit {s['layer']}: {_fmt_label(s['label'])}{conf}{ent}; {s['reason']}")
        if "exits" in r and not r["explanation_agrees"]:
            out.append(f"    (the live pass left at layer {r['exit_layer']}: the two passes differ in rounding "
                       f"at the threshold)")
    mean = float(np.mean([r["exit_layer"] for r in rows]))
    total = sum(r["ms"] for r in rows)
    out.append(f"{len(rows)} example(s): mean exit layer {mean:.2f} of {num_layers} (layer speed-up "
               f"{num_layers / mean:.2f}x) with {criterion} {threshold:g}; total {total:.1f} ms "
               f"({total / len(rows):.1f} ms per example)")
    return "\n".join(out)


# --------------------------------------------------------------------------- the command
RUN_MODELS = {"teacher": "teacher", "ta": "ta", "recover": "student"}    # stage folder -> model in summary.json


def run_operating_point(stage_folder) -> Optional[tuple]:
    """(criterion, threshold) of the operating point that the run a stage folder belongs to chose
    for its model on held-out data (``summary.json`` beside the stage folders, written by
    ``npcosteff run`` and ``npcosteff demo``); None when there is none."""
    stage = os.path.abspath(os.fspath(stage_folder))
    name = RUN_MODELS.get(os.path.basename(stage))
    summary = os.path.join(os.path.dirname(stage), "summary.json")
    if name is None or not os.path.isfile(summary):
        return None
    try:
        with open(summary, encoding="utf-8") as f:
            data = json.load(f)
        point = data.get("operating_points", {}).get(name)
        return None if point is None else (data["criterion"], point["threshold"])
    except (OSError, ValueError, KeyError, AttributeError):      # an unreadable summary: the defaults
        return None


def predict_sentences(model_path, sentences=(), file=None, task=None, criterion=None, threshold=None,
                      max_length=128, explain=False, json_path=None) -> list:
    """``npcosteff predict``: early exit on each example (`read_input`), one at a time; prints
    the table (`format_rows`) and writes the rows to `json_path` when given. Returns the rows."""
    run = os.fspath(model_path)
    if os.path.isfile(os.path.join(run, RECIPE_FILE)) and not os.path.isfile(os.path.join(run, "config.json")):
        stages = [d for d in ("recover", "ta", "teacher") if os.path.isfile(os.path.join(run, d, DONE_FILE))]
        if stages:
            raise UserError(f"{run!r} is a run folder: give one of its stage folders, e.g. --model "
                            f"{os.path.join(run, stages[0])}")
    model_folder(run)                                    # a folder that names no model: say so first
    spec = predict_task(run, task)
    chosen = None
    if criterion is None and threshold is None:
        chosen = run_operating_point(run)
        if chosen is not None:
            criterion, threshold = chosen
    criterion, threshold = choose_rule(spec, criterion, threshold)
    try:
        max_length = int(max_length)
    except ValueError:
        raise UserError(f"--max-length {max_length!r} is not a whole number") from None
    examples = read_input(spec, sentences, file)
    if not examples:
        raise UserError(f"no sentences in {file or 'standard input'}")
    loaded = load_model(run, np.float32, "model", spec)
    model = pack(loaded, copy=False)                     # laid out once for inference (npcosteff/packed_model.py)
    model.folder = loaded.folder
    c = model.config
    if not 3 <= max_length <= c.max_position_embeddings:
        raise UserError(f"--max-length {max_length} is outside 3..{c.max_position_embeddings} (the model's positions)")
    tok = load_tokenizer(model.folder)
    exits = [i + 1 for i in c.exit_layers]
    console.say(f"model {model.folder}: {c.num_hidden_layers} layers, exits after layer(s) "
                f"{', '.join(map(str, exits))}; task {spec.name}; {rule_words(criterion, threshold)}"
                f"{' (the run operating point, chosen on held-out data)' if chosen else ''}"
                f"{' (one exit: every sentence runs to it)' if len(exits) == 1 else ''}")
    # One untimed pass first: the first call of a kernel may compile or warm caches.
    predict_example(model, tok, examples[0], spec, criterion, threshold, max_length)
    rows = [predict_example(model, tok, x, spec, criterion, threshold, max_length, explain=explain)
            for x in examples]
    console.say(format_rows(rows, c.num_hidden_layers, criterion, threshold))
    if json_path:
        write_json(json_path, {"model": model.folder, "task": spec.name, "criterion": criterion,
                               "threshold": threshold, "num_layers": c.num_hidden_layers, "exit_layers": exits,
                               "rows": rows})
        console.say(f"written: {json_path}")
    return rows
