"""Slenderization (docs/method.md, 5): the per-prune schedule of widths, an end-to-end run on a tiny model
that reaches the targets with the right learning rates and stages, resuming, and recovery."""

import dataclasses
import json
import os
from fractions import Fraction

import numpy as np
import pytest

import npcosteff.stages.slenderization as S
from npcosteff.config import CostEffConfig
from npcosteff.data.batching import EncodedSplit
from npcosteff.flops import count_parameters, model_flops
from npcosteff.model import CostEffModel
from npcosteff.data import TaskData
from npcosteff.recipe import Recover, RecipeError, Slenderize, Training
from npcosteff.stages import HISTORY_FILE, prune_schedule, recover, slenderize
from npcosteff.stages.slenderization import period_warmup_steps


def _config(**kw):
    base = dict(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=20,
                max_position_embeddings=24, num_labels=2, exit_start=1, initializer_range=0.2)
    base.update(kw)
    return CostEffConfig(**base)


def _split(n=24, seed=0, max_length=10):
    """Synthetic sentences [CLS] w... [SEP]; the label is the parity of the first word (learnable)."""
    rng = np.random.default_rng(seed)
    ids, types = [], []
    for _ in range(n):
        t = int(rng.integers(3, max_length + 1))
        ids.append(np.concatenate([[2], rng.integers(4, 40, t - 2), [3]]).astype(np.int64))
        types.append(np.zeros(t, np.int64))
    return EncodedSplit(ids, types, np.array([int(x[1] % 2) for x in ids]), max_length)


def _args(**kw):
    """(the slenderize section, the shared training section) of a tiny run."""
    base = dict(heads=1, ffn=8, rank=5, period=1.0, repr_proportion=0.6, importance_examples=16, batch_size=8,
                learning_rate=1e-3)
    training = dict(log_every=1, seed=7)
    own = {f.name for f in dataclasses.fields(Slenderize)}
    for k, v in kw.items():                    # the shared settings go into the training section
        (base if k in own else training)[k] = v
    return Slenderize(**base), Training(**training)


def _data(train, heldout=None):
    """A task's data from synthetic splits (dev is never read by the stages)."""
    return TaskData("sst2", 2, False, train, None, None, heldout)


# --------------------------------------------------------------------------- the schedule
def test_schedule_of_the_spec():
    # H 4 -> 1: max_prunes = 3. FFN 20 -> 8: 20 - 12 t / 3 = 16, 12, 8.
    # Rank 16 -> 5: 16 - 11 t / 3 = 12.33, 8.67, 5 -> 12, 9, 5.
    steps = prune_schedule(_config(), heads=1, ffn=8, embedding_rank=5)
    assert [s.t for s in steps] == [1, 2, 3]
    assert [s.heads_per_layer for s in steps] == [(3, 3, 3), (2, 2, 2), (1, 1, 1)]
    assert [s.intermediate_per_layer for s in steps] == [(16,) * 3, (12,) * 3, (8,) * 3]
    assert [s.embedding_rank for s in steps] == [12, 9, 5]


def _spec_round(x: Fraction) -> int:
    """Round half up, the schedule's rounding."""
    return int((x + Fraction(1, 2)) // 1)


@pytest.mark.parametrize("heads, ffn, rank", [(2, 9, 3), (1, 1, 16), (3, 13, 1), (1, 12, None), (2, None, 7)])
def test_schedule_follows_the_formula_with_uneven_layers(heads, ffn, rank):
    config = _config(heads_per_layer=[4, 3, 4], intermediate_per_layer=[20, 17, 13])
    steps = prune_schedule(config, heads, ffn, rank)
    max_prunes = 4 - heads
    assert len(steps) == max_prunes
    for step in steps:
        t = step.t
        assert step.heads_per_layer == tuple(max(heads, h - t) for h in (4, 3, 4))
        for f0, f in zip((20, 17, 13), step.intermediate_per_layer):
            assert f == (f0 if ffn is None else f0 - _spec_round(Fraction((f0 - ffn) * t, max_prunes)))
        if rank is None or 16 - _spec_round(Fraction((16 - rank) * t, max_prunes)) == 16:
            assert step.embedding_rank is None                 # full rank: E stays a plain lookup
        else:
            assert step.embedding_rank == 16 - _spec_round(Fraction((16 - rank) * t, max_prunes))
    last = steps[-1]
    assert last.heads_per_layer == (heads,) * 3
    assert last.intermediate_per_layer == ((20, 17, 13) if ffn is None else (ffn,) * 3)


def test_schedule_rounds_halves_up():
    # F 20 -> 9 over 2 prunes: 20 - 11/2 = 14.5 -> 14 (5.5 rounds up to 6); Python's round gives 6 too,
    # but 20 -> 11 over 2 prunes: 20 - 9/2 = 15.5 -> 15 (4.5 rounds up to 5, banker's rounding would give 4).
    assert prune_schedule(_config(), 2, 9)[0].intermediate_per_layer == (14,) * 3
    assert prune_schedule(_config(), 2, 11)[0].intermediate_per_layer == (15,) * 3


def test_schedule_from_a_factorized_embedding_starts_at_its_rank():
    steps = prune_schedule(_config(embedding_rank=12), heads=2, embedding_rank=4)
    assert [s.embedding_rank for s in steps] == [8, 4]          # 12 - 8 t / 2
    assert [s.embedding_rank for s in prune_schedule(_config(embedding_rank=12), heads=2)] == [12, 12]


@pytest.mark.parametrize("kw, error, match", [
    (dict(heads=4), ValueError, "no pruning step"),
    (dict(heads=5), ValueError, "heads target 5 is more than the 4 heads"),
    (dict(heads=0), ValueError, "heads target must be >= 1"),
    (dict(heads=2, ffn=21), ValueError, "ffn target 21 is more than the 20 neurons"),
    (dict(heads=2, ffn=0), ValueError, "ffn target must be >= 1"),
    (dict(heads=2, embedding_rank=17), ValueError, r"embedding_rank target 17 is outside 1..16"),
    (dict(heads=2.0), TypeError, "heads target must be an integer"),
])
def test_schedule_refuses_bad_targets(kw, error, match):
    with pytest.raises(error, match=match):
        prune_schedule(_config(), **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(period=0), "slenderize.period must be a number > 0"),
    (dict(repr_proportion=1.5), r"slenderize.repr_proportion must lie in \[0, 1\]"),
    (dict(lr_restore=-0.1), "slenderize.lr_restore must be a number >= 0"),
    (dict(learning_rate=-1.0), "slenderize.learning_rate must be a number >= 0"),
    (dict(importance_examples=0), "slenderize.importance_examples must be >= 1"),
    (dict(batch_size=0), "slenderize.batch_size must be >= 1"),
    (dict(heads=0), "slenderize.heads must be >= 1"),
    (dict(timing="middle"), "slenderize.timing"),
    (dict(importance_hidden_loss="sum"), "slenderize.importance_hidden_loss"),
])
def test_arguments_refuse_bad_values(kw, match):
    with pytest.raises(RecipeError, match=match):
        _args(**kw)


def test_period_warmup_is_at_least_min_warmup_steps():
    settings, training = _args()                                # warmup 10%, at least 10 steps
    assert period_warmup_steps(settings, training, 50) == 10 and period_warmup_steps(settings, training, 500) == 50
    assert period_warmup_steps(settings, training, 4) == 4      # never longer than the period
    assert period_warmup_steps(*_args(min_warmup_steps=0), 33) == 4


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("timing", ["end", "start"])
def test_slenderize_reaches_the_targets_on_the_schedule(tmp_path, timing):
    ta = CostEffModel(_config(), dtype=np.float64, seed=0)
    ta_before = {n: p.copy() for n, p in ta.params.items()}
    train, dev = _split(), _split(12, seed=1)
    args = _args(timing=timing, min_warmup_steps=0)           # warmup ceil(0.1 * 3) = 1 step
    student, history = slenderize(ta, None, _data(train, dev), *args, output_dir=tmp_path, progress=False)

    # The TA (also the teacher) is untouched; the student reached every target.
    for name, p in ta.params.items():
        np.testing.assert_array_equal(p, ta_before[name], err_msg=name)
    assert student.config.heads_per_layer == [1, 1, 1]
    assert student.config.intermediate_per_layer == [8, 8, 8]
    assert student.config.embedding_rank == 5
    assert student.params["embeddings.word_embeddings.weight"].shape == (40, 5)

    schedule = prune_schedule(ta.config, 1, 8, 5)
    assert [r["prune"] for r in history] == [0, 1, 2, 3]
    steps_per_epoch = 3                                          # 24 examples, batches of 8
    for record, step in zip(history[1:], schedule):
        t = step.t
        assert record["heads_per_layer"] == list(step.heads_per_layer)
        assert record["intermediate_per_layer"] == list(step.intermediate_per_layer)
        assert record["embedding_rank"] == step.embedding_rank
        config = _config(heads_per_layer=list(step.heads_per_layer),
                         intermediate_per_layer=list(step.intermediate_per_layer), embedding_rank=step.embedding_rank)
        assert record["parameters"] == count_parameters(config)["total"]
        assert record["flops"] == model_flops(config, 10)
        # One period = prune_period * steps_per_epoch = 3 steps: round(0.6 * 3) = 2 hidden, then 1 pred.
        assert (record["steps"], record["hidden_steps"], record["pred_steps"]) == (steps_per_epoch, 2, 1)
        train_logs = [r for r in record["train"] if r["type"] == "train"]
        assert [(r["step"], r["objective"]) for r in train_logs] == [(1, "hidden"), (2, "hidden"), (3, "pred")]
        # A fresh warmup every period (lr 0 at its first step), peaking at lr * (1 + lr_restore)^k
        # for the student after k prunes: "end" trains the period before prune t (k = t - 1),
        # "start" the one after it (k = t).
        assert record["prune_timing"] == timing
        peak = 1e-3 * 1.12 ** (t - 1 if timing == "end" else t)
        assert record["learning_rate"] == pytest.approx(peak, rel=1e-15)
        assert train_logs[0]["lr"] == 0.0
        assert max(r["lr"] for r in train_logs) == pytest.approx(peak, rel=1e-15)
        assert sorted(record["heldout"]["exits"]) == [1, 2, 3]
        assert len(record["kept_heads"]) == 3
    flops = [r["flops"] for r in history]
    assert all(a > b for a, b in zip(flops, flops[1:]))        # every prune is cheaper
    assert history[-1]["parameters"] < history[0]["parameters"]

    # The latest student and its history are on disk, and reload as they are in memory.
    folder = tmp_path / "student"
    loaded = CostEffModel.from_pretrained(folder, dtype=np.float64)
    assert loaded.config.heads_per_layer == [1, 1, 1] and loaded.config.embedding_rank == 5
    for name in student.param_names:
        np.testing.assert_array_equal(loaded.params[name], student.params[name], err_msg=name)
    with open(folder / HISTORY_FILE, encoding="utf-8") as f:
        assert [r["prune"] for r in json.load(f)] == [0, 1, 2, 3]


def test_slenderize_resumes_after_an_interruption(tmp_path, monkeypatch):
    ta = CostEffModel(_config(), dtype=np.float64, seed=1)
    train, dev = _split(seed=2), _split(8, seed=3)
    args = _args(heads=2, ffn=10, rank=None)
    straight, _ = slenderize(ta, None, _data(train, dev), *args, progress=False)

    real_evaluate, calls = S.evaluate, []

    def interrupted_evaluate(*a, **kw):
        calls.append(1)
        if len(calls) == 3:                                       # TA, prune 1, then stop during prune 2
            raise KeyboardInterrupt
        return real_evaluate(*a, **kw)

    monkeypatch.setattr(S, "evaluate", interrupted_evaluate)
    with pytest.raises(KeyboardInterrupt):
        slenderize(ta, None, _data(train, dev), *args, output_dir=tmp_path, progress=False)
    with open(tmp_path / "student" / HISTORY_FILE, encoding="utf-8") as f:
        assert [r["prune"] for r in json.load(f)] == [0, 1]
    monkeypatch.setattr(S, "evaluate", real_evaluate)
    resumed, history = slenderize(ta, None, _data(train, dev), *args, output_dir=tmp_path, progress=False)
    assert [r["prune"] for r in history] == [0, 1, 2]
    for name in straight.param_names:
        np.testing.assert_array_equal(resumed.params[name], straight.params[name], err_msg=name)
    # A run with other targets refuses to continue from this folder.
    with pytest.raises(ValueError, match="does not follow the schedule"):
        slenderize(ta, None, _data(train, dev), *_args(heads=1, ffn=10, rank=None), output_dir=tmp_path,
                   progress=False)


def test_the_last_exit_switch_reaches_importance(monkeypatch):
    seen = []
    real = S.taylor_importance

    def spy(*a, **kw):
        seen.append(kw["last_exit_only"])
        return real(*a, **kw)

    monkeypatch.setattr(S, "taylor_importance", spy)
    ta = CostEffModel(_config(), dtype=np.float64, seed=2)
    slenderize(ta, None, _data(_split()), *_args(heads=3, last_exit_only=True, rank=None, ffn=None), progress=False)
    assert seen == [True]


def test_slenderize_refuses_a_model_without_exits():
    with pytest.raises(ValueError, match="no exits"):
        slenderize(CostEffModel(_config(num_labels=0), dtype=np.float64), None, _data(_split()), *_args())


# --------------------------------------------------------------------------- recovery
def test_recover_keeps_the_best_averaged_checkpoint(tmp_path):
    ta = CostEffModel(_config(), dtype=np.float64, seed=3)
    student, _ = slenderize(ta, None, _data(_split()), *_args(heads=2, ffn=10, rank=None), progress=False)
    train, dev = _split(seed=4), _split(12, seed=5)
    args = (Recover(hidden_max_steps=3, pred_max_steps=6, hidden_learning_rate=1e-3, pred_learning_rate=1e-3,
                    batch_size=8), Training(eval_every=2))
    best, result = recover(student.copy(), ta, _data(train, dev), *args, output_dir=tmp_path, progress=False)
    assert result["hidden"]["steps"] == 3 and result["pred"]["steps"] == 6
    assert result["heldout"]["average"] == pytest.approx(result["best_average"], abs=1e-12)
    assert best.config.heads_per_layer == [2, 2, 2]
    assert os.path.isfile(tmp_path / "pred" / "best" / "model.safetensors")
    evals = [r["average"] for r in (json.loads(line) for line in open(tmp_path / "pred" / "metrics.jsonl"))
             if r["type"] == "eval"]
    assert len(evals) == 3 and result["best_average"] == max(evals)

    # Without a held-out part the trained student itself comes back.
    trained, result = recover(student.copy(), ta, _data(train), *args, progress=False)
    assert "heldout" not in result and trained.config.heads_per_layer == [2, 2, 2]
