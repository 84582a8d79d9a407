"""Multi-exit COST-EFF losses against the torch reference, float64: every exit's logits, every
loss value and every parameter gradient of each stage's loss, with padding in the batch,
dropout and gradient equilibrium."""

import numpy as np
import pytest
import torch

from npcosteff.objectives import objective_loss

from .helpers import assert_close_by_name, make_pair, odd_batch, odd_config, replay, shared_dropout, \
    torch_grads, torch_masks
from .reference import stage_loss as ref_stage_loss
from .reference import to_numpy


def _teacher(kind, device):
    """A one-exit teacher (6 layers, exit after the last: a fine-tuned BERT) or a multi-exit
    teacher (3 layers, an exit everywhere: the TA)."""
    if kind == "one_exit":
        cfg = odd_config(num_hidden_layers=6, exit_start=6)
    else:
        cfg = odd_config(exit_start=1)
    return make_pair(cfg, torch.float64, device, seed=11)


CASES = [
    ("hard", "one_exit", dict(final_only=False)),
    ("hard", "one_exit", dict(final_only=True)),
    ("hidden", "one_exit", dict()),
    ("hidden", "multi_exit", dict(use_attention=True)),
    ("pred", "one_exit", dict(temperature=2.0)),
    ("pred", "multi_exit", dict()),
    ("pred_ta", "one_exit", dict()),
    ("importance", "multi_exit", dict(use_attention=True)),
]


@pytest.mark.parametrize("stage,teacher_kind,kw", CASES, ids=[f"{s}-{t}-{'-'.join(k)}" for s, t, k in CASES])
def test_stage_loss_and_gradients_match_reference(device, stage, teacher_kind, kw):
    student, ref = make_pair(odd_config(heads_per_layer=[4, 2, 3], exit_start=1), torch.float64, device, seed=2)
    t_np, t_ref = _teacher(teacher_kind, device)
    rng = np.random.default_rng(7)
    ids, mask, tt = odd_batch(rng)
    labels = rng.integers(0, 3, len(ids))
    use_attention = kw.get("use_attention", False)

    masks = shared_dropout(student, ids, mask, tt, seed=3)
    out = student(ids, mask, tt, training=True, dropout=replay(masks), return_cache=True,
                  output_attentions=use_attention, gradient_equilibrium="authors")
    teacher_out = t_np(ids, mask, tt, output_attentions=use_attention)
    loss = objective_loss(stage, out, labels, mask, teacher=teacher_out, **kw)
    student.zero_grad()
    student.backward(out.cache, loss.grad_hidden_states, loss.grad_logits, loss.grad_attentions)

    r = ref(ids, mask, tt, dropout_masks=torch_masks(masks, ref), gradient_equilibrium=True,
            output_attentions=True)
    with torch.no_grad():
        rt = t_ref(ids, mask, tt, output_attentions=True)
    ref_loss = ref_stage_loss(stage, r, torch.as_tensor(labels), torch.as_tensor(mask), teacher_out=rt, **kw)
    ref_loss.backward()

    for k, (a, b) in enumerate(zip(out.logits, r.logits)):
        assert np.abs(a - to_numpy(b)).max() <= 1e-12, f"logits of exit {k}"
    # Loss values: sums of O(10) terms computed in different orders; float64 agrees to ~1e-15.
    assert loss.value == pytest.approx(float(ref_loss.detach()), rel=1e-10, abs=1e-12)
    assert_close_by_name(student.grads, torch_grads(ref), student.param_names, rtol=1e-10)


def test_regression_stage_losses(device):
    student, ref = make_pair(odd_config(num_labels=1, problem_type="regression"), torch.float64, device, seed=4)
    t_np, t_ref = make_pair(odd_config(num_labels=1, problem_type="regression", exit_start=3), torch.float64,
                            device, seed=5)
    rng = np.random.default_rng(8)
    ids, mask, tt = odd_batch(rng)
    y = rng.uniform(0, 5, len(ids))
    for stage in ("hard", "pred", "pred_ta"):
        out = student(ids, mask, tt, return_cache=True, gradient_equilibrium="authors")   # no dropout
        loss = objective_loss(stage, out, y, mask, teacher=t_np(ids, mask, tt), regression=True)
        student.zero_grad()
        student.backward(out.cache, loss.grad_hidden_states, loss.grad_logits, loss.grad_attentions)
        ref.zero_grad()
        r = ref(ids, mask, tt, gradient_equilibrium=True)
        with torch.no_grad():
            rt = t_ref(ids, mask, tt)
        ref_loss = ref_stage_loss(stage, r, torch.as_tensor(y), torch.as_tensor(mask), teacher_out=rt,
                                  regression=True)
        ref_loss.backward()
        assert loss.value == pytest.approx(float(ref_loss.detach()), rel=1e-10)
        assert_close_by_name(student.grads, torch_grads(ref), student.param_names, rtol=1e-10)


DEFAULT_CASES = [(stage, exit_start) for stage in ("hidden", "pred", "pred_ta", "importance")
                 for exit_start in (1, 3)]


@pytest.mark.parametrize("stage,exit_start", DEFAULT_CASES, ids=[f"{s}-exit_start{e}" for s, e in DEFAULT_CASES])
def test_default_equilibrium_is_the_authors(device, stage, exit_start):
    """The default training pass (gradient_equilibrium=None, training=True) against the
    reference's literal construction of the authors' rule: two gradient_rescale hooks on every
    layer's output, the exit and the distilled hidden state between them. Five layers, so that
    exit_start 3 leaves layers 1-2 without an exit (they are rescaled all the same)."""
    L = 5
    student, ref = make_pair(odd_config(num_hidden_layers=L, heads_per_layer=[4, 2, 3, 1, 2],
                                        intermediate_per_layer=[40, 33, 20, 17, 25], exit_start=exit_start),
                             torch.float64, device, seed=2)
    # The TA teaches the student exit by exit (a multi-exit teacher); the TA itself learns from
    # the one-exit fine-tuned teacher.
    t_np, t_ref = make_pair(odd_config(num_hidden_layers=L, exit_start=L if stage == "pred_ta" else 1),
                            torch.float64, device, seed=11)
    rng = np.random.default_rng(7)
    ids, mask, tt = odd_batch(rng)
    labels = rng.integers(0, 3, len(ids))

    masks = shared_dropout(student, ids, mask, tt, seed=3)
    out = student(ids, mask, tt, training=True, dropout=replay(masks), return_cache=True)
    assert out.cache.gradient_equilibrium == "authors"
    loss = objective_loss(stage, out, labels, mask, teacher=t_np(ids, mask, tt))
    student.zero_grad()
    student.backward(out.cache, loss.grad_hidden_states, loss.grad_logits, loss.grad_attentions)

    r = ref(ids, mask, tt, dropout_masks=torch_masks(masks, ref), gradient_equilibrium="authors")
    with torch.no_grad():
        rt = t_ref(ids, mask, tt)
    ref_loss = ref_stage_loss(stage, r, torch.as_tensor(labels), torch.as_tensor(mask), teacher_out=rt)
    ref_loss.backward()
    assert loss.value == pytest.approx(float(ref_loss.detach()), rel=1e-10, abs=1e-12)
    assert_close_by_name(student.grads, torch_grads(ref), student.param_names, rtol=1e-10)


@pytest.mark.parametrize("rule", ["authors", "exit_layers"])
def test_hidden_loss_factors_of_each_rule(device, rule):
    """A loss on h_l alone reaches layer j <= l scaled by prod_{m=j}^{l-1} (L-m)/(L-m+1) and,
    under the authors' rule, by a further 1/(L-l+1): on 4 layers a loss on h_1 reaches layer 1
    with 0.25 (authors) or 1.0 (exit_layers), a loss on h_3 reaches layers 1-3 with
    0.25/0.33/0.5 or 0.5/0.67/1.0. Measured here against the same pass with equilibrium off."""
    L = 4
    model, _ = make_pair(odd_config(num_hidden_layers=L, heads_per_layer=[2] * L,
                                    intermediate_per_layer=[20] * L, exit_start=1), torch.float64, device, seed=2)
    rng = np.random.default_rng(3)
    ids, mask, tt = odd_batch(rng)
    expected = {"authors": {1: [0.25], 3: [0.25, 1 / 3, 0.5]},
                "exit_layers": {1: [1.0], 3: [0.5, 2 / 3, 1.0]}}[rule]
    for l, factors in expected.items():
        grads, g_l = {}, None
        for ge in ("off", rule):
            out = model(ids, mask, tt, return_cache=True, gradient_equilibrium=ge)
            if g_l is None:
                g_l = rng.standard_normal(out.hidden_states[l].shape)   # the same upstream both times
            g_up = [None] * (L + 1)
            g_up[l] = g_l
            model.zero_grad()
            model.backward(out.cache, grad_hidden_states=g_up)
            grads[ge] = {j: model.grads[f"encoder.layer.{j - 1}.output.dense.weight"].copy() for j in range(1, l + 1)}
        for j, f in zip(range(1, l + 1), factors):
            np.testing.assert_allclose(grads[rule][j], f * grads["off"][j], rtol=1e-12,
                                       err_msg=f"loss on h_{l}, layer {j}")


def test_gradient_equilibrium_changes_gradients(device):
    """GE must matter: without it the lower layers' gradients differ (guards against a no-op)."""
    student, _ = make_pair(odd_config(exit_start=1), torch.float64, device, seed=2)
    rng = np.random.default_rng(1)
    ids, mask, tt = odd_batch(rng)
    labels = rng.integers(0, 3, len(ids))
    grads = []
    for ge in ("authors", "off"):
        out = student(ids, mask, tt, return_cache=True, gradient_equilibrium=ge)
        loss = objective_loss("hard", out, labels, mask)
        student.zero_grad()
        student.backward(out.cache, loss.grad_hidden_states, loss.grad_logits)
        grads.append(student.grads["encoder.layer.0.intermediate.dense.weight"].copy())
    assert np.abs(grads[0] - grads[1]).max() > 1e-3 * np.abs(grads[1]).max()
