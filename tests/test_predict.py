"""`npcosteff predict`: early exit on a user's own sentences, one at a time. The packaged MiniLM
with fresh (random) exits after every layer stands in for a trained model: with two classes
the entropy of an exit is at most ln 2 = 0.69, so a threshold of 0.7 sends every sentence out
at exit 1 and a threshold of 0 keeps every sentence to the last layer. --explain replays the
one exit rule (`ExitRule`) on every exit's logits and must leave where the live pass left."""

import io
import json
import math
import os
import sys

import numpy as np
import pytest

from npcosteff.cli import build_parser, main
from npcosteff.data.glue import get_task
from npcosteff.early_exit import early_exit_forward
from npcosteff.model import CostEffModel
from npcosteff.predict import DEFAULT_THRESHOLDS, choose_rule, explain_exits, read_examples
from npcosteff.pretrained import default_model_dir
from npcosteff.runs import DONE_FILE, UserError

TOKENIZER = os.path.join(default_model_dir(), "tokenizer.json")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The packaged MiniLM with a fresh 2-way exit after every layer (mean pooler)."""
    folder = tmp_path_factory.mktemp("predict") / "minilm-exits"
    model = CostEffModel.from_pretrained(num_labels=2, exit_start=1, pooler="mean")
    model.save_pretrained(folder, TOKENIZER)
    return folder


def _predict(capsys, *argv):
    """Run `npcosteff predict ARGV`; it must succeed. Returns what it printed."""
    code = main(["predict", *map(str, argv)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Traceback" not in out.err
    return out.out


def _rows(path):
    return json.loads(path.read_text())["rows"]


def _error(capsys, *argv):
    """`npcosteff predict ARGV` must fail: exit code 2, one line on stderr, no traceback."""
    code = main(["predict", *map(str, argv)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("npcosteff predict: error: ")
    return lines[0]


# --------------------------------------------------------------------------- early exit, row by row
def test_a_threshold_above_ln2_leaves_at_exit_1_and_0_at_the_last(model_dir, capsys, tmp_path):
    out = _predict(capsys, "--model", model_dir, "--task", "sst2", "a fine film", "a dull one", "--threshold", "0.7",
                   "--json", tmp_path / "high.json")
    rows = _rows(tmp_path / "high.json")
    assert [r["text"] for r in rows] == ["a fine film", "a dull one"]
    assert [r["exit_layer"] for r in rows] == [1, 1]
    for r in rows:
        assert r["label"] in ("negative", "positive") and 0.5 <= r["confidence"] <= 1 and r["ms"] > 0
    lines = out.splitlines()
    assert any(line.startswith("a fine film") and "1 / 6" in line for line in lines)
    assert any(line.startswith("a dull one") and "1 / 6" in line for line in lines)
    assert "mean exit layer 1.00 of 6" in lines[-2] and "ms" in lines[-2]      # then "written: ..."

    _predict(capsys, "--model", model_dir, "--task", "sst2", "a fine film", "a dull one", "--threshold", "0",
             "--json", tmp_path / "zero.json")
    assert [r["exit_layer"] for r in _rows(tmp_path / "zero.json")] == [6, 6]


def test_the_row_is_the_live_early_exit_pass(model_dir, capsys, tmp_path):
    from npcosteff.tokenizer import Tokenizer

    _predict(capsys, "--model", model_dir, "--task", "sst2", "a gripping, funny film", "--threshold", "0.69",
             "--json", tmp_path / "p.json")
    row, = _rows(tmp_path / "p.json")
    model = CostEffModel.from_pretrained(model_dir)
    batch = Tokenizer.from_pretrained(model_dir)(["a gripping, funny film"], max_length=128)
    live = early_exit_forward(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                              criterion="entropy", threshold=0.69)
    assert row["exit_layer"] == live.exit_layers[0]
    p = np.exp(live.logits[0] - live.logits[0].max())
    p /= p.sum()
    assert row["label"] == ("negative", "positive")[int(p.argmax())]
    assert row["confidence"] == pytest.approx(p.max(), rel=1e-5)


@pytest.mark.parametrize("criterion,threshold", [("entropy", "0.69"), ("entropy", "0.6925"), ("entropy", "0"),
                                                 ("entropy", "0.7"), ("max_prob", "0.52"), ("patience", "1"),
                                                 ("patience", "2")])
def test_explain_lists_every_exit_up_to_the_one_it_left_at_and_agrees(model_dir, capsys, tmp_path, criterion,
                                                                      threshold):
    sentences = ["a fine film", "a dull one", "the plot goes nowhere , but the actors are wonderful", "meh"]
    out = _predict(capsys, "--model", model_dir, "--task", "sst2", *sentences, "--criterion", criterion,
                   "--threshold", threshold, "--explain", "--json", tmp_path / "e.json")
    rows = _rows(tmp_path / "e.json")
    for r in rows:
        steps = r["exits"]
        assert [s["layer"] for s in steps] == list(range(1, r["exit_layer"] + 1))
        assert r["explanation_agrees"] is True
        assert [s["leaves"] for s in steps] == [False] * (len(steps) - 1) + [True]
        assert steps[-1]["label"] == r["label"] and steps[-1]["confidence"] == pytest.approx(r["confidence"])
        for s in steps:
            if criterion == "entropy":
                below = s["entropy"] < float(threshold)
                assert s["reason"].endswith(": leaves here" if below else
                                            ": goes on" if s is not steps[-1] else "the last exit: leaves here")
                assert (" < " if below else " >= ") in s["reason"]
                assert s["entropy"] <= math.log(2) + 1e-6
            elif criterion == "max_prob":
                assert (s["confidence"] > float(threshold)) == (" > " in s["reason"])
    # Printed: the row, then one line per exit under it.
    lines = out.splitlines()
    for r in rows:
        k = next(i for i, line in enumerate(lines) if line.startswith(r["text"][:20]))
        explained = lines[k + 1:k + 1 + r["exit_layer"]]
        assert [line.split(":")[0].strip() for line in explained] == [f"exit {s['layer']}" for s in r["exits"]]
        assert explained[-1].endswith("leaves here")


def test_explain_exits_follows_the_rule():
    spec = get_task("sst2")
    sure, unsure = np.array([[0.0, 5.0]]), np.array([[0.0, 0.1]])        # entropies 0.04 and 0.69
    steps = explain_exits([unsure, sure, unsure], [1, 2, 3], spec, "entropy", 0.3)
    assert [s["layer"] for s in steps] == [1, 2] and [s["leaves"] for s in steps] == [False, True]
    assert steps[0]["reason"].endswith(">= 0.3: goes on") and steps[1]["reason"].endswith("< 0.3: leaves here")
    assert steps[1]["label"] == "positive" and steps[1]["confidence"] == pytest.approx(1 / (1 + math.exp(-5)))
    # Nothing confident enough: the last exit answers.
    steps = explain_exits([unsure, unsure], [5, 6], spec, "entropy", 0.3)
    assert steps[-1]["leaves"] and steps[-1]["reason"].endswith("but it is the last exit: leaves here")
    # Patience 2: the prediction must agree with the exit before twice in a row.
    neg, pos = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    steps = explain_exits([neg, pos, pos, pos, neg], [1, 2, 3, 4, 5], spec, "patience", 2)
    assert [s["layer"] for s in steps] == [1, 2, 3, 4] and steps[-1]["leaves"]
    assert "2 time(s) in a row >= patience 2: leaves here" in steps[-1]["reason"]
    # Regression: a score and no confidence; patience within the tolerance.
    stsb = get_task("stsb")
    steps = explain_exits([np.array([[3.0]]), np.array([[3.05]]), np.array([[3.02]])], [1, 2, 3], stsb, "patience", 2)
    assert [s["leaves"] for s in steps] == [False, False, True]
    assert steps[-1]["label"] == pytest.approx(3.02) and steps[-1]["confidence"] is None


def test_a_model_with_one_exit_runs_to_its_last_layer(capsys, tmp_path):
    from npcosteff.config import CostEffConfig

    config = CostEffConfig(vocab_size=30522, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=12, max_position_embeddings=64, num_labels=2, exit_start=2)
    CostEffModel(config, seed=1).save_pretrained(tmp_path / "one-exit", TOKENIZER)
    out = _predict(capsys, "--model", tmp_path / "one-exit", "--task", "sst2", "a fine film", "--threshold", "0.7",
                   "--explain", "--max-length", "32", "--json", tmp_path / "o.json")
    row, = _rows(tmp_path / "o.json")
    assert row["exit_layer"] == 2 and len(row["exits"]) == 1 and row["exits"][0]["layer"] == 2
    assert "one exit" in out.splitlines()[0]


# --------------------------------------------------------------------------- where sentences come from
def test_sentence_pairs_from_a_file(model_dir, capsys, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a man sings .\ta man is singing .\n\nthe cat sat .\ta dog ran .\n", encoding="utf-8")
    out = _predict(capsys, "--model", model_dir, "--task", "mrpc", "--file", pairs, "--threshold", "0.7",
                   "--json", tmp_path / "p.json")
    rows = _rows(tmp_path / "p.json")
    assert [(r["text"], r["text_pair"]) for r in rows] == [("a man sings .", "a man is singing ."),
                                                          ("the cat sat .", "a dog ran .")]
    assert all(r["label"] in get_task("mrpc").label_names for r in rows)
    assert "a man sings . [SEP] a man is singing ." in out


def test_standard_input_one_sentence_a_line(model_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a fine film\n\na dull one\nthe best of the year\n"))
    _predict(capsys, "--model", model_dir, "--task", "SST-2", "--json", tmp_path / "s.json")
    assert [r["text"] for r in _rows(tmp_path / "s.json")] == ["a fine film", "a dull one", "the best of the year"]


def test_long_texts_are_shortened_in_the_table(model_dir, capsys):
    text = "a film " * 20
    out = _predict(capsys, "--model", model_dir, "--task", "sst2", text.strip())
    row = next(line for line in out.splitlines() if line.startswith("a film"))
    assert row.split("...")[0] == " ".join(text.split())[:47]


def test_the_task_a_stage_or_run_folder_recorded(model_dir, capsys, tmp_path):
    # A finished stage folder whose DONE.json names the model and records the task.
    stage = tmp_path / "recover"
    stage.mkdir()
    (stage / DONE_FILE).write_text(json.dumps({"model_dir": os.path.relpath(model_dir, stage),
                                               "settings": {"recipe": {"data.task": "sst2"}}}))
    out = _predict(capsys, "--model", stage, "a fine film")
    assert "task sst2" in out.splitlines()[0]
    # A model folder inside a run folder: the run's recipe.json.
    run = tmp_path / "run"
    (run / "recover").mkdir(parents=True)
    (run / "recipe.json").write_text(json.dumps({"data": {"task": "sst2"}}))
    os.symlink(model_dir, run / "recover" / "model")
    out = _predict(capsys, "--model", run / "recover" / "model", "a fine film")
    assert "task sst2" in out.splitlines()[0]


def test_defaults_and_help():
    assert choose_rule(get_task("sst2")) == ("entropy", DEFAULT_THRESHOLDS["entropy"]) == ("entropy", 0.3)
    assert choose_rule(get_task("stsb")) == ("patience", 2)
    assert choose_rule(get_task("sst2"), "max_prob") == ("max_prob", 0.9)
    assert choose_rule(get_task("sst2"), "patience", "3") == ("patience", 3)
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    text = " ".join(sub["predict"].format_help().split())
    assert "default 0.3" in text and "default 2" in text and "default 0.9" in text


# --------------------------------------------------------------------------- user errors
def test_missing_model_folder(capsys, tmp_path):
    line = _error(capsys, "--model", tmp_path / "nowhere", "--task", "sst2", "a fine film")
    assert "does not exist" in line and "nowhere" in line


def test_no_task_recorded_asks_for_task(model_dir, capsys):
    line = _error(capsys, "--model", model_dir, "a fine film")
    assert "--task" in line and "no task recorded" in line


def test_a_pair_task_line_without_a_tab(model_dir, capsys, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a man sings .\ta man is singing .\n\nthe cat sat on the mat .\n", encoding="utf-8")
    line = _error(capsys, "--model", model_dir, "--task", "mrpc", "--file", pairs)
    assert f"line 3 of {pairs} has no TAB" in line and "mrpc" in line
    assert "argument 1 has no TAB" in _error(capsys, "--model", model_dir, "--task", "rte", "one text only")


@pytest.mark.parametrize("argv,words", [
    (["--task", "stsb", "--criterion", "entropy", "a\tb"], "needs --criterion patience"),
    (["--task", "sst2", "--threshold", "high", "x"], "--threshold 'high' is not a number"),
    (["--task", "sst2", "--criterion", "max_prob", "--threshold", "2", "x"], "at most 1"),
    (["--task", "sst2", "--criterion", "patience", "--threshold", "1.5", "x"], "whole number >= 1"),
    (["--task", "sst2", "--max-length", "9999", "x"], "--max-length 9999 is outside 3..512"),
    (["--task", "imdb", "x"], "unknown GLUE task 'imdb'"),
    (["--task", "stsb", "a\tb"], "has 2 output(s), task stsb needs 1"),
    (["--task", "sst2", "a\tb"], "argument 1 has a TAB"),
    (["--task", "sst2", "--file", "nope.txt"], "--file 'nope.txt' does not exist"),
    (["--task", "sst2", "--file", "x.txt", "y"], "not both"),
])
def test_bad_input_is_one_line(model_dir, capsys, argv, words):
    assert words in _error(capsys, "--model", model_dir, *argv)


def test_no_sentences_on_a_terminal(model_dir, capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(""))
    assert "give sentences" in _error(capsys, "--model", model_dir, "--task", "sst2")


def test_read_examples_skips_blank_lines_and_counts_them():
    examples = read_examples(["a\tb", "", "c\td"], get_task("mrpc"), "f.txt")
    assert [(x.text, x.text_pair, x.where) for x in examples] == [("a", "b", "line 1 of f.txt"),
                                                                  ("c", "d", "line 3 of f.txt")]
    with pytest.raises(UserError, match="line 2 of f.txt has 2 TABs"):
        read_examples(["a\tb", "a\tb\tc"], get_task("mrpc"), "f.txt")
