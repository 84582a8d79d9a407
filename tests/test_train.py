"""The training loop: resuming gives the same run as not stopping, checkpoints are never
half-written, evaluation scores every exit, and bad settings are refused."""

import json
import os

import numpy as np
import pytest

from npcosteff import weights as W
from npcosteff.config import CostEffConfig
from npcosteff.data.batching import EncodedSplit
from npcosteff.metrics import compute_metrics
from npcosteff.model import CostEffModel
from npcosteff.train import Trainer, TrainingArguments, evaluate


def _config(**kw):
    base = dict(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=20,
                max_position_embeddings=24, num_labels=2, exit_start=1, initializer_range=0.2)
    base.update(kw)
    return CostEffConfig(**base)


def _split(n=40, seed=0, max_length=12):
    rng = np.random.default_rng(seed)
    ids, tts = [], []
    for _ in range(n):
        t = int(rng.integers(3, max_length + 1))
        ids.append(np.concatenate([[2], rng.integers(4, 40, t - 2), [3]]).astype(np.int64))
        tts.append(np.zeros(t, np.int64))
    labels = np.array([int(x[1] % 2) for x in ids])         # learnable: parity of the first word
    return EncodedSplit(ids, tts, labels, max_length)


def _args(**kw):
    base = dict(task="sst2", max_steps=6, batch_size=8, eval_every=3, learning_rate=1e-3, progress=False, seed=3)
    base.update(kw)
    return TrainingArguments(**base)


def test_resume_gives_the_same_run(tmp_path):
    train, dev = _split(), _split(16, seed=1)
    straight = CostEffModel(_config(), dtype=np.float64, seed=0)
    Trainer(straight, _args(), train, dev, output_dir=tmp_path / "a").train()

    interrupted = CostEffModel(_config(), dtype=np.float64, seed=0)
    # Stop after 3 steps (the first checkpoint), then start a fresh process-like trainer that resumes.
    first = Trainer(interrupted, _args(), train, dev, output_dir=tmp_path / "b")
    first.total_steps = 3
    first.train()
    resumed_model = CostEffModel(_config(), dtype=np.float64, seed=123)   # different init: must be overwritten
    resumed = Trainer(resumed_model, _args(), train, dev, output_dir=tmp_path / "b")
    out = resumed.train(resume=True)
    assert out["steps"] == 6
    for n in straight.param_names:
        np.testing.assert_array_equal(straight.params[n], resumed_model.params[n], err_msg=n)
    evals = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl") if '"eval"' in line]
    assert [e["step"] for e in evals] == [3, 6]


def test_training_repeats_bit_for_bit(tmp_path):
    """The same recipe and seed give the same weights, in float32 through the fast kernels too:
    what lets experiments/report.py recognise a retrained teacher by its dev metric."""
    train, dev = _split(), _split(16, seed=1)
    runs = []
    for name in ("a", "b"):
        model = CostEffModel(_config(), dtype=np.float32, seed=0)
        Trainer(model, _args(), train, dev, output_dir=tmp_path / name).train()
        runs.append(model)
    for n in runs[0].param_names:
        np.testing.assert_array_equal(runs[0].params[n], runs[1].params[n], err_msg=n)


def test_training_lowers_the_loss_and_keeps_best(tmp_path):
    train = _split(64)
    model = CostEffModel(_config(), dtype=np.float64, seed=0)
    tr = Trainer(model, _args(max_steps=40, eval_every=20, learning_rate=3e-3), train, train, output_dir=tmp_path)
    tr.train()
    losses = [r["loss"] for r in tr.history if r["type"] == "train"]
    assert losses[-1] < losses[0]
    best = CostEffModel.from_pretrained(tmp_path / "best", dtype=np.float64)
    assert best.config.num_labels == 2
    best_eval = evaluate(best, train, "sst2")
    assert best_eval["average"] == pytest.approx(tr.best)


def test_evaluate_scores_every_exit():
    model = CostEffModel(_config(), dtype=np.float64, seed=4)
    dev = _split(20, seed=5)
    res = evaluate(model, dev, "sst2", batch_size=6)
    assert sorted(res["exits"]) == [1, 2, 3]
    # Direct computation: one padded batch of the whole split, in order.
    T = int(dev.lengths.max())
    ids = np.zeros((len(dev), T), np.int64)
    mask = np.zeros((len(dev), T), np.int64)
    for i, x in enumerate(dev.input_ids):
        ids[i, :len(x)] = x
        mask[i, :len(x)] = 1
    out = model(ids, mask, np.zeros_like(ids))
    for layer, z in zip(out.exit_layers, out.logits):
        expected = compute_metrics("sst2", z.argmax(1), dev.labels)["accuracy"]
        assert res["exits"][layer]["accuracy"] == pytest.approx(expected)
    assert res["average"] == pytest.approx(np.mean([m["accuracy"] for m in res["exits"].values()]))


def test_checkpoint_survives_a_crash_mid_write(tmp_path, monkeypatch):
    model = CostEffModel(_config(), dtype=np.float64, seed=0)
    tr = Trainer(model, _args(), _split(), None, output_dir=tmp_path)
    tr.save_checkpoint(tmp_path / "last")
    before = W.read_safetensors(tmp_path / "last" / "model.safetensors")
    model.params["exits.2.classifier.bias"] += 1.0

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(W, "write_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        tr.save_checkpoint(tmp_path / "last")
    after = W.read_safetensors(tmp_path / "last" / "model.safetensors")
    for n in before:
        np.testing.assert_array_equal(before[n], after[n])
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".")]
    assert leftovers == []                                   # the temporary folder was removed


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown training objective"):
        _args(objective="distill")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        _args(batch_size=0)
    with pytest.raises(ValueError, match="exit_lr_multiplier must be a number > 0"):
        _args(exit_lr_multiplier=0.0)
    model = CostEffModel(_config(), dtype=np.float64)
    with pytest.raises(ValueError, match="distills from a teacher"):
        Trainer(model, _args(objective="pred"), _split(), None)
    plain = CostEffModel(_config(num_labels=0), dtype=np.float64)
    with pytest.raises(ValueError, match="no exits"):
        Trainer(plain, _args(), _split(), None)
