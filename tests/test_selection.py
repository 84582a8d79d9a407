"""Nothing reported is chosen on what it is scored on: checkpoints are chosen on a fixed
held-out part of the training set, never on dev; the teacher has a seed of its own, so that
runs of several seeds share it; the naive-exits baseline can take the TA's pooler."""

import numpy as np
import pytest

from npcosteff.config import CostEffConfig
from npcosteff.data import heldout_split
from npcosteff.data.batching import EncodedSplit
from npcosteff.model import CostEffModel
from npcosteff.data import TaskData, load_task_data
from npcosteff.stages import finetune, train_naive_exits
from npcosteff.recipe import Finetune, Recipe, RecipeError, TeacherAssistant, Training
from npcosteff.runs.folders import STAGE_KEYS
from npcosteff.surgery import attach_exits


def _split(n, seed=0, max_length=12):
    rng = np.random.default_rng(seed)
    ids = [np.concatenate([[2], rng.integers(4, 40, int(rng.integers(1, max_length - 1))), [3]]).astype(np.int64)
           for _ in range(n)]
    labels = np.array([int(x[1] % 2) for x in ids])
    return EncodedSplit(ids, [np.zeros(len(x), np.int64) for x in ids], labels, max_length)


def _key(split):
    return [tuple(x) for x in split.input_ids]


def test_heldout_split_is_fixed_disjoint_and_complete():
    data = _split(57)
    train, held = heldout_split(data)
    assert len(held) == 6 and len(train) == 51                  # round(0.1 * 57), the rest trains
    again_train, again_held = heldout_split(data)
    assert _key(held) == _key(again_held) and _key(train) == _key(again_train)   # the same every time
    everything = sorted(_key(train) + _key(held))
    assert everything == sorted(_key(data))                     # a partition: nothing lost, nothing twice
    # Both parts keep the split's order, and labels follow their examples.
    position = {k: i for i, k in enumerate(_key(data))}
    assert [position[k] for k in _key(held)] == sorted(position[k] for k in _key(held))
    assert [int(x[1] % 2) for x in held.input_ids] == list(held.labels)


def test_heldout_split_is_capped_and_refuses_a_single_example():
    assert len(heldout_split(_split(300), cap=7)[1]) == 7
    with pytest.raises(ValueError, match="at least 2"):
        heldout_split(_split(1))


def test_load_task_data_holds_out_a_tenth_of_train_and_never_touches_dev():
    plain = load_task_data("sst2", "shipped", max_train=120, max_eval=20)
    held = load_task_data("sst2", "shipped", max_train=120, max_eval=20, heldout=True)
    assert plain.heldout is None
    assert len(held.heldout) == 12 and len(held.train) == 108
    assert sorted(_key(held.train) + _key(held.heldout)) == sorted(_key(plain.train))
    assert _key(held.dev) == _key(plain.dev)


def _config(**kw):
    base = dict(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=20,
                max_position_embeddings=24, num_labels=2, exit_start=3, initializer_range=0.2)
    base.update(kw)
    return CostEffConfig(**base)


def _task(heldout):
    return TaskData("sst2", 2, False, _split(48, seed=1), _split(16, seed=2), None, heldout)


def test_checkpoints_are_chosen_on_the_heldout_part_or_the_last(tmp_path, monkeypatch):
    import npcosteff.stages.common as common
    import npcosteff.stages.fine_tuning as stage

    seen = []
    real = stage.Trainer

    class Spy(real):
        def evaluate(self):
            seen.append(self.eval_data)
            return super().evaluate()

    monkeypatch.setattr(stage, "Trainer", Spy)
    monkeypatch.setattr(stage, "num_layers", lambda pretrained: 3)
    monkeypatch.setattr(common.CostEffModel, "from_pretrained",
                        classmethod(lambda cls, path, dtype=np.float32, seed=0, **over:
                                    CostEffModel(_config(**{k: v for k, v in over.items() if k != "problem_type"}),
                                                 dtype=dtype, seed=seed)))
    settings, training = Finetune(max_steps=4, batch_size=8, learning_rate=1e-3), Training(eval_every=2)
    data = _task(_split(10, seed=3))
    finetune(data, settings, training, tmp_path / "held", pretrained="unused", progress=False)
    assert seen and all(s is data.heldout for s in seen)          # every evaluation on the held-out part
    assert (tmp_path / "held" / "best" / "model.safetensors").is_file()

    seen.clear()
    model, _ = finetune(_task(None), settings, training, tmp_path / "last", pretrained="unused", progress=False)
    assert all(s is None for s in seen)                           # nothing to choose on: no evaluation
    assert not (tmp_path / "last" / "best").exists()               # the last checkpoint is the model


def test_the_teacher_has_its_own_seed_and_the_stages_after_it_the_run_seed():
    assert "finetune.seed" in STAGE_KEYS["finetune"] and "training.seed" not in STAGE_KEYS["finetune"]
    for stage in ("train-ta", "slenderize", "recover"):
        assert "training.seed" in STAGE_KEYS[stage] and "finetune.seed" not in STAGE_KEYS[stage]
    for stage in STAGE_KEYS.values():
        assert "data.selection" in stage                           # which examples train depends on it
    with pytest.raises(RecipeError, match="selection"):
        Recipe().replace({"data.selection": "dev"})


def test_attach_exits_with_another_pooler_starts_every_exit_fresh():
    teacher = CostEffModel(_config(pooler="dense"), dtype=np.float64, seed=0)
    same = attach_exits(teacher, exit_start=1, seed=5)
    assert same.config.pooler == "dense"
    np.testing.assert_array_equal(same.params["exits.2.classifier.weight"], teacher.params["exits.2.classifier.weight"])

    mean = attach_exits(teacher, exit_start=1, seed=5, pooler="mean")
    assert mean.config.pooler == "mean" and mean.config.exit_layers == [0, 1, 2]
    assert not any(".pooler." in n for n in mean.param_names)     # the mean pooler has no weights
    assert not np.array_equal(mean.params["exits.2.classifier.weight"], teacher.params["exits.2.classifier.weight"])
    for n in teacher.param_names:                                  # the encoder is the teacher's
        if not n.startswith("exits."):
            np.testing.assert_array_equal(mean.params[n], teacher.params[n], err_msg=n)


def test_naive_exits_train_with_the_tas_pooler_and_steps(tmp_path):
    teacher = CostEffModel(_config(pooler="dense"), dtype=np.float32, seed=0)
    # The TA's settings: 3 epochs of `pred_ta` after a third of them of `hidden`, 4 in all.
    ta = TeacherAssistant(epochs=3.0, batch_size=8, learning_rate=1e-3, pooler="mean")
    naive, result = train_naive_exits(_task(_split(10, seed=3)), teacher, ta, Training(), tmp_path,
                                      progress=False)
    assert naive.config.pooler == "mean" and naive.config.exit_layers == [0, 1, 2]
    steps_per_epoch = 6                                            # 48 examples, batches of 8
    assert result["steps"] == 4 * steps_per_epoch
    capped = TeacherAssistant(epochs=3.0, batch_size=8, max_steps=6, pooler="mean")   # 2 + 6 steps
    _, result = train_naive_exits(_task(None), teacher, capped, Training(), None, progress=False)
    assert result["steps"] == 8
