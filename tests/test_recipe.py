"""Recipes: presets hold the settings their docstrings promise, files load from JSON and TOML,
every setting is named section.field, the sections are what the stages take, and every bad
key, type or value is refused with a message that names it."""

import dataclasses
import json
import sys

import pytest

from npcosteff.config import CostEffConfig
from npcosteff.early_exit import DEFAULT_ENTROPY_THRESHOLDS, default_thresholds
from npcosteff.flops import count_parameters
from npcosteff.pretrained import default_model_dir
from npcosteff.presets import PRESETS, get_preset, load_recipe
from npcosteff.recipe import SECTIONS, Recipe, RecipeError, parse_override, setting_names
from npcosteff.train import TrainingArguments, training_arguments


# --------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_recipe_named_after_itself(name):
    recipe = get_preset(name)
    assert recipe.name == name
    assert Recipe.from_dict(recipe.to_dict()) == recipe      # rebuilt from its settings: every check passes
    assert get_preset(name) is not recipe                    # a fresh copy each time: edits do not leak


def test_bert_base_preset_holds_the_papers_settings():
    # docs/method.md, 6, the authors' BERT-base scripts.
    r = get_preset("bert-base")
    assert (r.finetune.batch_size, r.ta.batch_size, r.slenderize.batch_size, r.recover.batch_size) == (32, 32, 32, 32)
    assert r.data.max_length == 128
    assert r.finetune.learning_rate == r.ta.learning_rate == 2e-5
    assert (r.slenderize.learning_rate, r.slenderize.lr_restore) == (1e-5, 0.12)
    assert (r.recover.hidden_learning_rate, r.recover.pred_learning_rate) == (3e-5, 2e-5)
    # The paper's 1/8-of-the-parameters model: 2 heads, FFN 256, rank 128 (FFN 512 would be 1/5.8).
    s = r.slenderize
    assert (s.heads, s.ffn, s.rank) == (2, 256, 128)
    bert_base = CostEffConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, max_position_embeddings=512, num_labels=2, exit_start=12)
    student = bert_base.replace(heads_per_layer=[s.heads] * 12, intermediate_per_layer=[s.ffn] * 12,
                                embedding_rank=s.rank)
    ratio = count_parameters(bert_base)["total"] / count_parameters(student)["total"]
    assert 7.5 < ratio < 8.5, ratio
    assert 0.5 <= s.repr_proportion <= 0.7 and 0.3 <= s.period <= 2.0
    assert (r.training.weight_decay, r.training.warmup_proportion, r.training.max_grad_norm) == (0.01, 0.1, 1.0)


@pytest.mark.parametrize("name", ["mrpc", "sst2", "rte", "cola", "stsb"])
def test_minilm_presets_reach_an_eighth_of_the_parameters(name):
    # The paper's headline student has 1/8 of BERT-base's parameters. MiniLM's word embedding is
    # half of its parameters, so the scaled presets take 2 heads, FFN 128 and rank 32: 1/9.5.
    r = get_preset(name)
    s = r.slenderize
    c = CostEffConfig.from_json(default_model_dir(), num_labels=1 if name == "stsb" else 2)
    student = c.replace(heads_per_layer=[s.heads] * 6, intermediate_per_layer=[s.ffn] * 6, embedding_rank=s.rank)
    ratio = count_parameters(student)["total"] / count_parameters(c)["total"]
    assert ratio <= 1 / 8
    assert s.heads / c.num_attention_heads == 2 / 12
    assert r.ta.pooler == "mean" and r.finetune.pooler == "dense"
    assert s.importance_examples is None or name == "sst2"    # the whole training set but on SST-2
    assert r.task == name


def test_recipe_rejects_an_unknown_pooler():
    with pytest.raises(RecipeError, match="ta.pooler must be one of"):
        Recipe().replace({"ta.pooler": "max"})


def test_exit_lr_multiplier_reaches_the_stages_that_train_exits(monkeypatch):
    # The stages build their trainers' arguments from the shared section; the teacher's
    # fine-tuning trains its one classifier at the stage's rate (plain fine-tuning).
    r = Recipe().replace({"training.exit_lr_multiplier": 10.0})
    assert training_arguments("sst2", r.training, objective="pred").exit_lr_multiplier == 10.0
    import npcosteff.stages.fine_tuning as fine_tuning

    seen = {}

    class Stop(Exception):
        pass

    def spy(model, args, *a, **kw):
        seen["args"] = args
        raise Stop

    monkeypatch.setattr(fine_tuning, "Trainer", spy)
    monkeypatch.setattr(fine_tuning, "num_layers", lambda pretrained: 6)
    from npcosteff.data import load_task_data

    data = load_task_data("sst2", "shipped", max_train=8, max_eval=8, max_length=16)
    with pytest.raises(Stop):
        fine_tuning.finetune(data, r.finetune, r.training, None)
    assert seen["args"].exit_lr_multiplier == 1.0 and seen["args"].seed == r.finetune.seed
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(RecipeError, match="training.exit_lr_multiplier must be a number > 0"):
            Recipe().replace({"training.exit_lr_multiplier": bad})


def test_quick_preset_is_small():
    r = get_preset("quick")
    assert r.task == "sst2" and r.data.max_length <= 64
    assert r.data.max_train <= 512 and r.data.max_eval <= 256
    assert (r.slenderize.heads, r.slenderize.ffn, r.slenderize.rank) == (6, 768, 192)
    assert r.finetune.epochs <= 1 and r.ta.epochs <= 1 and r.recover.hidden_epochs + r.recover.pred_epochs <= 1


def test_unknown_preset_names_the_choices():
    with pytest.raises(RecipeError, match=r"unknown preset 'fast'.*quick, mrpc, sst2, rte, cola, stsb, bert-base"):
        get_preset("fast")


def test_recipe_thresholds_match_the_sweeps_default():
    assert Recipe().early_exit.thresholds == tuple(DEFAULT_ENTROPY_THRESHOLDS)
    assert default_thresholds("entropy") == tuple(DEFAULT_ENTROPY_THRESHOLDS)


# --------------------------------------------------------------------------- one settings path
def test_the_shared_training_section_is_the_trainers_own_settings():
    # Every field of the training section is a field of the trainer's arguments, so a stage
    # passes the section through unchanged (npcosteff.train.training_arguments).
    shared = {f.name for f in dataclasses.fields(SECTIONS["training"])}
    assert shared <= {f.name for f in dataclasses.fields(TrainingArguments)}
    r = Recipe().replace({"training.temperature": 2.0, "training.seed": 7, "training.eval_batch_size": 16})
    args = training_arguments("sst2", r.training, progress=False, objective="hidden", epochs=2.0)
    assert (args.temperature, args.seed, args.eval_batch_size, args.objective, args.epochs, args.progress) == \
        (2.0, 7, 16, "hidden", 2.0, False)


def test_settings_are_named_section_dot_field_everywhere():
    names = setting_names()
    assert len(names) == len(set(names)) and all(n.count(".") == 1 for n in names)
    r = Recipe().replace({"ta.epochs": 2, "slenderize": {"heads": 4}, "use_ta": False})
    assert (r.ta.epochs, r.slenderize.heads, r.use_ta) == (2.0, 4, False)
    assert r.get("ta.epochs") == 2.0 and r.get("use_ta") is False
    d = r.to_dict()
    assert set(d) == {"name", "use_ta", "use_exits", "use_slenderize", *SECTIONS}
    assert d["slenderize"]["heads"] == 4


@pytest.mark.parametrize("old,new", [("ta_epochs", "ta.epochs"), ("heads", "slenderize.heads"),
                                     ("prune_period", "slenderize.period"),
                                     ("prune_learning_rate", "slenderize.learning_rate"),
                                     ("teacher_pooler", "finetune.pooler"),
                                     ("recover_hidden_epochs", "recover.hidden_epochs")])
def test_a_flat_key_of_older_recipes_is_refused_with_its_new_name(old, new):
    with pytest.raises(RecipeError, match=rf"unknown recipe key '{old}' \(did you mean '{new}'\?\)"):
        Recipe().replace({old: 1})


# --------------------------------------------------------------------------- files
def test_json_round_trip(tmp_path):
    recipe = get_preset("quick").replace({"data.task": "mrpc", "data.max_train": 100,
                                          "early_exit.thresholds": (0.0, 0.2), "use_ta": False})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe.to_dict()))
    assert load_recipe(path) == recipe


def test_toml_with_a_preset_base_and_overrides(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('preset = "quick"\nuse_exits = false\n[data]\ntask = "MRPC"\nmax_train = 100\n'
                    '[early_exit]\nthresholds = [0.0, 0.25, 0.5]\n[slenderize]\nlearning_rate = 3\n')
    r = load_recipe(path)
    quick = get_preset("quick")
    assert r.task == "mrpc"                              # aliases are normalized
    assert (r.data.max_train, r.early_exit.thresholds, r.use_exits) == (100, (0.0, 0.25, 0.5), False)
    assert r.slenderize.learning_rate == 3.0 and isinstance(r.slenderize.learning_rate, float)   # int for float
    assert r.name == "mine"                              # named after the file
    assert (r.slenderize.heads, r.data.max_length) == (quick.slenderize.heads, quick.data.max_length)


def test_a_file_may_name_settings_section_dot_field(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"preset": "quick", "ta.epochs": 0.5, "data": {"max_train": 64}}')
    r = load_recipe(path)
    assert (r.ta.epochs, r.data.max_train) == (0.5, 64)


def test_toml_without_tomllib_asks_for_tomli_or_json(tmp_path, monkeypatch):
    path = tmp_path / "r.toml"
    path.write_text('[data]\ntask = "sst2"\n')
    monkeypatch.setitem(sys.modules, "tomllib", None)    # as on Python 3.10
    monkeypatch.setitem(sys.modules, "tomli", None)      # and tomli not installed
    with pytest.raises(RecipeError, match=r"pip install tomli.*JSON"):
        load_recipe(path)


def test_toml_falls_back_to_tomli(tmp_path, monkeypatch):
    import tomllib                                       # Python 3.11's module stands in for tomli

    path = tmp_path / "r.toml"
    path.write_text('[data]\ntask = "mrpc"\n')
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", tomllib)
    assert load_recipe(path).task == "mrpc"


@pytest.mark.parametrize("ext,text", [(".json", '{"slenderize": {"hedas": 3}}'),
                                      (".toml", '[slenderize]\nhedas = 3\n')])
def test_unknown_key_in_a_file_is_named(tmp_path, ext, text):
    path = tmp_path / f"r{ext}"
    path.write_text(text)
    with pytest.raises(RecipeError, match=r"unknown recipe key 'slenderize.hedas' \(did you mean 'slenderize.heads'\?\)"):
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
    (tmp_path / "s.json").write_text('{"ta": 3}')
    with pytest.raises(RecipeError, match="ta must be a table of its settings"):
        load_recipe(tmp_path / "s.json")


# --------------------------------------------------------------------------- checks
@pytest.mark.parametrize("changes,message", [
    ({"slenderize.heads": "3"}, r"slenderize.heads must be an integer, got '3'"),
    ({"slenderize.heads": True}, r"slenderize.heads must be an integer"),
    ({"data.max_train": 1.5}, r"data.max_train must be an integer"),
    ({"use_ta": "no"}, r"use_ta must be true or false"),
    ({"early_exit.thresholds": ["a"]}, r"early_exit.thresholds must be a list of numbers"),
    ({"data.task": None}, r"data.task cannot be null"),
    ({"data.task": "imdb"}, r"unknown GLUE task 'imdb'"),
    ({"slenderize.heads": 0}, r"slenderize.heads must be >= 1, got 0"),
    ({"data.max_eval": -5}, r"data.max_eval must be >= 1"),
    ({"data.max_length": 2}, r"data.max_length must be >= 3"),
    ({"finetune.epochs": 0.0}, r"finetune.epochs must be a number > 0"),
    ({"slenderize.learning_rate": float("nan")}, r"slenderize.learning_rate must be a number >= 0"),
    ({"slenderize.repr_proportion": 1.5}, r"slenderize.repr_proportion must lie in \[0, 1\]"),
    ({"ta.hidden_fraction": 1.0}, r"ta.hidden_fraction must lie strictly between 0 and 1"),
    ({"data.dtype": "float16"}, r"data.dtype must be one of \('float32', 'float64'\)"),
    ({"data.selection": "dev"}, r"data.selection must be one of \('heldout', 'last'\)"),
    ({"training.gradient_equilibrium": "on"}, r"training.gradient_equilibrium must be one of"),
    ({"early_exit.criterion": "margin"}, r"early_exit.criterion must be one of"),
    ({"early_exit.thresholds": ()}, r"thresholds is empty"),
    ({"early_exit.thresholds": (0.1, -0.2)}, r"thresholds must be finite and >= 0, got -0.2"),
    ({"early_exit.criterion": "max_prob", "early_exit.thresholds": (0.9, 1.5)}, r"max_prob thresholds are probabilities"),
    ({"early_exit.criterion": "patience", "early_exit.thresholds": (1, 2.5)}, r"patience thresholds must be integers"),
    ({"early_exit.summary_thresholds": (0.15,)}, r"summary_thresholds \[0.15\] are not among the sweep's thresholds"),
    ({"data.task": "stsb"}, r"stsb is a regression task: early exit needs early_exit.criterion = 'patience'"),
    ({"colour": 1}, r"unknown recipe key 'colour'"),
])
def test_bad_values_are_refused_by_name(changes, message):
    with pytest.raises(RecipeError, match=message):
        Recipe().replace(changes)


def test_a_regression_task_runs_with_patience():
    r = Recipe().replace({"data.task": "STS-B", "early_exit.criterion": "patience",
                          "early_exit.thresholds": (1, 2, 3)})
    assert r.task == "stsb"


def test_summary_thresholds_default_to_three_spread_over_the_sweep():
    def shown(**early_exit):
        return Recipe().replace({"early_exit": early_exit}).early_exit.summary_threshold_values()

    assert shown() == (0.1, 0.3, 0.5)                    # of 0, .05, .1, .2, .3, .4, .5, .6, .7
    assert shown(criterion="patience", thresholds=(1, 2, 3, 4, 5)) == (2, 3, 4)
    assert shown(thresholds=(0.2,)) == (0.2,)
    assert shown(summary_thresholds=(0.05,)) == (0.05,)


# --------------------------------------------------------------------------- command-line overrides
@pytest.mark.parametrize("text,expected", [
    ("slenderize.heads=4", ("slenderize.heads", 4)),
    ("slenderize.ffn=none", ("slenderize.ffn", None)),
    ("slenderize.rank = NULL", ("slenderize.rank", None)),
    ("slenderize.period=0.25", ("slenderize.period", 0.25)),
    ("use_ta=false", ("use_ta", False)),
    ("slenderize.last_exit_only=yes", ("slenderize.last_exit_only", True)),
    ("early_exit.thresholds=0,0.1,0.3", ("early_exit.thresholds", (0.0, 0.1, 0.3))),
    ("data.task=MRPC", ("data.task", "MRPC")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text,message", [
    ("slenderize.heads", r"expected KEY=VALUE"),
    ("slenderize.hedas=3", r"unknown recipe key 'slenderize.hedas'"),
    ("slenderize.heads=three", r"slenderize.heads='three': not a valid int"),
    ("use_ta=maybe", r"use_ta='maybe': not a valid bool"),
])
def test_parse_override_errors(text, message):
    with pytest.raises(RecipeError, match=message):
        parse_override(text)


def test_to_dict_is_plain_json():
    d = get_preset("sst2").to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {f.name for f in dataclasses.fields(Recipe)}
