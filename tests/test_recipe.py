"""Recipes: presets hold the settings their docstrings promise, files load from JSON and TOML,
and every bad key, type or value is refused with a message that names it."""

import dataclasses
import json
import sys

import pytest

from npcosteff.config import CostEffConfig
from npcosteff.flops import count_parameters
from npcosteff.pretrained import default_model_dir
from npcosteff.presets import PRESETS, get_preset
from npcosteff.early_exit import DEFAULT_ENTROPY_THRESHOLDS, default_thresholds
from npcosteff.presets import load_recipe
from npcosteff.recipe import Recipe, RecipeError, parse_override


# --------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_recipe_named_after_itself(name):
    recipe = get_preset(name)
    assert recipe.name == name
    recipe.validate()                                   # raises on any setting out of range
    assert get_preset(name) is not recipe               # a fresh copy each time: edits do not leak


def test_bert_base_preset_holds_the_papers_settings():
    # docs/method.md, 6, the authors' BERT-base scripts.
    r = get_preset("bert-base")
    assert (r.finetune_batch_size, r.ta_batch_size, r.prune_batch_size, r.recover_batch_size) == (32, 32, 32, 32)
    assert r.max_length == 128
    assert r.finetune_learning_rate == r.ta_learning_rate == 2e-5
    assert (r.prune_learning_rate, r.lr_restore) == (1e-5, 0.12)
    assert (r.recover_hidden_learning_rate, r.recover_pred_learning_rate) == (3e-5, 2e-5)
    # The paper's 1/8-of-the-parameters model: 2 heads, FFN 256, rank 128 (FFN 512 would be 1/5.8).
    assert (r.heads, r.ffn, r.rank) == (2, 256, 128)
    bert_base = CostEffConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, max_position_embeddings=512, num_labels=2, exit_start=12)
    student = bert_base.replace(heads_per_layer=[r.heads] * 12, intermediate_per_layer=[r.ffn] * 12,
                                embedding_rank=r.rank)
    ratio = count_parameters(bert_base)["total"] / count_parameters(student)["total"]
    assert 7.5 < ratio < 8.5, ratio
    assert 0.5 <= r.repr_proportion <= 0.7 and 0.3 <= r.prune_period <= 2.0
    assert (r.weight_decay, r.warmup_proportion, r.max_grad_norm) == (0.01, 0.1, 1.0)


@pytest.mark.parametrize("name", ["mrpc", "sst2", "rte", "cola", "stsb"])
def test_minilm_presets_reach_an_eighth_of_the_parameters(name):
    # The paper's headline student has 1/8 of BERT-base's parameters. MiniLM's word embedding is
    # half of its parameters, so the scaled presets take 2 heads, FFN 128 and rank 32: 1/9.5.
    from npcosteff.flops import count_parameters

    r = get_preset(name)
    c = CostEffConfig.from_json(default_model_dir(), num_labels=1 if name == "stsb" else 2)
    student = c.replace(heads_per_layer=[r.heads] * 6, intermediate_per_layer=[r.ffn] * 6, embedding_rank=r.rank)
    ratio = count_parameters(student)["total"] / count_parameters(c)["total"]
    assert ratio <= 1 / 8
    assert r.heads / c.num_attention_heads == 2 / 12
    assert r.pooler == "mean" and r.teacher_pooler == "dense"
    assert r.importance_examples is None or name == "sst2"    # the whole training set but on SST-2
    assert r.task == name


def test_recipe_rejects_an_unknown_pooler():
    with pytest.raises(RecipeError, match="pooler"):
        Recipe(pooler="max")


def test_exit_lr_multiplier_reaches_the_stages_that_train_exits():
    r = Recipe(exit_lr_multiplier=10.0)
    assert r.ta_arguments(False).exit_lr_multiplier == 10.0
    assert r.slenderize_arguments(False).training.exit_lr_multiplier == 10.0
    assert r.recover_arguments(False).training.exit_lr_multiplier == 10.0
    assert r.finetune_arguments(False).exit_lr_multiplier == 1.0     # the teacher: plain fine-tuning
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(RecipeError, match="exit_lr_multiplier must be a number > 0"):
            Recipe(exit_lr_multiplier=bad)


def test_quick_preset_is_small():
    r = get_preset("quick")
    assert r.task == "sst2" and r.max_length <= 64
    assert r.max_train <= 512 and r.max_eval <= 256
    assert (r.heads, r.ffn, r.rank) == (6, 768, 192)
    assert r.finetune_epochs <= 1 and r.ta_epochs <= 1 and r.recover_hidden_epochs + r.recover_pred_epochs <= 1


def test_unknown_preset_names_the_choices():
    with pytest.raises(RecipeError, match=r"unknown preset 'fast'.*quick, mrpc, sst2, rte, cola, stsb, bert-base"):
        get_preset("fast")


def test_recipe_thresholds_match_the_sweeps_default():
    assert Recipe().thresholds == tuple(DEFAULT_ENTROPY_THRESHOLDS)
    assert default_thresholds("entropy") == tuple(DEFAULT_ENTROPY_THRESHOLDS)


# --------------------------------------------------------------------------- files
def test_json_round_trip(tmp_path):
    recipe = get_preset("quick").replace(task="mrpc", max_train=100, thresholds=(0.0, 0.2), use_ta=False)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe.to_dict()))
    assert load_recipe(path) == recipe


def test_toml_with_a_preset_base_and_overrides(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('preset = "quick"\ntask = "MRPC"\nmax_train = 100\nthresholds = [0.0, 0.25, 0.5]\n'
                    'use_exits = false\nprune_learning_rate = 3\n')
    r = load_recipe(path)
    quick = get_preset("quick")
    assert r.task == "mrpc"                              # aliases are normalized
    assert (r.max_train, r.thresholds, r.use_exits) == (100, (0.0, 0.25, 0.5), False)
    assert r.prune_learning_rate == 3.0 and isinstance(r.prune_learning_rate, float)   # int accepted for float
    assert r.name == "mine"                              # named after the file
    assert (r.heads, r.ffn, r.rank, r.max_length) == (quick.heads, quick.ffn, quick.rank, quick.max_length)


def test_toml_without_tomllib_asks_for_tomli_or_json(tmp_path, monkeypatch):
    path = tmp_path / "r.toml"
    path.write_text('task = "sst2"\n')
    monkeypatch.setitem(sys.modules, "tomllib", None)    # as on Python 3.10
    monkeypatch.setitem(sys.modules, "tomli", None)      # and tomli not installed
    with pytest.raises(RecipeError, match=r"pip install tomli.*JSON"):
        load_recipe(path)


def test_toml_falls_back_to_tomli(tmp_path, monkeypatch):
    import tomllib                                       # Python 3.11's module stands in for tomli

    path = tmp_path / "r.toml"
    path.write_text('task = "mrpc"\n')
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", tomllib)
    assert load_recipe(path).task == "mrpc"


@pytest.mark.parametrize("ext,text", [(".json", '{"task": "sst2", "hedas": 3}'),
                                      (".toml", 'task = "sst2"\nhedas = 3\n')])
def test_unknown_key_in_a_file_is_named(tmp_path, ext, text):
    path = tmp_path / f"r{ext}"
    path.write_text(text)
    with pytest.raises(RecipeError, match=r"unknown recipe key 'hedas' \(did you mean 'heads'\?\)"):
        load_recipe(path)


def test_bad_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.json")
    (tmp_path / "r.yaml").write_text("task: sst2")
    with pytest.raises(RecipeError, match=r"must end in \.json or \.toml"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "broken.json").write_text("{task")
    with pytest.raises(RecipeError, match="not valid JSON"):
        load_recipe(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(RecipeError, match="must hold a table/object"):
        load_recipe(tmp_path / "list.json")
    (tmp_path / "p.json").write_text('{"preset": "nope"}')
    with pytest.raises(RecipeError, match="unknown preset 'nope'"):
        load_recipe(tmp_path / "p.json")


# --------------------------------------------------------------------------- checks
@pytest.mark.parametrize("changes,message", [
    ({"heads": "3"}, r"heads must be an integer, got '3'"),
    ({"heads": True}, r"heads must be an integer"),
    ({"max_train": 1.5}, r"max_train must be an integer"),
    ({"use_ta": "no"}, r"use_ta must be true or false"),
    ({"thresholds": ["a"]}, r"thresholds must be a list of numbers"),
    ({"task": None}, r"task cannot be null"),
    ({"task": "imdb"}, r"unknown GLUE task 'imdb'"),
    ({"heads": 0}, r"heads must be >= 1, got 0"),
    ({"max_eval": -5}, r"max_eval must be >= 1"),
    ({"max_length": 2}, r"max_length must be >= 3"),
    ({"finetune_epochs": 0.0}, r"finetune_epochs must be a number > 0"),
    ({"prune_learning_rate": float("nan")}, r"prune_learning_rate must be a number >= 0"),
    ({"repr_proportion": 1.5}, r"repr_proportion must lie in \[0, 1\]"),
    ({"ta_hidden_fraction": 1.0}, r"ta_hidden_fraction must lie strictly between 0 and 1"),
    ({"dtype": "float16"}, r"dtype must be 'float32' or 'float64'"),
    ({"criterion": "margin"}, r"unknown early-exit criterion 'margin'"),
    ({"thresholds": ()}, r"thresholds is empty"),
    ({"thresholds": (0.1, -0.2)}, r"thresholds must be finite and >= 0, got -0.2"),
    ({"criterion": "max_prob", "thresholds": (0.9, 1.5)}, r"max_prob thresholds are probabilities"),
    ({"criterion": "patience", "thresholds": (1, 2.5)}, r"patience thresholds must be integers >= 1"),
    ({"summary_thresholds": (0.15,)}, r"summary_thresholds \[0.15\] are not among the sweep's thresholds"),
    ({"task": "stsb"}, r"stsb is a regression task: early exit needs criterion = 'patience'"),
    ({"colour": 1}, r"unknown recipe key 'colour'"),
])
def test_bad_values_are_refused_by_name(changes, message):
    with pytest.raises(RecipeError, match=message):
        Recipe().replace(**changes)


def test_a_regression_task_runs_with_patience():
    r = Recipe(task="STS-B", criterion="patience", thresholds=(1, 2, 3))
    assert r.task == "stsb"


def test_summary_thresholds_default_to_three_spread_over_the_sweep():
    assert Recipe().summary_threshold_values() == (0.1, 0.3, 0.5)      # of 0, .05, .1, .2, .3, .4, .5, .6, .7
    assert Recipe(criterion="patience", thresholds=(1, 2, 3, 4, 5)).summary_threshold_values() == (2, 3, 4)
    assert Recipe(thresholds=(0.2,)).summary_threshold_values() == (0.2,)
    assert Recipe(summary_thresholds=(0.05,)).summary_threshold_values() == (0.05,)


# --------------------------------------------------------------------------- command-line overrides
@pytest.mark.parametrize("text,expected", [
    ("heads=4", ("heads", 4)),
    ("ffn=none", ("ffn", None)),
    ("rank = NULL", ("rank", None)),
    ("prune_period=0.25", ("prune_period", 0.25)),
    ("use_ta=false", ("use_ta", False)),
    ("last_exit_only=yes", ("last_exit_only", True)),
    ("thresholds=0,0.1,0.3", ("thresholds", (0.0, 0.1, 0.3))),
    ("task=MRPC", ("task", "MRPC")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text,message", [
    ("heads", r"expected KEY=VALUE"),
    ("hedas=3", r"unknown recipe key 'hedas'"),
    ("heads=three", r"heads='three': not a valid int"),
    ("use_ta=maybe", r"use_ta='maybe': not a valid bool"),
])
def test_parse_override_errors(text, message):
    with pytest.raises(RecipeError, match=message):
        parse_override(text)


# --------------------------------------------------------------------------- stage arguments
def test_stage_arguments_carry_the_recipe():
    r = get_preset("quick").replace(seed=7, teacher_seed=3, temperature=2.0, last_exit_only=True)
    ft = r.finetune_arguments(progress=False)
    assert (ft.epochs, ft.learning_rate, ft.batch_size, ft.max_steps) == \
        (r.finetune_epochs, r.finetune_learning_rate, r.finetune_batch_size, r.finetune_max_steps)
    # The teacher has its own seed, so that runs of several seeds can share one teacher.
    assert (ft.seed, ft.temperature, ft.progress, ft.task) == (3, 2.0, False, "sst2")
    ta = r.ta_arguments()
    assert (ta.epochs, ta.learning_rate, ta.batch_size, ta.seed) == (r.ta_epochs, r.ta_learning_rate,
                                                                     r.ta_batch_size, 7)
    sl = r.slenderize_arguments()
    assert (sl.heads, sl.ffn, sl.embedding_rank) == (r.heads, r.ffn, r.rank)
    assert (sl.prune_period, sl.repr_proportion, sl.training.learning_rate, sl.lr_restore) == \
        (r.prune_period, r.repr_proportion, r.prune_learning_rate, r.lr_restore)
    assert (sl.importance_examples, sl.last_exit_only, sl.training.batch_size) == (r.importance_examples, True,
                                                                                    r.prune_batch_size)
    assert (sl.training.seed, sl.training.temperature) == (7, 2.0)        # the shared settings, once
    hidden, pred = r.recover_arguments().training_arguments()
    assert (hidden.epochs, hidden.learning_rate, pred.epochs, pred.learning_rate) == \
        (r.recover_hidden_epochs, r.recover_hidden_learning_rate, r.recover_pred_epochs,
         r.recover_pred_learning_rate)


def test_to_dict_is_plain_json():
    d = get_preset("sst2").to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {f.name for f in dataclasses.fields(Recipe)}
