"""Taylor importance (docs/method.md, 4): the per-weight score is |w * sum_batches |grad||, heads and
neurons aggregate it as documented, the last-exit ablation is one switch away, and a
low-scoring head matters less than a high-scoring one."""

import numpy as np
import pytest

from npcosteff.config import CostEffConfig
from npcosteff.data.batching import EncodedSplit
from npcosteff.importance import importance_batches, taylor_importance
from npcosteff.objectives import objective_loss
from npcosteff.model import CostEffModel
from npcosteff.prune import masks_from_keep


def _config(**kw):
    base = dict(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=20,
                max_position_embeddings=24, num_labels=3, exit_start=1, initializer_range=0.3)
    base.update(kw)
    return CostEffConfig(**base)


def _batches(n=2, seed=0, B=4, T=8, num_labels=3, regression=False):
    """Batches with padding (each sample keeps at least 3 tokens) and labels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lengths = rng.integers(3, T + 1, B)
        mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)            # (B, T)
        ids = np.where(mask > 0, rng.integers(1, 40, (B, T)), 0)
        types = ((np.arange(T)[None, :] >= 3) & (mask > 0)).astype(np.int64)
        labels = rng.normal(2.5, 1.0, B) if regression else rng.integers(0, num_labels, B)
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels})
    return out


def _models(seed=0, **kw):
    """A float64 student and a different teacher with the same exits."""
    config = _config(**kw)
    return CostEffModel(config, dtype=np.float64, seed=seed), CostEffModel(config, dtype=np.float64, seed=seed + 100)


def _direct_scores(model, teacher, batches, last_exit_only=False, regression=False, gradient_equilibrium="authors",
                   hidden_pad_to=128):
    """The definition written out with the default (authors') rule: per batch, forward (no
    dropout, gradient equilibrium on except in the last-exit ablation), the importance loss
    (hidden term over 128 padded tokens; the ablation without a hard term), backward;
    accumulate |grad|; score = |w * accumulated|."""
    acc = {n: np.zeros_like(p) for n, p in model.params.items()}
    stage = "importance_last_exit" if last_exit_only else "importance"
    for b in batches:
        model.zero_grad()
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], training=False,
                    gradient_equilibrium="off" if last_exit_only else gradient_equilibrium, return_cache=True)
        t_out = teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        loss = objective_loss(stage, out, b["labels"], b["attention_mask"], teacher=t_out,
                          regression=regression, last_exit_only=last_exit_only, hidden_pad_to=hidden_pad_to)
        model.backward(out.cache, loss.grad_hidden_states, loss.grad_logits)
        for n in acc:
            acc[n] += np.abs(model.grads[n])
    model.zero_grad()
    return {n: np.abs(model.params[n] * acc[n]) for n in acc}


# The same float operations in the same order as the library: equal to rounding. 1e-13
# leaves room for a different but equally valid summation order of |grad| over batches.
SAME_OPS = 1e-13


@pytest.mark.parametrize("last_exit_only", [False, True])
@pytest.mark.parametrize("regression", [False, True])
def test_weight_scores_follow_the_definition(last_exit_only, regression):
    kw = dict(num_labels=1, problem_type="regression") if regression else {}
    model, teacher = _models(seed=1, **kw)
    batches = _batches(regression=regression)
    imp = taylor_importance(model, batches, teacher, last_exit_only=last_exit_only, progress=False)
    expected = _direct_scores(model, teacher, batches, last_exit_only, regression)
    assert imp.num_batches == 2 and imp.last_exit_only == last_exit_only
    assert list(imp.weights) == model.param_names
    for name in model.param_names:
        assert imp.weights[name].shape == model.params[name].shape
        np.testing.assert_allclose(imp.weights[name], expected[name], rtol=SAME_OPS,
                                   atol=SAME_OPS * expected[name].max(), err_msg=name)
        assert np.all(imp.weights[name] >= 0)


def test_dropout_is_off_and_equilibrium_is_the_authors():
    model, teacher = _models(seed=2)
    batches = _batches(seed=1)
    first = taylor_importance(model, batches, teacher, progress=False)
    again = taylor_importance(model, batches, teacher, progress=False)
    for name in model.param_names:                          # no dropout: the same scores twice
        np.testing.assert_array_equal(first.weights[name], again.weights[name])
    without_ge = _direct_scores(model, teacher, batches, gradient_equilibrium="off")
    plain = taylor_importance(model, batches, teacher, gradient_equilibrium="off", progress=False)
    name = "encoder.layer.0.attention.output.dense.weight"  # a layer below exits, so equilibrium rescales it
    np.testing.assert_allclose(plain.weights[name], without_ge[name], rtol=SAME_OPS)
    assert np.abs(without_ge[name] - first.weights[name]).max() > 1e-6 * first.weights[name].max()


def test_head_and_neuron_scores_aggregate_the_weight_scores():
    model, teacher = _models(seed=3, heads_per_layer=[4, 2, 3], intermediate_per_layer=[20, 7, 12])
    imp = taylor_importance(model, _batches(seed=2), teacher, progress=False)
    dh = model.config.attention_head_size
    for i in range(3):
        s_att = imp.weights[f"encoder.layer.{i}.attention.output.dense.weight"]    # (d, A_i)
        H = model.config.heads_per_layer[i]
        assert imp.heads[i].shape == (H,)
        for h in range(H):
            total = 0.0
            for row in range(s_att.shape[0]):                  # every output dimension
                for col in range(h * dh, (h + 1) * dh):       # head h's d_h input columns
                    total += s_att[row, col]
            np.testing.assert_allclose(imp.heads[i][h], total, rtol=1e-13)   # summation order only
        s_in = imp.weights[f"encoder.layer.{i}.intermediate.dense.weight"]         # (F_i, d)
        s_out = imp.weights[f"encoder.layer.{i}.output.dense.weight"]              # (d, F_i)
        F = model.config.intermediate_per_layer[i]
        assert imp.neurons[i].shape == (F,)
        for j in range(F):
            total = sum(s_in[j, k] for k in range(s_in.shape[1])) + sum(s_out[k, j] for k in range(s_out.shape[0]))
            np.testing.assert_allclose(imp.neurons[i][j], total, rtol=1e-13)


def test_last_exit_only_ignores_the_shallow_exits():
    model, teacher = _models(seed=4)
    batches = _batches(seed=3)
    every = taylor_importance(model, batches, teacher, progress=False)
    last = taylor_importance(model, batches, teacher, last_exit_only=True, progress=False)
    # No loss reaches the classifiers of exits 1 and 2 when only the last exit counts.
    for i in (0, 1):
        assert np.all(last.weights[f"exits.{i}.classifier.weight"] == 0)
        assert np.all(every.weights[f"exits.{i}.classifier.weight"] > 0)
    # And the structure scores differ (layer 0 feeds every exit).
    assert not np.allclose(every.heads[0], last.heads[0], rtol=1e-6)
    assert not np.allclose(every.neurons[0], last.neurons[0], rtol=1e-6)


def test_gradients_are_left_at_zero():
    model, teacher = _models(seed=5)
    for g in model.grads.values():
        g.fill(3.0)                                             # stale gradients must not leak in
    imp = taylor_importance(model, _batches(seed=4), teacher, progress=False)
    assert all(not g.any() for g in model.grads.values())
    expected = _direct_scores(model, teacher, _batches(seed=4))
    name = "encoder.layer.1.intermediate.dense.weight"
    np.testing.assert_allclose(imp.weights[name], expected[name], rtol=SAME_OPS, atol=SAME_OPS * expected[name].max())


def _importance_loss(model, teacher, batches, head_masks=None, ffn_masks=None):
    """The importance loss summed over batches, with optional head and FFN masks."""
    total = 0.0
    for b in batches:
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], head_mask=head_masks,
                    ffn_mask=ffn_masks)
        t_out = teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        total += objective_loss("importance", out, b["labels"], b["attention_mask"], teacher=t_out).value
    return total


def _loss_without(model, teacher, batches, layer, head=None, neuron=None):
    """|change of the importance loss| when one head or one FFN neuron of `layer` is masked."""
    keep_heads, keep_neurons = [None] * 3, [None] * 3
    if head is not None:
        keep_heads[layer] = np.setdiff1d(np.arange(model.config.heads_per_layer[layer]), [head])
    if neuron is not None:
        keep_neurons[layer] = np.setdiff1d(np.arange(model.config.intermediate_per_layer[layer]), [neuron])
    head_masks, ffn_masks = masks_from_keep(model.config, keep_heads, keep_neurons)
    base = _importance_loss(model, teacher, batches)
    return abs(_importance_loss(model, teacher, batches, head_masks, ffn_masks) - base)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_removing_the_lowest_scoring_head_or_neuron_costs_less_than_the_highest(seed):
    """First-order sanity. In layer 1, head 0's output weights and FFN neuron 4's output
    column are shrunk 50x, so that they barely contribute: importance must score them lowest in
    their layer, and masking the lowest-scoring head (neuron) must change the loss less than
    masking the highest-scoring one."""
    model, teacher = _models(seed=10 + seed, initializer_range=0.1)
    dh, pre = model.config.attention_head_size, "encoder.layer.1."
    model.params[pre + "attention.output.dense.weight"][:, 0:dh] *= 0.02       # (d, d_h) of head 0
    model.params[pre + "output.dense.weight"][:, 4] *= 0.02                     # (d,) of neuron 4
    batches = _batches(n=3, seed=20 + seed)
    imp = taylor_importance(model, batches, teacher, progress=False)
    assert np.argmin(imp.heads[1]) == 0 and np.argmin(imp.neurons[1]) == 4
    assert (_loss_without(model, teacher, batches, 1, head=0)
            < _loss_without(model, teacher, batches, 1, head=int(np.argmax(imp.heads[1]))))
    assert (_loss_without(model, teacher, batches, 1, neuron=4)
            < _loss_without(model, teacher, batches, 1, neuron=int(np.argmax(imp.neurons[1]))))


def test_importance_batches_sample_without_replacement():
    rng = np.random.default_rng(0)
    ids = [np.arange(2, 2 + int(n)) for n in rng.integers(3, 9, 30)]
    split = EncodedSplit(ids, [np.zeros_like(x) for x in ids], np.arange(30) % 2, 12)
    batches = importance_batches(split, 10, batch_size=4, seed=(3, 1))
    seen = np.concatenate([b["indices"] for b in batches])
    assert len(seen) == 10 and len(set(seen.tolist())) == 10
    again = importance_batches(split, 10, batch_size=4, seed=(3, 1))
    assert np.concatenate([b["indices"] for b in again]).tolist() == seen.tolist()
    assert sum(len(b["indices"]) for b in importance_batches(split, None, batch_size=7)) == 30
    with pytest.raises(ValueError, match="num_examples must be >= 1"):
        importance_batches(split, 0)
    with pytest.raises(ValueError, match="has no labels"):
        importance_batches(EncodedSplit(ids, [np.zeros_like(x) for x in ids], None, 12), 5)


def test_bad_calls_are_refused():
    model, teacher = _models()
    with pytest.raises(ValueError, match="at least one batch"):
        taylor_importance(model, [], teacher, progress=False)
    with pytest.raises(ValueError, match="pass teacher="):
        taylor_importance(model, _batches(), None, progress=False)
    plain = CostEffModel(_config(num_labels=0), dtype=np.float64)
    with pytest.raises(ValueError, match="no exits"):
        taylor_importance(plain, _batches(), teacher, progress=False)
    with pytest.raises(TypeError, match="CostEffModel"):
        taylor_importance(model.params, _batches(), teacher, progress=False)
    unlabelled = [dict(b, labels=None) for b in _batches()]
    with pytest.raises(ValueError, match="labels is None"):
        taylor_importance(model, unlabelled, teacher, progress=False)
