"""The npcosteff command line: every subcommand parses, user errors end with exit code 2 and
one line, the demo runs on the GLUE slices shipped in the package unless told otherwise and
says how to get GLUE when the source it was given has none, and `run --preset quick` goes end
to end on the shipped SST-2 slice (capped to a few examples) and writes the summary, the sweep
and the plot."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from npcosteff import cli
from npcosteff.cli import build_parser, main
from npcosteff.presets import get_preset
from npcosteff.recipe import SECTIONS
from npcosteff.pretrained import resolve_model_dir
from npcosteff.runs import DONE_FILE, LOG_FILE, STAGE_FILE, StageFolder, UserError, run_stage
from npcosteff.surgery import only_final_exit

REPO = Path(__file__).resolve().parents[1]


def _parse(*argv):
    return build_parser().parse_args(list(argv))


# --------------------------------------------------------------------------- parsing
def test_finetune_arguments():
    a = _parse("finetune", "--task", "sst2", "--output", "o", "--glue-dir", "g", "--model", "m", "--epochs", "2",
               "--learning-rate", "3e-5", "--batch-size", "16", "--max-steps", "5", "--max-length", "64",
               "--max-train", "100", "--max-eval", "50", "--seed", "3", "--dtype", "float64", "--preset", "quick",
               "--set", "training.log_every=5", "--no-progress")
    assert (a.func, a.output, a.glue_dir, a.preset, a.set, a.no_progress) == \
        (cli.cmd_finetune, "o", "g", "quick", ["training.log_every=5"], True)
    r = cli._recipe_from_args(a)
    assert (r.task, r.data.model, r.data.max_length, r.data.max_train, r.data.max_eval, r.data.dtype) == \
        ("sst2", "m", 64, 100, 50, "float64")
    # finetune's --seed is the teacher's own (finetune.seed), not the later stages' training.seed
    f = r.finetune
    assert (f.epochs, f.learning_rate, f.batch_size, f.max_steps, f.seed) == (2.0, 3e-5, 16, 5, 3)
    assert r.training.log_every == 5 and r.training.seed == get_preset("quick").training.seed


def test_command_options_are_derived_from_the_recipe_sections():
    # Every field of a stage's section is an option of its command, named after the field.
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command, section in (("finetune", "finetune"), ("train-ta", "ta"), ("slenderize", "slenderize"),
                             ("recover", "recover")):
        dests = {a.dest for a in sub[command]._actions}
        assert {f"{section}.{f.name}" for f in dataclasses.fields(SECTIONS[section])} <= dests, command


def test_finetune_options_become_recipe_settings():
    a = _parse("finetune", "--task", "SST-2", "--output", "o", "--epochs", "2", "--learning-rate", "3e-5",
               "--max-train", "9", "--set", "training.warmup_proportion=0.06")
    r = cli._recipe_from_args(a)
    assert (r.task, r.finetune.epochs, r.finetune.learning_rate, r.data.max_train, r.training.warmup_proportion) == \
        ("sst2", 2.0, 3e-5, 9, 0.06)


def test_train_ta_arguments():
    a = _parse("train-ta", "--task", "mrpc", "--teacher", "t", "--output", "o", "--hidden-fraction", "0.25",
               "--seed", "4")
    assert (a.func, a.teacher) == (cli.cmd_train_ta, "t")
    r = cli._recipe_from_args(a)
    assert (r.ta.hidden_fraction, r.task, r.data.model, r.training.seed) == (0.25, "mrpc", None, 4)


def test_slenderize_arguments():
    a = _parse("slenderize", "--task", "sst2", "--ta", "ta", "--output", "o", "--heads", "4", "--ffn", "384",
               "--rank", "96", "--last-exit-only", "--period", "0.5", "--repr-proportion", "0.7",
               "--lr-restore", "0.2", "--importance-examples", "256", "--teacher", "t")
    assert (a.func, a.ta, a.teacher) == (cli.cmd_slenderize, "ta", "t")
    s = cli._recipe_from_args(a).slenderize
    assert (s.heads, s.ffn, s.rank, s.period, s.repr_proportion, s.lr_restore, s.importance_examples,
            s.last_exit_only) == (4, 384, 96, 0.5, 0.7, 0.2, 256, True)


def test_recover_arguments():
    a = _parse("recover", "--task", "sst2", "--student", "s", "--teacher", "t", "--output", "o",
               "--hidden-epochs", "1", "--pred-epochs", "2", "--hidden-learning-rate", "1e-4",
               "--pred-learning-rate", "5e-5", "--hidden-max-steps", "3", "--pred-max-steps", "4")
    assert (a.func, a.student, a.teacher) == (cli.cmd_recover, "s", "t")
    v = cli._recipe_from_args(a).recover
    assert (v.hidden_epochs, v.pred_epochs, v.hidden_learning_rate, v.pred_learning_rate, v.hidden_max_steps,
            v.pred_max_steps) == (1.0, 2.0, 1e-4, 5e-5, 3, 4)


def test_a_bad_option_value_is_one_line_naming_the_setting(capsys):
    line = _error(capsys, "finetune", "--task", "sst2", "--output", "o", "--epochs", "two")
    assert "finetune.epochs='two': not a valid float" in line


def test_evaluate_and_sweep_arguments():
    a = _parse("evaluate", "--task", "sst2", "--model", "m", "--json", "out.json")
    assert (a.func, a.model, a.json) == (cli.cmd_evaluate, "m", "out.json")
    a = _parse("sweep", "--task", "sst2", "--model", "ta=a", "--model", "b", "--output", "o",
               "--thresholds", "0", "0.2", "--criterion", "max_prob")
    assert (a.func, a.model) == (cli.cmd_sweep, ["ta=a", "b"])
    e = cli._recipe_from_args(a).early_exit
    assert (e.thresholds, e.criterion) == ((0.0, 0.2), "max_prob")
    assert cli._named_models(a.model) == {"ta": "a", "b": "b"}


def test_run_and_demo_arguments():
    a = _parse("run", "--preset", "quick", "--output", "o", "--no-ta", "--last-exit-only", "--no-exits",
               "--task", "mrpc", "--model", "m", "--set", "slenderize.heads=8")
    assert (a.func, a.preset, a.no_ta, a.no_exits, a.no_slenderize) == (cli.cmd_run, "quick", True, True, False)
    r = cli._recipe_from_args(a)
    assert (r.task, r.data.model, r.slenderize.heads, r.slenderize.last_exit_only) == ("mrpc", "m", 8, True)
    a = _parse("run", "--config", "r.toml", "--no-slenderize")
    assert (a.config, a.no_slenderize, a.output) == ("r.toml", True, None)
    a = _parse("demo")
    assert (a.func, a.output, a.glue_dir) == (cli.cmd_demo, cli.DEMO_OUTPUT, None)


def test_required_options_and_unknown_commands_exit_2(capsys):
    for argv in (["finetune", "--output", "o"], ["train-ta", "--task", "sst2", "--output", "o"],
                 ["frobnicate"], [], ["sweep", "--task", "sst2", "--output", "o"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
    assert "error:" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command_line():
    out = subprocess.run([sys.executable, "-m", "npcosteff", "--help"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0
    for command in ("finetune", "train-ta", "slenderize", "recover", "evaluate", "sweep", "run", "demo", "predict"):
        assert command in out.stdout


# --------------------------------------------------------------------------- user errors
def _error(capsys, *argv):
    """Run the command; it must fail with exit code 2 and one line on stderr, no traceback."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"npcosteff {argv[0]}: error: "), err
    return lines[0]


def test_unknown_task(capsys):
    line = _error(capsys, "finetune", "--task", "imdb", "--output", "o")
    assert "unknown GLUE task 'imdb'" in line and "sst2" in line


def test_unknown_preset(capsys):
    line = _error(capsys, "run", "--preset", "huge")
    assert "unknown preset 'huge'" in line and "quick" in line


def test_run_needs_a_recipe(capsys):
    assert "--preset NAME" in _error(capsys, "run")


def test_preset_and_config_exclude_each_other(capsys):
    assert "either --preset or --config" in _error(capsys, "run", "--preset", "quick", "--config", "x.json")


def test_missing_recipe_file(capsys, tmp_path):
    assert "does not exist" in _error(capsys, "run", "--config", str(tmp_path / "nope.toml"))


def test_bad_set_key(capsys):
    assert "unknown recipe key 'hedas'" in _error(capsys, "run", "--preset", "quick", "--set", "hedas=2")
    # a key of the flat recipes of earlier versions is refused with its new name
    assert "did you mean 'slenderize.heads'" in _error(capsys, "run", "--preset", "quick", "--set", "heads=2")


def test_missing_model_folder(capsys, tmp_path):
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", str(tmp_path / "nowhere"))
    assert "does not exist" in line and "nowhere" in line


def test_model_folder_without_config(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", str(tmp_path / "empty"))
    assert "has no config.json" in line


def test_unfinished_stage_folder_is_not_a_model(capsys, tmp_path):
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / STAGE_FILE).write_text("{}")
    line = _error(capsys, "recover", "--task", "sst2", "--student", str(tmp_path / "stage"), "--teacher", "x",
                  "--output", str(tmp_path / "o"))
    assert "has not finished" in line


def test_pretrained_encoder_is_not_a_teacher(capsys, tmp_path):
    from npcosteff.pretrained import default_model_dir

    line = _error(capsys, "train-ta", "--task", "sst2", "--teacher", default_model_dir(), "--output",
                  str(tmp_path / "o"))
    assert "no classifier" in line


def test_targets_that_do_not_fit(capsys, tmp_path):
    line = _error(capsys, "run", "--preset", "quick", "--set", "slenderize.heads=12", "--output", str(tmp_path / "o"))
    assert "targets" in line and "heads" in line
    assert not (tmp_path / "o").exists()                 # refused before anything was written


def test_bert_base_needs_a_model(capsys):
    assert "--model" in _error(capsys, "run", "--preset", "bert-base")


@pytest.mark.parametrize("flags,word", [(("--no-slenderize", "--no-exits"), "--no-exits"),
                                        (("--no-slenderize", "--last-exit-only"), "--last-exit-only"),
                                        (("--no-slenderize", "--no-ta"), "--no-ta")])
def test_contradictory_ablations(capsys, flags, word):
    assert word in _error(capsys, "run", "--preset", "quick", *flags)


def test_missing_glue_folder_is_one_line(capsys, tmp_path):
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", str(_teacher_stub(tmp_path)), "--glue-dir",
                  str(tmp_path / "no-glue"))
    assert "could not load GLUE task sst2" in line and "no-glue" in line
    _assert_how_to(line)


def _teacher_stub(tmp_path):
    """A model folder with a classifier: the packaged MiniLM with a fresh 2-way exit."""
    import numpy as np

    from npcosteff.model import CostEffModel
    from npcosteff.pretrained import default_model_dir

    folder = tmp_path / "stub"
    model = CostEffModel.from_pretrained(None, dtype=np.float32, num_labels=2,
                                         exit_start=6)
    model.save_pretrained(folder, os.path.join(default_model_dir(), "tokenizer.json"))
    return folder


# --------------------------------------------------------------------------- every kind of user error: one line
TOKENIZER_FILE = os.path.join(resolve_model_dir(None, required=("tokenizer.json",)), "tokenizer.json")


def _tiny_model(tmp_path, name="tiny"):
    """A small 2-class model folder over the packaged MiniLM's vocabulary and tokenizer."""
    import numpy as np

    from npcosteff.model import CostEffModel

    folder = tmp_path / name
    config = _tiny_config(vocab_size=30522, max_position_embeddings=64)
    CostEffModel(config, dtype=np.float32, seed=1).save_pretrained(folder, TOKENIZER_FILE)
    return folder


def _sst2_folder(tmp_path, dev_rows, train_rows=(("a fine film", "1"), ("a dull one", "0"))):
    """A GLUE folder in TSV layout: <tmp>/glue/SST-2/train.tsv and dev.tsv, header `sentence<TAB>label`."""
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train_rows), ("dev", dev_rows)):
        (glue / "SST-2" / f"{split}.tsv").write_text(
            "sentence\tlabel\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return glue


def test_a_bad_label_in_a_data_row_names_the_file_and_line(capsys, tmp_path):
    glue = _sst2_folder(tmp_path, [("a fine film", "1"), ("a great one", "7")])
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", str(_tiny_model(tmp_path)), "--glue-dir", str(glue))
    assert f"{glue / 'SST-2' / 'dev.tsv'}, line 3: label '7'" in line and "['0', '1']" in line


def test_a_short_data_row_in_training_data_names_the_file_and_line(capsys, tmp_path):
    glue = _sst2_folder(tmp_path, [("a fine film", "1")], train_rows=[("a fine film", "1"), ("no label",)])
    line = _error(capsys, "finetune", "--task", "sst2", "--glue-dir", str(glue), "--output", str(tmp_path / "t"))
    assert f"{glue / 'SST-2' / 'train.tsv'}, line 3: the row has 1 fields" in line


def test_a_data_file_that_is_not_text(capsys, tmp_path):
    glue = _sst2_folder(tmp_path, [])
    (glue / "SST-2" / "dev.tsv").write_bytes(b"\xff\xfe\x00\x01binary")
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", str(_tiny_model(tmp_path)), "--glue-dir", str(glue))
    assert "dev.tsv, line 1: not UTF-8 text" in line


def test_a_data_file_without_the_label_column(capsys, tmp_path):
    glue = _sst2_folder(tmp_path, [])
    (glue / "SST-2" / "dev.tsv").write_text("sentence\tscore\na fine film\t1\n", encoding="utf-8")
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", str(_tiny_model(tmp_path)), "--glue-dir", str(glue))
    assert "has no column 'label'" in line


def test_a_bad_setting_is_one_line(capsys, tmp_path):
    glue = _sst2_folder(tmp_path, [("a fine film " * 30, "1")])
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", str(_tiny_model(tmp_path)), "--glue-dir", str(glue),
                  "--max-length", "100")
    assert "a dev example of sst2 has 92 tokens, more than the 64 positions" in line and "data.max_length" in line
    assert "data.max_length must be >= 3" in _error(capsys, "evaluate", "--task", "sst2", "--model", str(tmp_path / "tiny"),
                                         "--max-length", "2")
    assert "max_prob" in _error(capsys, "sweep", "--task", "sst2", "--model", str(tmp_path / "tiny"), "--output",
                                str(tmp_path / "sw"), "--criterion", "max_prob", "--thresholds", "1.5")


def test_a_corrupt_safetensors_file(capsys, tmp_path):
    folder = _tiny_model(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) // 2])          # truncated
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", str(folder))
    assert "model.safetensors is not a readable safetensors file" in line


def test_a_config_json_that_is_not_json(capsys, tmp_path):
    folder = _tiny_model(tmp_path)
    (folder / "config.json").write_text('{"hidden_size": 8,')
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", str(folder))
    assert "config.json is not valid JSON" in line
    (folder / "config.json").write_text("[1, 2]")
    assert "not a BERT configuration" in _error(capsys, "evaluate", "--task", "sst2", "--model", str(folder))
    # A pretrained folder too, before any stage folder is written.
    line = _error(capsys, "finetune", "--task", "sst2", "--model", str(folder), "--output", str(tmp_path / "t"))
    assert "pretrained model folder" in line and "not a BERT configuration" in line
    assert not (tmp_path / "t").exists()


def test_a_corrupt_pretrained_checkpoint_is_one_line(capsys, tmp_path):
    glue = _sst2_folder(tmp_path, [("a fine film", "1")])
    folder = _tiny_model(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    line = _error(capsys, "finetune", "--task", "sst2", "--model", str(folder), "--glue-dir", str(glue), "--output",
                  str(tmp_path / "t"), "--max-steps", "1", "--no-progress")
    assert "[finetune] cannot read a file it needs" in line and "model.safetensors" in line


def test_a_tokenizer_json_that_cannot_be_read(capsys, tmp_path):
    folder = _tiny_model(tmp_path)
    (folder / "tokenizer.json").write_text("not a tokenizer")
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", str(folder), "--glue-dir", "shipped")
    assert "tokenizer.json is not a readable tokenizer file" in line


def test_a_recipe_file_that_is_not_toml(capsys, tmp_path):
    (tmp_path / "r.toml").write_text("[training\nseed = ")
    line = _error(capsys, "run", "--config", str(tmp_path / "r.toml"))
    assert "r.toml is not valid TOML" in line
    (tmp_path / "r.json").write_text('{"training": ')
    assert "r.json is not valid JSON" in _error(capsys, "run", "--config", str(tmp_path / "r.json"))


def test_a_corrupt_stage_record(capsys, tmp_path):
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / DONE_FILE).write_text("{")
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", str(tmp_path / "stage"))
    assert "DONE.json is not valid JSON" in line


def test_output_paths_that_are_not_folders_or_files(capsys, tmp_path):
    (tmp_path / "a-file").write_text("")
    line = _error(capsys, "finetune", "--task", "sst2", "--output", str(tmp_path / "a-file"))
    assert "--output" in line and "is a file" in line
    line = _error(capsys, "evaluate", "--task", "sst2", "--model", "m", "--json", str(tmp_path))
    assert "--json" in line and "is a folder" in line


# --------------------------------------------------------------------------- the demo's data
def _assert_how_to(err):
    """The one message of every "no GLUE there" error: both ways to full GLUE, and the slices."""
    assert "Hugging Face hub" in err and "--glue-dir hub" in err
    assert "--glue-dir FOLDER" in err and "NPCOSTEFF_GLUE_DIR" in err
    assert "--glue-dir shipped" in err
    assert "shared" not in err                           # no folder of a development layout
    assert "Traceback" not in err


def _demo_first_line(capsys, monkeypatch, *argv):
    """The demo's first line of output, with the recipe's run itself replaced by a stub."""
    ran = {}
    monkeypatch.setattr(cli, "run_recipe", lambda recipe, output, source, progress: ran.update(
        recipe=recipe, source=source))
    assert main(["demo", *argv]) == 0
    return capsys.readouterr().out.splitlines()[0], ran


def test_demo_runs_on_the_shipped_slices_and_says_so(capsys, monkeypatch, tmp_path):
    from npcosteff.data import SHIPPED_DIR

    monkeypatch.delenv("NPCOSTEFF_GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    line, ran = _demo_first_line(capsys, monkeypatch, "--output", str(tmp_path / "demo"))
    assert line.startswith("npcosteff demo: the demo recipe on SST-2")
    assert "GLUE slices shipped with npcosteff" in line and "3600 training and 872 dev" in line
    assert "--glue-dir" in line and "NPCOSTEFF_GLUE_DIR" in line          # the way to full GLUE
    assert ran["source"] == SHIPPED_DIR and ran["recipe"].name == "demo"
    # --preset quick and the caps make smaller runs
    line, ran = _demo_first_line(capsys, monkeypatch, "--output", str(tmp_path / "d2"), "--preset", "quick",
                                 "--max-train", "100", "--max-eval", "50")
    assert ran["recipe"].name == "quick" and (ran["recipe"].data.max_train, ran["recipe"].data.max_eval) == (100, 50)


def test_demo_takes_the_folder_named_by_the_environment_or_the_option(capsys, monkeypatch, tmp_path):
    from npcosteff.data import SHIPPED_DIR

    monkeypatch.setenv("NPCOSTEFF_GLUE_DIR", SHIPPED_DIR)     # a folder in GLUE's TSV layout
    line, ran = _demo_first_line(capsys, monkeypatch, "--output", str(tmp_path / "demo"))
    assert ran["source"] == SHIPPED_DIR
    monkeypatch.delenv("NPCOSTEFF_GLUE_DIR")
    line, ran = _demo_first_line(capsys, monkeypatch, "--glue-dir", "shipped", "--output", str(tmp_path / "d"))
    assert ran["source"] == SHIPPED_DIR


def test_demo_refuses_more_examples_than_the_slice_holds(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("NPCOSTEFF_GLUE_DIR", raising=False)
    line = _error(capsys, "demo", "--set", "data.max_train=5000", "--output", str(tmp_path / "demo"))
    assert "holds 3600 examples, and 5000 were asked for" in line
    _assert_how_to(line)
    assert not (tmp_path / "demo").exists()


def test_demo_without_a_glue_folder_says_how_to_get_one(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("NPCOSTEFF_GLUE_DIR", str(tmp_path / "no-such-folder"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    line = _error(capsys, "demo", "--output", str(tmp_path / "demo"))
    _assert_how_to(line)
    assert "no-such-folder" in line and "named by $NPCOSTEFF_GLUE_DIR" in line   # the folder it was told to use
    assert not (tmp_path / "demo").exists()


def test_demo_offline_without_a_cache_says_how_to_get_data(tmp_path):
    # The hub, asked for by name, with datasets offline and an empty cache. In a fresh process,
    # because `datasets` reads HF_DATASETS_OFFLINE when it is first imported.
    env = {k: v for k, v in os.environ.items() if k != "NPCOSTEFF_GLUE_DIR"}
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"))
    out = subprocess.run([sys.executable, "-m", "npcosteff", "demo", "--glue-dir", "hub", "--output",
                          str(tmp_path / "demo")], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "from the Hugging Face hub" in lines[0]
    _assert_how_to(lines[0])


# --------------------------------------------------------------------------- end to end
# The quick preset, capped so that it takes well under a minute on 2 cores: 16 training and
# 16 dev examples, one prune (12 -> 11 heads) and one or two steps per stage.
CAPS = ["--max-train", "16", "--max-eval", "16", "--max-length", "24",
        "--set", "slenderize.heads=11", "--set", "slenderize.ffn=1024", "--set", "slenderize.rank=256",
        "--set", "slenderize.importance_examples=16", "--set", "finetune.max_steps=1", "--set", "ta.max_steps=2",
        "--set", "recover.hidden_max_steps=1", "--set", "recover.pred_max_steps=1",
        "--set", "early_exit.thresholds=0,0.3,0.6,0.7", "--set", "ta.pooler=mean", "--set", "finetune.pooler=mean"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "run"
    argv = ["run", "--preset", "quick", "--glue-dir", "shipped", "--output", str(out), "--no-progress", *CAPS]
    return out, argv


def untimed(models):
    """The summary's models without the wall-clock fields (a rerun times the sweep again)."""
    timed = ("ms_per_sample", "measured_speedup")
    return [{**m, "early_exit": {t: {k: v for k, v in cell.items() if k not in timed}
                                 for t, cell in m["early_exit"].items()}} for m in models]


def test_run_quick_end_to_end(quick_run, capsys):
    out, argv = quick_run
    assert main(argv) == 0
    printed = capsys.readouterr().out

    for stage in ("teacher", "ta", "slenderize", "recover"):
        done = json.loads((out / stage / DONE_FILE).read_text())
        assert (out / stage / done["model_dir"] / "config.json").is_file()
        assert (out / stage / done["model_dir"] / "tokenizer.json").is_file()
        assert (out / stage / "log.txt").stat().st_size > 0
        assert (out / stage / "metrics.jsonl").is_file()
        # the recipe's poolers reach the teacher's classifier and every exit after it
        config = json.loads((out / stage / done["model_dir"] / "config.json").read_text())
        assert config["pooler"] == "mean", stage
    for name in ("teacher", "ta", "student"):
        rows = json.loads((out / "sweep" / f"{name}.json").read_text())
        assert [r["threshold"] for r in rows] == [0.0, 0.3, 0.6, 0.7]
        assert (out / "sweep" / f"{name}.csv").is_file()
    assert (out / "sweep" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads((out / "summary.json").read_text())
    models = {m["name"]: m for m in summary["models"]}
    assert list(models) == ["teacher", "ta", "student"]
    assert list(models["teacher"]["dev"]["exits"]) == ["6"]                 # one classifier
    assert list(models["ta"]["dev"]["exits"]) == ["1", "2", "3", "4", "5", "6"]
    widths = models["student"]["widths"]
    assert widths["heads_per_layer"] == [11] * 6 and widths["intermediate_per_layer"] == [1024] * 6
    assert widths["embedding_rank"] == 256
    assert models["student"]["parameters"] < models["ta"]["parameters"]
    assert models["student"]["flops_reduction_vs_teacher"] > 1.0
    assert models["teacher"]["flops_reduction_vs_teacher"] == 1.0
    # Threshold 0.7 > ln 2, the largest entropy of two classes: every sample leaves at exit 1.
    ta_rows = json.loads((out / "sweep" / "ta.json").read_text())
    assert ta_rows[-1]["mean_exit_layer"] == 1.0 and ta_rows[-1]["expected_speedup"] == 6.0
    assert ta_rows[0]["mean_exit_layer"] == 6.0                             # threshold 0 never exits early
    # measured speed-up: the teacher's timed ms per sample over the model's, at each summary threshold
    teacher_ms = json.loads((out / "sweep" / "teacher.json").read_text())[0]["ms_per_sample"]
    for name in ("ta", "student"):
        for t, cell in models[name]["early_exit"].items():
            assert cell["measured_speedup"] == pytest.approx(teacher_ms / cell["ms_per_sample"])
    table = (out / "summary.md").read_text()
    assert "| model | parameters | vs teacher | FLOPs/example | vs teacher | exit 1 |" in table
    assert "| model | entropy threshold | dev accuracy | of teacher's | FLOPs vs teacher | measured speed-up | " \
           "mean exit layer |" in table
    assert "| teacher |" in table and "| ta |" in table and "| student |" in table
    assert "| ta | 0.7 |" in table and "| 1.00 / 6 |" in table                # every sample leaves at exit 1
    assert "| teacher |" in printed and str(out / "sweep" / "sweep.png") in printed
    # The operating points: chosen on the held-out sentences among the sweep's thresholds, reported
    # with the dev sweep's row at that threshold and a measured speed-up.
    points = summary["operating_points"]
    assert set(points) == {"ta", "student"}
    for name, p in points.items():
        assert p["threshold"] in [0.0, 0.3, 0.6, 0.7]
        row = next(r for r in json.loads((out / "sweep" / f"{name}.json").read_text())
                   if r["threshold"] == p["threshold"])
        assert p["dev"] == pytest.approx(row["metric"]) and p["mean_exit_layer"] == pytest.approx(row["mean_exit_layer"])
        assert p["measured_speedup"] > 0 and p["timing"]["rounds"] == 2
        assert p["heldout_examples"] >= 1
    assert "| model | threshold | held-out (of teacher's) |" in table and "dev never enters the choice" in table
    assert summary["headline"].startswith("The teacher scores")

    # A second run finds every stage done and only redoes the sweep and the summary.
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("already done") == 4
    assert untimed(json.loads((out / "summary.json").read_text())["models"]) == untimed(summary["models"])


def finished(quick_run, stage):
    """The quick run's folder and argv, once `stage` of it has finished (else the test is skipped)."""
    out, argv = quick_run
    if not (out / stage / DONE_FILE).is_file():
        pytest.skip("needs the run of test_run_quick_end_to_end")
    return out, argv


def with_output(argv, folder):
    """`argv` with its --output replaced by `folder`."""
    argv = list(argv)
    argv[argv.index("--output") + 1] = str(folder)
    return argv


def test_the_operating_points_never_read_dev_labels(quick_run, monkeypatch):
    # The choice is made on the held-out split: dev's labels scrambled, the same thresholds (the
    # dev rows reported beside them come from the sweep, which is given).
    import dataclasses

    import numpy as np

    from npcosteff.data.batching import EncodedSplit
    from npcosteff.model import CostEffModel
    from npcosteff.presets import recipe_from_dict
    from npcosteff.runs import operating
    from npcosteff.runs.folders import load_data, model_folder

    out, _ = finished(quick_run, "recover")
    recipe = recipe_from_dict(json.loads((out / "recipe.json").read_text()))
    models = {name: CostEffModel.from_pretrained(model_folder(str(out / stage)))
              for name, stage in (("teacher", "teacher"), ("ta", "ta"), ("student", "recover"))}
    curves = {name: json.loads((out / "sweep" / f"{name}.json").read_text()) for name in models}
    data = load_data(recipe, "shipped", model_folder(str(out / "teacher")))
    monkeypatch.setattr(operating, "ROUNDS", 1)                      # the timing is not the point here
    chosen = {n: p["threshold"] for n, p in operating.choose_operating_points(models, data, recipe, curves).items()}
    d = data.dev
    scrambled = EncodedSplit(d.input_ids, d.token_type_ids, 1 - np.asarray(d.labels), d.max_length, d.pad_token_id)
    again = operating.choose_operating_points(models, dataclasses.replace(data, dev=scrambled), recipe, curves)
    assert {n: p["threshold"] for n, p in again.items()} == chosen and set(chosen) == {"ta", "student"}


def test_predict_takes_the_runs_operating_point(quick_run, capsys):
    from npcosteff.predict import predict_sentences, run_operating_point

    out, _ = finished(quick_run, "recover")
    summary = json.loads((out / "summary.json").read_text())
    chosen = summary["operating_points"]["student"]["threshold"]
    assert run_operating_point(out / "recover") == ("entropy", chosen)
    assert run_operating_point(out / "teacher") is None                # one exit: no operating point
    capsys.readouterr()
    predict_sentences(out / "recover", ["a fine film"])
    said = capsys.readouterr().out
    assert f"entropy is below {chosen:g} (the run operating point, chosen on held-out data)" in said
    predict_sentences(out / "recover", ["a fine film"], threshold="0.5")    # told: the given one
    said = capsys.readouterr().out
    assert "below 0.5" in said and "operating point" not in said


def test_rerun_with_other_settings_is_refused(quick_run, capsys):
    out, argv = finished(quick_run, "teacher")
    line = _error(capsys, *argv, "--set", "finetune.learning_rate=0.001")
    assert "finetune.learning_rate" in line and "other settings" in line


def test_reuse_links_the_teacher_and_ta_for_another_width(quick_run, capsys, tmp_path):
    out, argv = finished(quick_run, "ta")
    other = tmp_path / "other-width"
    widths = with_output([a if a != "slenderize.heads=11" else "slenderize.heads=10" for a in argv], other)
    assert main([*widths, "--reuse", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already done") == 2                  # teacher and TA: linked, not retrained
    for stage in ("teacher", "ta"):
        assert (other / stage).is_symlink() and (other / stage).resolve() == (out / stage).resolve()
    student = json.loads((other / "summary.json").read_text())["models"][-1]
    assert student["widths"]["heads_per_layer"] == [10] * 6


def test_reuse_refuses_a_teacher_trained_otherwise(quick_run, capsys, tmp_path):
    out, argv = finished(quick_run, "ta")
    line = _error(capsys, *with_output(argv, tmp_path / "other-lr"), "--set", "finetune.learning_rate=0.001", "--reuse", str(out))
    assert "finetune.learning_rate" in line and "other settings" in line


def test_reuse_with_another_seed_links_the_teacher_and_trains_a_new_ta(quick_run, capsys, tmp_path):
    out, argv = finished(quick_run, "ta")
    other = tmp_path / "seed-2"
    assert main([*with_output(argv, other), "--set", "training.seed=2", "--reuse", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (other / "teacher").is_symlink() and (other / "teacher").resolve() == (out / "teacher").resolve()
    assert not (other / "ta").is_symlink() and (other / "ta" / DONE_FILE).is_file()
    assert "[reuse] ta of" in printed and "training.seed: 42 there, 2 now" in printed
    assert printed.count("already done") == 1                  # the teacher only
    first = json.loads((out / "ta" / DONE_FILE).read_text())
    second = json.loads((other / "ta" / DONE_FILE).read_text())
    assert first["settings"]["recipe"]["training.seed"] == 42 and second["settings"]["recipe"]["training.seed"] == 2


def test_reuse_needs_finished_stages(capsys, tmp_path):
    (tmp_path / "src" / "teacher").mkdir(parents=True)
    line = _error(capsys, "run", "--preset", "quick", "--output", str(tmp_path / "new"),
                  "--reuse", str(tmp_path / "src"))
    assert "has not finished" in line and "teacher" in line


def test_evaluate_and_sweep_read_stage_folders(quick_run, capsys, tmp_path):
    out, _ = finished(quick_run, "recover")
    common = ["--task", "sst2", "--glue-dir", "shipped", "--max-eval", "16", "--max-length", "24"]
    assert main(["evaluate", "--model", str(out / "recover"), "--json", str(tmp_path / "e.json"), *common]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "e.json").read_text())
    recorded = json.loads((out / "recover" / DONE_FILE).read_text())
    assert result["dev"] == recorded["dev"]                 # the same model, the same dev examples
    assert "| 6 |" in printed and "parameters" in printed

    assert main(["sweep", "--model", f"ta={out / 'ta'}", "--model", f"student={out / 'recover'}", "--output",
                 str(tmp_path / "sw"), "--thresholds", "0", "0.7", "--no-progress", *common]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "sw" / "sweep.png").is_file() and (tmp_path / "sw" / "student.csv").is_file()
    assert f"plot: {tmp_path / 'sw' / 'sweep.png'}" in printed


def _summary_entry(name, params, flops, exits, layers=6):
    dev = {"exits": {str(l): {"accuracy": a} for l, a in exits.items()}, "average": sum(exits.values()) / len(exits),
           "final": exits[max(exits)], "main_metric": "accuracy"}
    return {"name": name, "folder": f"/runs/{name}", "parameters": params, "encoder_parameters": params - 10,
            "flops_per_sample": flops, "dev": dev, "dev_examples": 100, "mean_tokens": 20.0,
            "widths": {"num_hidden_layers": layers}}


def _sweep_row(t, metric, flops, ms, mean_exit):
    return {"threshold": t, "metric": metric, "flops_per_sample": flops, "ms_per_sample": ms,
            "mean_exit_layer": mean_exit, "expected_speedup": 6 / mean_exit}


def test_summary_is_a_model_table_and_an_operating_point_table():
    from npcosteff.runs import build_summary

    recipe = get_preset("quick").replace({"early_exit.thresholds": (0.0, 0.3, 0.6),
                                          "early_exit.summary_thresholds": (0.3, 0.6)})
    entries = [_summary_entry("teacher", 22_000_000, 600e6, {6: 0.80}),
               _summary_entry("student", 11_000_000, 300e6, {l: 0.5 + 0.05 * l for l in range(1, 7)})]
    curves = {"teacher": [_sweep_row(t, 0.80, 600e6, 10.0, 6.0) for t in (0.0, 0.3, 0.6)],
              "student": [_sweep_row(0.0, 0.80, 300e6, 5.0, 6.0), _sweep_row(0.3, 0.76, 200e6, 4.0, 4.0),
                          _sweep_row(0.6, 0.72, 100e6, 2.0, 2.0)]}
    text, summary = build_summary(entries, recipe, curves)
    lines = text.splitlines()
    assert "| teacher | 22.00M | 1/1.0 | 600.00M | 1/1.0 | - | - | - | - | - | 80.0 | 80.0 |" in lines
    assert "| student | 11.00M | 1/2.0 | 300.00M | 1/2.0 | 55.0 | 60.0 | 65.0 | 70.0 | 75.0 | 80.0 | 67.5 |" in lines
    # One row per model and threshold; a one-exit model leaves at its last layer whatever the threshold: one row.
    assert "| teacher | any (one exit) | 80.0 | 100.0% | 1/1.0 | 1.00x | 6.00 / 6 |" in lines
    assert "| student | 0.3 | 76.0 | 95.0% | 1/3.0 | 2.50x | 4.00 / 6 |" in lines
    assert "| student | 0.6 | 72.0 | 90.0% | 1/6.0 | 5.00x | 2.00 / 6 |" in lines
    assert sum(line.startswith("| teacher |") for line in lines) == 2               # one row in each table
    # summary.json keeps its keys, and adds the shares
    student = summary["models"][1]
    assert set(summary) >= {"task", "main_metric", "criterion", "summary_thresholds", "models", "recipe"}
    assert set(student) >= {"name", "folder", "parameters", "encoder_parameters", "flops_per_sample",
                            "flops_reduction_vs_teacher", "dev", "widths", "early_exit"}
    assert student["parameters_reduction_vs_teacher"] == pytest.approx(2.0)
    cell = student["early_exit"]["0.3"]
    assert {"metric", "expected_speedup", "measured_speedup", "ms_per_sample", "flops_per_sample",
            "flops_reduction_vs_teacher", "mean_exit_layer"} <= set(cell)
    assert cell["measured_speedup"] == pytest.approx(2.5) and cell["score_vs_teacher"] == pytest.approx(0.95)
    assert set(summary["models"][0]["early_exit"]) == {"0.3", "0.6"}


def test_summary_reports_the_operating_points_chosen_on_heldout_data():
    from npcosteff.runs import build_summary

    recipe = get_preset("quick").replace({"early_exit.thresholds": (0.0, 0.3, 0.6),
                                          "early_exit.summary_thresholds": (0.3,)})
    entries = [_summary_entry("teacher", 22_000_000, 600e6, {6: 0.80}),
               _summary_entry("ta", 22_000_000, 610e6, {l: 0.70 + 0.02 * l for l in range(1, 7)}),
               _summary_entry("student", 11_000_000, 300e6, {l: 0.5 + 0.05 * l for l in range(1, 7)})]
    student_rows = [_sweep_row(0.0, 0.80, 300e6, 5.0, 6.0), _sweep_row(0.3, 0.78, 200e6, 4.0, 4.0),
                    _sweep_row(0.6, 0.72, 100e6, 2.0, 2.0)]
    curves = {"teacher": [_sweep_row(t, 0.80, 600e6, 10.0, 6.0) for t in (0.0, 0.3, 0.6)],
              "ta": [_sweep_row(t, 0.79, 600e6, 10.0, 6.0) for t in (0.0, 0.3, 0.6)], "student": student_rows}
    timing = {"teacher_seconds": 1.0, "model_seconds": 0.4, "speedup": 2.5, "rounds": 3}
    point = dict(heldout_teacher=0.9, heldout_examples=50, target=0.97, timing=timing)
    points = {"ta": {**point, "threshold": 0.0, "heldout": 0.88, "reached": True, "dev": curves["ta"][0]},
              "student": {**point, "threshold": 0.3, "heldout": 0.88, "reached": True, "dev": student_rows[1]}}
    text, summary = build_summary(entries, recipe, curves, points, majority=0.509)
    assert "| student | 0.3 | 88.0 (97.8%) | 78.0 | 97.5% | 1/3.0 | 2.50x | 4.00 |" in text.splitlines()
    row = summary["operating_points"]["student"]
    assert row["dev_share_of_teacher"] == pytest.approx(0.975) and row["measured_speedup"] == 2.5
    said = summary["headline"]
    # exits 72-82 against a majority class of 50.9: all more than 10 points above it
    assert "score 72.0 to 82.0, against 50.9 for always answering the most frequent class: every exit" in said
    assert "keeps 97.5% of the teacher's dev score (78.0) with 3.0 times fewer FLOPs" in said
    assert "runs 2.5 times faster, measured" in said and "leaves after 4.0 of 6 layers" in said
    # exits near the majority class are named as having learnt little
    entries[1] = _summary_entry("ta", 22_000_000, 610e6, {l: 0.52 + 0.05 * (l > 3) for l in range(1, 7)})
    _, summary = build_summary(entries, recipe, curves, points, majority=0.509)
    assert "6 of the 6 exits are within 10 points of that, so they have learnt little" in summary["headline"]


def test_choose_threshold_takes_the_cheapest_that_keeps_the_goal():
    import numpy as np

    from npcosteff.operating_point import choose_threshold

    labels = np.array([0, 1, 1, 0])
    right = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])
    wrong = right[:, ::-1]
    half = right.copy()
    half[:2] = right[:2][:, ::-1]                                  # two of four wrong
    layers = np.ones(4, int)
    runs = [(0.0, layers, right, np.full(4, 6.0)), (0.3, layers, right, np.full(4, 4.0)),
            (0.6, layers, half, np.full(4, 1.0))]
    assert choose_threshold("sst2", runs, labels, goal=0.9) == (0.3, 1.0, True)      # 0.6 is cheaper but misses
    assert choose_threshold("sst2", runs, labels, goal=0.5) == (0.6, 0.5, True)
    # None reaches the goal: the best score, the cheaper of equals
    assert choose_threshold("sst2", runs[2:] + [(0.9, layers, wrong, np.full(4, 0.5))], labels, goal=0.9) == \
        (0.6, 0.5, False)


# --------------------------------------------------------------------------- stage folders
def test_stage_folder_records_settings_and_refuses_others(tmp_path):
    from npcosteff.presets import get_preset

    run = tmp_path / "run"
    recipe = get_preset("quick")
    stage = StageFolder("finetune", run / "teacher", recipe, {"pretrained": "/models/minilm"})
    assert stage.finished() is None
    stage.begin()                                                  # writes stage.json
    assert json.loads((run / "teacher" / STAGE_FILE).read_text()) == stage.settings
    # An interrupted stage resumes with the same settings only.
    StageFolder("finetune", run / "teacher", recipe, {"pretrained": "/models/minilm"}).begin()
    other = StageFolder("finetune", run / "teacher", recipe.replace({"finetune.epochs": 2.0}),
                        {"pretrained": "/models/minilm"})
    with pytest.raises(UserError, match=r"unfinished finetune run with other settings "
                                        r"\(finetune.epochs: 1\.0 there, 2\.0 now\)"):
        other.begin()
    # Settings of other stages do not matter to this one.
    StageFolder("finetune", run / "teacher", recipe.replace({"slenderize.heads": 4}),
                {"pretrained": "/models/minilm"}).begin()

    model_dir = run / "teacher" / "best"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"")
    record = stage.finish(str(model_dir), {"dev": {}}, {"result": {"steps": 3}})
    assert record["model_dir"] == "best" and record["result"] == {"steps": 3}
    assert stage.finished()["settings"] == stage.settings
    assert resolve_model_dir(run / "teacher") == str(model_dir)     # a stage folder names its model


def test_stage_inputs_inside_the_run_are_relative(tmp_path):
    from npcosteff.presets import get_preset

    stage = StageFolder("recover", tmp_path / "run" / "recover", get_preset("quick"),
                            {"student": tmp_path / "run" / "slenderize" / "student", "teacher": "/elsewhere/ta"})
    assert stage.settings["inputs"] == {"student": os.path.join("..", "slenderize", "student"),
                                        "teacher": "/elsewhere/ta"}


def _tiny_config(**kw):
    from npcosteff.config import CostEffConfig

    base = dict(vocab_size=30, hidden_size=8, num_hidden_layers=3, num_attention_heads=2, intermediate_size=12,
                max_position_embeddings=16, num_labels=2, exit_start=1)
    return CostEffConfig(**{**base, **kw})


def test_run_stage_resumes_an_interrupted_stage_and_skips_a_finished_one(tmp_path, capsys):
    import numpy as np

    from npcosteff.data.batching import EncodedSplit
    from npcosteff.model import CostEffModel
    from npcosteff.data import TaskData
    from npcosteff.presets import get_preset

    recipe = get_preset("quick")
    model = CostEffModel(_tiny_config(), dtype=np.float32, seed=1)
    rng = np.random.default_rng(0)
    dev = EncodedSplit([rng.integers(1, 30, 5) for _ in range(4)], [np.zeros(5, np.int64) for _ in range(4)],
                       np.array([0, 1, 0, 1]), 8)
    data = TaskData("sst2", 2, False, None, dev)
    folder = tmp_path / "run" / "teacher"
    calls = []

    def train():
        calls.append(len(calls))
        if len(calls) == 1:
            raise KeyboardInterrupt                            # the first attempt is stopped midway
        return model, os.fspath(model.save_pretrained(folder / "best")), {"result": {"steps": 3}}

    def stage(r=recipe):
        return run_stage("finetune", r, data, folder, {"pretrained": "/models/minilm"}, "fine-tuning", train)

    with pytest.raises(KeyboardInterrupt):
        stage()
    assert (folder / STAGE_FILE).is_file() and not (folder / DONE_FILE).exists()
    # An unfinished stage resumes with its own settings only; other settings never reach train().
    with pytest.raises(UserError, match="unfinished finetune run with other settings"):
        stage(recipe.replace({"finetune.epochs": 2.0}))
    assert len(calls) == 1
    trained, record = stage()                                  # resumed: trains again, then DONE.json
    assert len(calls) == 2 and trained is model and trained.folder == str(folder / "best")
    assert json.loads((folder / DONE_FILE).read_text()) == record
    assert record["model_dir"] == "best" and record["result"] == {"steps": 3}
    assert list(record["dev"]["exits"]) == ["1", "2", "3"] and record["parameters"] > 0
    assert "[finetune] sst2: fine-tuning -> " in capsys.readouterr().out

    loaded, again = stage()                                    # finished: skipped, its model loaded
    assert len(calls) == 2 and again == record
    assert loaded is not model and loaded.folder == str(folder / "best")
    np.testing.assert_array_equal(loaded.params["exits.2.classifier.weight"], model.params["exits.2.classifier.weight"])
    assert "[finetune] already done" in capsys.readouterr().out
    assert "already done" in (folder / LOG_FILE).read_text()
    with pytest.raises(UserError, match="finished finetune run with other settings"):
        stage(recipe.replace({"finetune.epochs": 2.0}))
    assert len(calls) == 2


def test_only_final_exit_keeps_the_last_classifier():
    import numpy as np

    from npcosteff.config import CostEffConfig
    from npcosteff.model import CostEffModel

    config = CostEffConfig(vocab_size=30, hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
                           intermediate_size=12, max_position_embeddings=16, num_labels=2, exit_start=1)
    model = CostEffModel(config, dtype=np.float64, seed=1)
    single = only_final_exit(model)
    assert single.config.exit_layers == [2]
    ids = np.random.default_rng(0).integers(0, 30, (3, 5))
    # Same weights, same final exit: the logits agree to rounding (float64, identical arithmetic).
    np.testing.assert_allclose(single(ids).logits[0], model(ids).logits[-1], rtol=0, atol=1e-12)
    assert all(n.startswith("exits.2.") for n in single.param_names if n.startswith("exits."))
