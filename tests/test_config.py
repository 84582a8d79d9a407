"""CostEffConfig: reading Hugging Face config.json files, round trips, validation, exit layers."""

import json
import os

import pytest

from npcosteff.config import ConfigError, CostEffConfig
from npcosteff.pretrained import default_model_dir


def small(**changes):
    """A valid 4-layer config (d=16, 4 heads of 4, FFN 32) with `changes` applied."""
    fields = dict(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=32, max_position_embeddings=20)
    fields.update(changes)
    return CostEffConfig(**fields)


# --------------------------------------------------------------------------- reading config.json

def test_reads_the_minilm_config():
    c = CostEffConfig.from_json(default_model_dir())               # a folder: its config.json
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers) == (30522, 384, 6)
    assert (c.num_attention_heads, c.intermediate_size, c.max_position_embeddings) == (12, 1536, 512)
    assert (c.type_vocab_size, c.layer_norm_eps, c.pad_token_id) == (2, 1e-12, 0)
    # COST-EFF extras default to the full widths, no factorization and no exits.
    assert c.attention_head_size == 32
    assert c.heads_per_layer == [12] * 6 and c.intermediate_per_layer == [1536] * 6
    assert c.embedding_rank is None and c.num_labels == 0 and c.exit_layers == []
    # Fields npcosteff does not use are kept verbatim.
    assert c.extra["architectures"] == ["BertModel"]
    assert c.extra["_name_or_path"] == "nreimers/MiniLM-L6-H384-uncased"
    assert c.extra["position_embedding_type"] == "absolute"


def test_from_json_accepts_the_file_path_and_overrides():
    path = os.path.join(default_model_dir(), "config.json")
    c = CostEffConfig.from_json(path, num_labels=2, exit_start=5, heads_per_layer=[12, 12, 8, 6, 4, 2])
    assert c.exit_layers == [4, 5]
    assert c.heads_per_layer == [12, 12, 8, 6, 4, 2] and c.attention_width(5) == 64


def test_round_trip_keeps_every_field_and_the_extras(tmp_path):
    c = small(heads_per_layer=[4, 3, 2, 1], intermediate_per_layer=[32, 20, 9, 1], embedding_rank=6,
              num_labels=3, exit_start=2, pooler="dense",
              extra={"architectures": ["BertForSequenceClassification"], "id2label": {"0": "neg", "1": "pos"},
                     "classifier_dropout": None})
    d = c.to_dict()
    assert d["model_type"] == "bert" and d["id2label"] == {"0": "neg", "1": "pos"}
    assert "classifier_dropout" in d and d["classifier_dropout"] is None
    again = CostEffConfig.from_dict(d)
    assert again.to_dict() == d
    for name in ("heads_per_layer", "intermediate_per_layer", "embedding_rank", "num_labels", "exit_start",
                 "pooler", "attention_head_size", "hidden_size", "vocab_size"):
        assert getattr(again, name) == getattr(c, name), name
    # Through a file: JSON text, then the same config back.
    path = tmp_path / "config.json"
    path.write_text(c.to_json_string(), encoding="utf-8")
    from_file = CostEffConfig.from_json(path)
    assert from_file.to_dict() == d
    assert json.loads(c.to_json_string()) == d


def test_hf_null_problem_type_keeps_the_default():
    c = CostEffConfig.from_dict({**small().to_dict(), "problem_type": None})
    assert c.problem_type == "single_label_classification"


def test_replace_returns_a_validated_copy():
    c = small()
    r = c.replace(num_labels=2, exit_start=3)
    assert r.exit_layers == [2, 3] and c.exit_layers == []          # the original is unchanged
    with pytest.raises(ConfigError, match="exit_start 9 is outside 1..4"):
        c.replace(num_labels=2, exit_start=9)


# --------------------------------------------------------------------------- exit layers

@pytest.mark.parametrize("num_labels, exit_start, expected", [
    (0, 1, []),               # a plain encoder has no exits
    (2, 1, [0, 1, 2, 3]),     # an exit after every layer
    (2, 3, [2, 3]),
    (1, 4, [3]),              # exit_start == L: only the last layer
])
def test_exit_layers(num_labels, exit_start, expected):
    assert small(num_labels=num_labels, exit_start=exit_start).exit_layers == expected


def test_attention_width_with_explicit_head_size():
    c = small(attention_head_size=8, heads_per_layer=[2, 2, 1, 1], num_attention_heads=2)
    assert [c.attention_width(i) for i in range(4)] == [16, 16, 8, 8]


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("changes, message", [
    (dict(heads_per_layer=[4, 4, 4]), r"heads_per_layer has 3 entries for 4 layers"),
    (dict(intermediate_per_layer=[32] * 5), r"intermediate_per_layer has 5 entries for 4 layers"),
    (dict(heads_per_layer=[4, 5, 4, 4]), r"heads_per_layer\[1\] = 5 is outside 1..4"),
    (dict(heads_per_layer=[4, 4, 0, 4]), r"heads_per_layer\[2\] = 0 is outside 1..4"),
    (dict(intermediate_per_layer=[32, 32, 32, 33]), r"intermediate_per_layer\[3\] = 33 is outside 1..32"),
    (dict(embedding_rank=0), r"embedding_rank 0 is outside 1..16"),
    (dict(embedding_rank=17), r"embedding_rank 17 is outside 1..16"),
    (dict(num_labels=2, exit_start=0), r"exit_start 0 is outside 1..4"),
    (dict(num_labels=2, exit_start=5), r"exit_start 5 is outside 1..4"),
    (dict(pooler="max"), r"pooler 'max' is not one of \('cls_tanh', 'mean', 'dense'\)"),
    (dict(problem_type="multi_label_classification"), r"problem_type 'multi_label_classification' is not one of"),
    (dict(problem_type="regression", num_labels=2), r"a regression model has num_labels 1, got 2"),
    (dict(num_labels=-1), r"num_labels must be >= 0, got -1"),
    (dict(hidden_size=18), r"hidden_size 18 is not a multiple of num_attention_heads 4"),
    (dict(num_hidden_layers=0, heads_per_layer=[], intermediate_per_layer=[]), r"num_hidden_layers must be >= 1"),
    (dict(hidden_act="relu"), r"hidden_act 'relu' is not supported"),
])
def test_invalid_configs_name_the_problem(changes, message):
    with pytest.raises(ConfigError, match=message):
        small(**changes)


def test_regression_with_one_label_is_valid():
    c = small(problem_type="regression", num_labels=1)
    assert c.is_regression and c.exit_layers == [0, 1, 2, 3]


def test_non_absolute_position_embeddings_are_rejected():
    d = {**small().to_dict(), "position_embedding_type": "relative_key"}
    with pytest.raises(ConfigError, match="only absolute position embeddings"):
        CostEffConfig.from_dict(d)


def test_other_model_types_are_rejected():
    with pytest.raises(ConfigError, match="model_type 'roberta' is not a BERT"):
        CostEffConfig.from_dict({**small().to_dict(), "model_type": "roberta"})


def test_invalid_json_file_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 16,', encoding="utf-8")       # cut off mid-object
    with pytest.raises(ConfigError, match=f"{path} is not valid JSON"):
        CostEffConfig.from_json(path)
    with pytest.raises(ConfigError, match="is not valid JSON"):
        CostEffConfig.from_json(tmp_path)                           # the folder: same file


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no config.json at {tmp_path / 'config.json'}"):
        CostEffConfig.from_json(tmp_path)
