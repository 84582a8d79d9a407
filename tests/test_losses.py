"""Tests of npcosteff.losses against PyTorch autograd and finite differences.

Torch computes each definition of docs/architecture.md independently (F.cross_entropy,
F.log_softmax, ...); float64 results must agree to round-off. Each backward also gets a
central finite-difference check in float64 and a random upstream gradient.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from npcosteff.losses import (
    attention_mse_loss, attention_mse_loss_backward, cross_entropy_loss,
    cross_entropy_loss_backward, entropy, hidden_mse_loss, hidden_mse_loss_backward,
    log_softmax, mse_loss, mse_loss_backward, soft_cross_entropy_loss,
    soft_cross_entropy_loss_backward,
)
from npcosteff.objectives import OBJECTIVES, objective_loss

# float64 agreement with torch: the two compute the same sums in a different order, so they
# differ by a few ulps of the values involved (O(1)); 1e-12 leaves ~1e3 ulps of margin.
TOL64 = dict(rtol=1e-12, atol=1e-12)


def rng_for(seed):
    return np.random.default_rng(seed)


def padding_mask(lengths, tokens):
    """(B, T) int mask with lengths[b] leading real tokens (uneven padding)."""
    return (np.arange(tokens)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)


def random_probs(rng, shape):
    """Attention-like maps: positive rows summing to 1 (not uniform)."""
    x = rng.standard_normal(shape)
    return np.exp(log_softmax(2.0 * x))


def leaf(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def const(a):
    return torch.tensor(a, dtype=torch.float64)


def finite_difference(f, x, eps=1e-5):
    """Central differences of the scalar f at every entry of x (float64)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        orig = x[idx]
        x[idx] = orig + eps
        plus = f(x)
        x[idx] = orig - eps
        minus = f(x)
        x[idx] = orig
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


# Finite differences with eps = 1e-5: truncation error ~ eps^2 |f'''| ~ 1e-10 and round-off
# ~ 1e-16 |f| / eps ~ 1e-11 for these O(1) losses, so 1e-8 is a safe but meaningful bound
# (a wrong factor such as 1/T or 1/H would miss it by orders of magnitude).
FD_TOL = dict(rtol=1e-7, atol=1e-8)


# --------------------------------------------------------------------------- torch definitions

def torch_soft_ce(z, t, T):
    return -(F.softmax(t / T, dim=-1) * F.log_softmax(z / T, dim=-1)).sum(-1).mean()


def torch_hidden_mse(hs, ht, m):
    per_token = ((hs - ht) ** 2).mean(-1)                       # (B, T)
    return ((per_token * m).sum(-1) / m.sum(-1)).mean()


def torch_attention_mse(ps, pt, m):
    a_s, a_t = ps.mean(1), pt.mean(1)                           # (B, T, T)
    w = m[:, :, None] * m[:, None, :]
    return (((a_s - a_t) ** 2 * w).sum((1, 2)) / m.sum(-1)).mean()


# --------------------------------------------------------------------------- log_softmax / entropy

def test_log_softmax_matches_torch_and_is_stable():
    rng = rng_for(0)
    z = rng.standard_normal((5, 7)) * 3
    np.testing.assert_allclose(log_softmax(z), F.log_softmax(const(z), -1).numpy(), **TOL64)
    # Huge logits: a naive exp overflows; the max-subtracted form stays exact.
    big = np.array([[1e3, -1e3, 0.0], [-1e3, -1e3, -1e3]])
    out = log_softmax(big)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, F.log_softmax(const(big), -1).numpy(), **TOL64)
    # Shift invariance along the axis, and other axes.
    np.testing.assert_allclose(log_softmax(z + 50.0), log_softmax(z), rtol=0, atol=1e-12)
    np.testing.assert_allclose(log_softmax(z, axis=0), F.log_softmax(const(z), 0).numpy(), **TOL64)


def test_entropy_matches_torch_and_has_no_nan_at_zero_probability():
    rng = rng_for(1)
    z = rng.standard_normal((6, 4)) * 2
    p = F.softmax(const(z), -1)
    expected = -(p * torch.log(p)).sum(-1).numpy()
    np.testing.assert_allclose(entropy(z), expected, **TOL64)
    # A certain prediction (p = 0 exactly and -inf logits) has entropy 0; uniform has log C.
    extreme = np.array([[1e3, -1e3, -1e3, -1e3], [0.0, -np.inf, -np.inf, -np.inf],
                        [0.5, 0.5, 0.5, 0.5]])
    # Underflow to p = 0 is the point here; overflow, 0 * -inf or log 0 must not happen.
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        h = entropy(extreme)
    np.testing.assert_allclose(h, [0.0, 0.0, np.log(4.0)], rtol=1e-15, atol=1e-300)
    assert entropy(z.astype(np.float32)).dtype == np.float32


# --------------------------------------------------------------------------- pairs vs torch

def test_cross_entropy_matches_torch():
    rng = rng_for(2)
    z = rng.standard_normal((6, 5)) * 2
    y = rng.integers(0, 5, size=6)
    dloss = rng.standard_normal()
    value, cache = cross_entropy_loss(z, y)
    dz = cross_entropy_loss_backward(cache, dloss)
    zt = leaf(z)
    loss = F.cross_entropy(zt, torch.tensor(y))
    (loss * dloss).backward()
    np.testing.assert_allclose(value, loss.item(), **TOL64)
    np.testing.assert_allclose(dz, zt.grad.numpy(), **TOL64)


def test_mse_matches_torch():
    rng = rng_for(3)
    z = rng.standard_normal((7, 1))
    y = rng.standard_normal(7) * 2
    dloss = rng.standard_normal()
    value, cache = mse_loss(z, y)
    dz = mse_loss_backward(cache, dloss)
    zt = leaf(z)
    loss = F.mse_loss(zt[:, 0], const(y))
    (loss * dloss).backward()
    np.testing.assert_allclose(value, loss.item(), **TOL64)
    np.testing.assert_allclose(dz, zt.grad.numpy(), **TOL64)
    assert dz.shape == (7, 1)


@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.4])
def test_soft_cross_entropy_matches_torch(temperature):
    rng = rng_for(4)
    z = rng.standard_normal((5, 4)) * 2
    t = rng.standard_normal((5, 4)) * 3
    dloss = rng.standard_normal()
    value, cache = soft_cross_entropy_loss(z, t, temperature)
    dz = soft_cross_entropy_loss_backward(cache, dloss)
    zt = leaf(z)
    loss = torch_soft_ce(zt, const(t), temperature)
    (loss * dloss).backward()
    np.testing.assert_allclose(value, loss.item(), **TOL64)
    np.testing.assert_allclose(dz, zt.grad.numpy(), **TOL64)
    # Independent route: KL(p || q) + H(p) through torch's own kl_div.
    p_log = F.log_softmax(const(t) / temperature, -1)
    kl = F.kl_div(F.log_softmax(const(z) / temperature, -1), p_log, log_target=True,
                  reduction="batchmean")
    h = -(p_log.exp() * p_log).sum(-1).mean()
    np.testing.assert_allclose(value, (kl + h).item(), **TOL64)


def test_hidden_mse_matches_torch_with_uneven_padding():
    rng = rng_for(5)
    B, T, d = 4, 6, 5
    hs, ht = rng.standard_normal((B, T, d)), rng.standard_normal((B, T, d))
    m = padding_mask([6, 3, 1, 4], T)
    dloss = rng.standard_normal()
    value, cache = hidden_mse_loss(hs, ht, m)
    dhs = hidden_mse_loss_backward(cache, dloss)
    hst = leaf(hs)
    loss = torch_hidden_mse(hst, const(ht), const(m))
    (loss * dloss).backward()
    np.testing.assert_allclose(value, loss.item(), **TOL64)
    np.testing.assert_allclose(dhs, hst.grad.numpy(), **TOL64)
    # Padding positions neither contribute nor receive gradient.
    assert np.all(dhs[m == 0] == 0)
    hs2 = hs.copy()
    hs2[m == 0] += 100.0
    assert hidden_mse_loss(hs2, ht, m)[0] == value
    # Per-sample normalization: this differs from a flat mean over all real tokens.
    per_token = ((hs - ht) ** 2).mean(-1)
    flat = (per_token * m).sum() / m.sum()
    assert abs(flat - value) > 1e-3
    # No mask means no padding.
    np.testing.assert_allclose(hidden_mse_loss(hs, ht, None)[0],
                               hidden_mse_loss(hs, ht, np.ones((B, T)))[0], rtol=0, atol=0)


def test_attention_mse_matches_torch_with_different_head_counts():
    rng = rng_for(6)
    B, Hs, Ht, T = 3, 2, 4, 5
    ps, pt = random_probs(rng, (B, Hs, T, T)), random_probs(rng, (B, Ht, T, T))
    m = padding_mask([5, 2, 4], T)
    dloss = rng.standard_normal()
    value, cache = attention_mse_loss(ps, pt, m)
    dps = attention_mse_loss_backward(cache, dloss)
    pst = leaf(ps)
    loss = torch_attention_mse(pst, const(pt), const(m))
    (loss * dloss).backward()
    np.testing.assert_allclose(value, loss.item(), **TOL64)
    np.testing.assert_allclose(dps, pst.grad.numpy(), **TOL64)
    assert dps.shape == ps.shape and dps.flags.writeable
    # A pair with a padded query or key gets no gradient.
    pair = m[:, :, None] * m[:, None, :]
    assert np.all(dps[np.broadcast_to(pair[:, None] == 0, dps.shape)] == 0)


# --------------------------------------------------------------------------- finite differences

def test_backwards_match_finite_differences():
    rng = rng_for(7)
    B, C, T, d = 3, 4, 4, 3
    dloss = rng.standard_normal()

    z = rng.standard_normal((B, C))
    y = np.array([0, 3, 1])
    _, cache = cross_entropy_loss(z, y)
    fd = finite_difference(lambda x: dloss * cross_entropy_loss(x, y)[0], z.copy())
    np.testing.assert_allclose(cross_entropy_loss_backward(cache, dloss), fd, **FD_TOL)

    zr, yr = rng.standard_normal((B, 1)), rng.standard_normal(B)
    _, cache = mse_loss(zr, yr)
    fd = finite_difference(lambda x: dloss * mse_loss(x, yr)[0], zr.copy())
    np.testing.assert_allclose(mse_loss_backward(cache, dloss), fd, **FD_TOL)

    t = rng.standard_normal((B, C)) * 2
    _, cache = soft_cross_entropy_loss(z, t, 1.7)
    fd = finite_difference(lambda x: dloss * soft_cross_entropy_loss(x, t, 1.7)[0], z.copy())
    np.testing.assert_allclose(soft_cross_entropy_loss_backward(cache, dloss), fd, **FD_TOL)

    m = padding_mask([4, 2, 3], T)
    hs, ht = rng.standard_normal((B, T, d)), rng.standard_normal((B, T, d))
    _, cache = hidden_mse_loss(hs, ht, m)
    fd = finite_difference(lambda x: dloss * hidden_mse_loss(x, ht, m)[0], hs.copy())
    np.testing.assert_allclose(hidden_mse_loss_backward(cache, dloss), fd, **FD_TOL)

    ps, pt = random_probs(rng, (B, 2, T, T)), random_probs(rng, (B, 3, T, T))
    _, cache = attention_mse_loss(ps, pt, m)
    fd = finite_difference(lambda x: dloss * attention_mse_loss(x, pt, m)[0], ps.copy())
    np.testing.assert_allclose(attention_mse_loss_backward(cache, dloss), fd, **FD_TOL)


# --------------------------------------------------------------------------- extremes and dtypes

def test_extreme_logits_and_zero_probability_teacher_give_no_nan():
    rng = rng_for(8)
    z = np.array([[1e3, -1e3, 0.0], [-1e3, 1e3, 1e3], [0.0, 0.0, -1e3]])
    y = np.array([1, 0, 2])                                     # the worst labels: loss ~ 2e3
    # One-hot teachers: probability 0 from a -1e3 gap (underflow) and from -inf.
    t = np.array([[1e3, -1e3, -1e3], [0.0, -np.inf, -np.inf], [-np.inf, 5.0, -np.inf]])
    dloss = rng.standard_normal()
    # Underflow to p = 0 is the point here; overflow, 0 * -inf or log 0 must not happen.
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ce, ce_cache = cross_entropy_loss(z, y)
        dce = cross_entropy_loss_backward(ce_cache, dloss)
        sce, sce_cache = soft_cross_entropy_loss(z, t, 1.0)
        dsce = soft_cross_entropy_loss_backward(sce_cache, dloss)
    for a in (ce, dce, sce, dsce):
        assert np.isfinite(a).all()
    zt = leaf(z)
    (F.cross_entropy(zt, torch.tensor(y)) * dloss).backward()
    np.testing.assert_allclose(ce, F.cross_entropy(const(z), torch.tensor(y)).item(), **TOL64)
    np.testing.assert_allclose(dce, zt.grad.numpy(), **TOL64)
    # Torch: p * log q with p = 0 and finite log q is 0 there too.
    zt = leaf(z)
    loss = torch_soft_ce(zt, const(t), 1.0)
    (loss * dloss).backward()
    np.testing.assert_allclose(sce, loss.item(), **TOL64)
    np.testing.assert_allclose(dsce, zt.grad.numpy(), **TOL64)


def test_float32_inputs_give_float32_gradients_close_to_float64():
    rng = rng_for(9)
    z = rng.standard_normal((8, 3)) * 2
    t = rng.standard_normal((8, 3))
    y = rng.integers(0, 3, size=8)
    hs, ht = rng.standard_normal((8, 5, 6)), rng.standard_normal((8, 5, 6))
    m = padding_mask(rng.integers(1, 6, size=8), 5)
    ps, pt = random_probs(rng, (8, 2, 5, 5)), random_probs(rng, (8, 3, 5, 5))
    dloss = np.float64(rng.standard_normal())                   # a float64 scalar must not upcast
    pairs = [
        (lambda a: cross_entropy_loss(a, y), cross_entropy_loss_backward, z),
        (lambda a: soft_cross_entropy_loss(a, t, 2.0), soft_cross_entropy_loss_backward, z),
        (lambda a: mse_loss(a[:, :1], t[:, 0]), mse_loss_backward, z),
        (lambda a: hidden_mse_loss(a, ht, m), hidden_mse_loss_backward, hs),
        (lambda a: attention_mse_loss(a, pt, m), attention_mse_loss_backward, ps),
    ]
    for forward, backward, x in pairs:
        v64, c64 = forward(x)
        v32, c32 = forward(x.astype(np.float32))
        g64, g32 = backward(c64, dloss), backward(c32, dloss)
        assert g32.dtype == np.float32
        # float32 round-off: eps32 ~ 6e-8 per operation over sums of <= 240 terms of O(1)
        # values, so relative errors stay well under 1e-5.
        np.testing.assert_allclose(v32, v64, rtol=1e-5)
        np.testing.assert_allclose(g32, g64, rtol=1e-5, atol=1e-6 * np.abs(g64).max())


# --------------------------------------------------------------------------- pair errors

def test_pair_errors_name_the_problem():
    z = np.zeros((3, 2)) + np.arange(2)
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\) = \(3,\)"):
        cross_entropy_loss(z, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
        cross_entropy_loss(z, np.array([0, 2, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
        cross_entropy_loss(z, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="labels must be integers"):
        cross_entropy_loss(z, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"logits must have shape \(B, C\)"):
        cross_entropy_loss(np.zeros(3), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="floating-point"):
        cross_entropy_loss(np.zeros((3, 2), dtype=np.int64), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"logits must have shape \(B, 1\) for regression"):
        mse_loss(z, np.zeros(3))
    with pytest.raises(ValueError, match=r"targets must have shape \(B,\) = \(3,\)"):
        mse_loss(z[:, :1], np.zeros((3, 1)))
    for bad_t in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            soft_cross_entropy_loss(z, z, bad_t)
    with pytest.raises(ValueError, match=r"teacher logits must have the student's shape \(3, 2\)"):
        soft_cross_entropy_loss(z, np.zeros((3, 3)), 1.0)
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        soft_cross_entropy_loss(z, np.array([[0.0, np.nan]] * 3), 1.0)
    with pytest.raises(ValueError, match="no finite entry"):
        soft_cross_entropy_loss(z, np.full((3, 2), -np.inf), 1.0)
    h = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"teacher hidden states must have the student's shape"):
        hidden_mse_loss(h, np.ones((2, 3, 5)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B, T\) = \(2, 3\)"):
        hidden_mse_loss(h, h, np.ones((2, 4)))
    with pytest.raises(ValueError, match="only 0 .padding. and 1"):
        hidden_mse_loss(h, h, np.full((2, 3), 2))
    with pytest.raises(ValueError, match=r"no non-padding token in sample\(s\) \[1\]"):
        hidden_mse_loss(h, h, np.array([[1, 1, 0], [0, 0, 0]]))
    p = np.ones((2, 2, 3, 3)) / 3
    with pytest.raises(ValueError, match=r"teacher attentions must have shape \(B, H_t, T, T\)"):
        attention_mse_loss(p, np.ones((2, 2, 4, 4)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"student attentions must have shape \(B, H_s, T, T\)"):
        attention_mse_loss(p[0], p, np.ones((2, 3)))
    with pytest.raises(ValueError, match="dloss must be a scalar"):
        mse_loss_backward(mse_loss(z[:, :1], np.zeros(3))[1], np.ones(2))


# --------------------------------------------------------------------------- objective_loss

def make_output(rng, layers, exit_layers, batch, tokens, hidden, labels, heads, scale=1.0):
    """A model output (as the model returns it) with random values."""
    return SimpleNamespace(
        logits=tuple(rng.standard_normal((batch, labels)) * 2 * scale for _ in exit_layers),
        exit_layers=tuple(exit_layers),
        hidden_states=tuple(rng.standard_normal((batch, tokens, hidden)) for _ in range(layers + 1)),
        attentions=tuple(random_probs(rng, (batch, heads, tokens, tokens)) for _ in range(layers)),
    )


STAGE_WEIGHTS = {  # docs/architecture.md, "Losses"
    "hidden": {"hidden": 1.0},
    "pred": {"pred": 1.0, "hidden": 1.0},
    "pred_ta": {"pred": 0.5, "hard": 0.5},
    "hard": {"hard": 1.0},
    "importance": {"pred": 0.9, "hard": 0.1, "hidden": 1.0},
    "importance_last_exit": {"pred": 1.0, "hidden": 1.0},   # the authors' last-exit ablation
}


def torch_padded_hidden_mse(hs, ht, m, pad_to):
    """torch.nn.MSELoss over (B, pad_to, d): padding zeroed, zeros appended up to pad_to."""
    B, T, d = hs.shape
    zeros = torch.zeros(B, pad_to - T, d, dtype=hs.dtype)
    mm = m[:, :, None]
    return F.mse_loss(torch.cat([hs * mm, zeros], 1), torch.cat([ht * mm, zeros], 1))


def torch_stage(stage, student, teacher, labels, mask, temperature=1.0, final_only=False,
                use_attention=False, regression=False, last_exit_only=False, hidden_pad_to=None,
                regression_distill="all"):
    """The stage losses written directly in torch; returns (loss, components, leaves)."""
    z = [leaf(a) for a in student.logits]
    h = [leaf(a) for a in student.hidden_states]
    p = [leaf(a) for a in student.attentions]
    m = const(mask)
    w = STAGE_WEIGHTS[stage]
    last_exit_only = last_exit_only or stage == "importance_last_exit"
    if regression and regression_distill == "final" and stage in ("pred", "pred_ta"):
        last_exit_only = True                        # the authors' regression rule: the last exit alone
        if stage == "pred_ta":
            w = {"pred": 1.0}
    comp = {}
    n_exits = len(z)
    if "hard" in w:
        used = [n_exits - 1] if (final_only or last_exit_only) else range(n_exits)
        if regression:
            comp["hard"] = sum(F.mse_loss(z[i][:, 0], const(labels)) for i in used)
        else:
            comp["hard"] = sum(F.cross_entropy(z[i], torch.tensor(labels)) for i in used)
    if "pred" in w:
        used = [n_exits - 1] if last_exit_only else range(n_exits)
        terms = []
        for i in used:
            if len(teacher.logits) == 1:
                t = const(teacher.logits[0])
            else:
                t = const(teacher.logits[teacher.exit_layers.index(student.exit_layers[i])])
            if regression:
                terms.append(F.mse_loss(z[i][:, 0], t[:, 0]))
            else:
                terms.append(torch_soft_ce(z[i], t, temperature))
        comp["pred"] = sum(terms)
    if "hidden" in w:
        Ls, Lt = len(h) - 1, len(teacher.hidden_states) - 1
        mse = torch_hidden_mse if hidden_pad_to is None else \
            (lambda a, b, mm: torch_padded_hidden_mse(a, b, mm, hidden_pad_to))
        comp["hidden"] = sum(
            mse(h[l], const(teacher.hidden_states[l * Lt // Ls]), m)
            for l in range(Ls + 1))
        if use_attention:
            comp["attention"] = sum(
                torch_attention_mse(p[l - 1], const(teacher.attentions[l * Lt // Ls - 1]), m)
                for l in range(1, Ls + 1))
    weights = dict(w, attention=w.get("hidden", 0.0))
    total = sum(weights[k] * comp[k] for k in comp)
    total.backward()
    return total, comp, (z, h, p)


def assert_stage_matches_torch(result, reference, use_attention):
    total, comp, (z, h, p) = reference
    np.testing.assert_allclose(result.value, total.item(), **TOL64)
    assert set(result.components) == set(comp)
    for k in comp:
        np.testing.assert_allclose(result.components[k], comp[k].item(), **TOL64)
    # None exactly where torch left the leaf without gradient.
    for mine, theirs in zip(result.grad_logits, z, strict=True):
        assert (mine is None) == (theirs.grad is None)
        if mine is not None:
            np.testing.assert_allclose(mine, theirs.grad.numpy(), **TOL64)
    for mine, theirs in zip(result.grad_hidden_states, h, strict=True):
        assert (mine is None) == (theirs.grad is None)
        if mine is not None:
            np.testing.assert_allclose(mine, theirs.grad.numpy(), **TOL64)
    if use_attention and "hidden" in comp:
        for mine, theirs in zip(result.grad_attentions, p, strict=True):
            np.testing.assert_allclose(mine, theirs.grad.numpy(), **TOL64)
    else:
        assert result.grad_attentions is None


B, T, D, C = 3, 5, 4, 3
MASK = padding_mask([5, 2, 4], T)


@pytest.mark.parametrize("stage", OBJECTIVES)
@pytest.mark.parametrize("use_attention", [False, True])
def test_stage_loss_one_exit_deeper_teacher(stage, use_attention):
    """Student L_s = 2 with exits at every layer, teacher L_t = 4 with one exit (the
    fine-tuned BERT teaching the TA): layer l maps to 2l, every exit learns from t_L."""
    rng = rng_for(10)
    student = make_output(rng, 2, (1, 2), B, T, D, C, heads=2)
    teacher = make_output(rng, 4, (4,), B, T, D, C, heads=3)
    labels = rng.integers(0, C, size=B)
    result = objective_loss(stage, student, labels, MASK, teacher=teacher, temperature=2.0,
                        use_attention=use_attention)
    ref = torch_stage(stage, student, teacher, labels, MASK, temperature=2.0,
                      use_attention=use_attention)
    assert_stage_matches_torch(result, ref, use_attention)
    assert result.value == pytest.approx(
        sum(STAGE_WEIGHTS[stage].get(k, STAGE_WEIGHTS[stage].get("hidden")) * v
            for k, v in result.components.items()), rel=1e-14)


@pytest.mark.parametrize("stage", ["pred", "pred_ta", "importance"])
def test_stage_loss_multi_exit_teacher_matches_exits_by_layer(stage):
    """Student exits at layers 2 and 3; the TA has exits at 1, 2, 3, so student exit i must
    learn from the TA exit at the same layer, not the TA exit at the same position."""
    rng = rng_for(11)
    student = make_output(rng, 3, (2, 3), B, T, D, C, heads=2)
    teacher = make_output(rng, 3, (1, 2, 3), B, T, D, C, heads=2)
    labels = rng.integers(0, C, size=B)
    result = objective_loss(stage, student, labels, MASK, teacher=teacher, temperature=1.5)
    ref = torch_stage(stage, student, teacher, labels, MASK, temperature=1.5)
    assert_stage_matches_torch(result, ref, False)
    # Pairing by position would give a different prediction loss.
    wrong = sum(soft_cross_entropy_loss(z, t, 1.5)[0]
                for z, t in zip(student.logits, teacher.logits[:2]))
    assert abs(wrong - result.components["pred"]) > 1e-3


def test_stage_loss_non_divisible_layer_mapping():
    """L_s = 2, L_t = 3: layer l matches floor(l * 3 / 2) = 0, 1, 3."""
    rng = rng_for(12)
    student = make_output(rng, 2, (2,), B, T, D, C, heads=2)
    teacher = make_output(rng, 3, (3,), B, T, D, C, heads=2)
    result = objective_loss("hidden", student, None, MASK, teacher=teacher, use_attention=True)
    ref = torch_stage("hidden", student, teacher, None, MASK, use_attention=True)
    assert_stage_matches_torch(result, ref, True)
    expected = sum(hidden_mse_loss(student.hidden_states[l], teacher.hidden_states[k], MASK)[0]
                   for l, k in [(0, 0), (1, 1), (2, 3)])
    np.testing.assert_allclose(result.components["hidden"], expected, **TOL64)


@pytest.mark.parametrize("stage", ["hard", "pred", "importance", "pred_ta"])
def test_stage_loss_last_exit_only(stage):
    """The importance ablation (docs/method.md, 4): hard and prediction terms from the last exit only; hidden
    distillation is unchanged."""
    rng = rng_for(13)
    student = make_output(rng, 3, (1, 2, 3), B, T, D, C, heads=2)
    teacher = make_output(rng, 3, (1, 2, 3), B, T, D, C, heads=2)
    labels = rng.integers(0, C, size=B)
    result = objective_loss(stage, student, labels, MASK, teacher=teacher, last_exit_only=True)
    ref = torch_stage(stage, student, teacher, labels, MASK, last_exit_only=True)
    assert_stage_matches_torch(result, ref, False)
    assert result.grad_logits[0] is None and result.grad_logits[1] is None
    assert result.grad_logits[2] is not None
    full = objective_loss(stage, student, labels, MASK, teacher=teacher)
    if "hidden" in full.components:
        assert result.components["hidden"] == full.components["hidden"]
        for a, b in zip(result.grad_hidden_states, full.grad_hidden_states):
            np.testing.assert_array_equal(a, b)


def test_stage_loss_final_only_restricts_the_hard_loss_alone():
    rng = rng_for(14)
    student = make_output(rng, 2, (1, 2), B, T, D, C, heads=2)
    teacher = make_output(rng, 2, (1, 2), B, T, D, C, heads=2)
    labels = rng.integers(0, C, size=B)
    for stage in ("hard", "importance"):
        result = objective_loss(stage, student, labels, MASK, teacher=teacher, final_only=True)
        ref = torch_stage(stage, student, teacher, labels, MASK, final_only=True)
        assert_stage_matches_torch(result, ref, False)
    # In `importance` the prediction term still reaches the first exit.
    assert result.grad_logits[0] is not None


@pytest.mark.parametrize("stage", OBJECTIVES)
def test_stage_loss_regression(stage):
    """C = 1: hard loss is mse(z, y), prediction distillation mse(z, t[:, 0]) (no temperature)."""
    rng = rng_for(15)
    student = make_output(rng, 2, (1, 2), B, T, D, 1, heads=2)
    teacher = make_output(rng, 4, (4,), B, T, D, 1, heads=2)
    labels = rng.standard_normal(B) * 2
    result = objective_loss(stage, student, labels, MASK, teacher=teacher, temperature=3.0,
                        regression=True)
    ref = torch_stage(stage, student, teacher, labels, MASK, regression=True)
    assert_stage_matches_torch(result, ref, False)


@pytest.mark.parametrize("stage", ["pred", "pred_ta", "hidden", "hard"])
def test_stage_loss_regression_final_distill(stage):
    """The authors' regression rule: pred and pred_ta distill the last exit alone (pred_ta
    with no hard term); other stages are unchanged."""
    rng = rng_for(15)
    student = make_output(rng, 2, (1, 2), B, T, D, 1, heads=2)
    teacher = make_output(rng, 4, (4,), B, T, D, 1, heads=2)
    labels = rng.standard_normal(B) * 2
    result = objective_loss(stage, student, labels, MASK, teacher=teacher, regression=True,
                        regression_distill="final")
    ref = torch_stage(stage, student, teacher, labels, MASK, regression=True, regression_distill="final")
    assert_stage_matches_torch(result, ref, False)
    if stage in ("pred", "pred_ta"):
        assert result.grad_logits[0] is None


@pytest.mark.parametrize("stage", ["hidden", "pred", "importance"])
def test_stage_loss_padded_hidden_term(stage):
    """hidden_pad_to: the hidden term is torch's MSELoss over a batch padded to pad_to tokens."""
    rng = rng_for(18)
    student = make_output(rng, 2, (1, 2), B, T, D, C, heads=2)
    teacher = make_output(rng, 2, (1, 2), B, T, D, C, heads=2)
    labels = rng.integers(0, C, size=B)
    result = objective_loss(stage, student, labels, MASK, teacher=teacher, hidden_pad_to=16)
    ref = torch_stage(stage, student, teacher, labels, MASK, hidden_pad_to=16)
    assert_stage_matches_torch(result, ref, False)
    with pytest.raises(ValueError, match="pad_to"):
        objective_loss(stage, student, labels, MASK, teacher=teacher, hidden_pad_to=T - 1)


def test_stage_loss_accepts_dicts_and_float32():
    rng = rng_for(16)
    student = make_output(rng, 2, (1, 2), B, T, D, C, heads=2)
    teacher = make_output(rng, 2, (2,), B, T, D, C, heads=2)
    labels = rng.integers(0, C, size=B)
    ref = objective_loss("importance", student, labels, MASK, teacher=teacher)
    as_dict = {k: tuple(np.float32(a) for a in v) if k != "exit_layers" else v
               for k, v in vars(student).items()}
    result = objective_loss("importance", as_dict, labels, MASK, teacher=vars(teacher))
    assert all(g.dtype == np.float32 for g in result.grad_logits + result.grad_hidden_states)
    # float32 student, float64 teacher: round-off of float32 inputs (eps32 ~ 6e-8) on O(1) sums.
    np.testing.assert_allclose(result.value, ref.value, rtol=1e-6)
    for a, b in zip(result.grad_hidden_states, ref.grad_hidden_states):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


def test_stage_loss_errors():
    rng = rng_for(17)
    student = make_output(rng, 2, (1, 2), B, T, D, C, heads=2)
    teacher = make_output(rng, 2, (1, 2), B, T, D, C, heads=2)
    labels = rng.integers(0, C, size=B)
    with pytest.raises(ValueError, match="unknown objective 'distill'; known objectives: hidden, pred, "
                                         "pred_ta, hard, importance"):
        objective_loss("distill", student, labels, MASK, teacher=teacher)
    for stage in ("hidden", "pred", "pred_ta", "importance"):
        with pytest.raises(ValueError, match=f"objective '{stage}' distills from a teacher"):
            objective_loss(stage, student, labels, MASK)
    with pytest.raises(ValueError, match="has a hard loss, but labels is None"):
        objective_loss("hard", student, None, MASK)
    # The multi-exit teacher lacks an exit at layer 1, where the student has one.
    no_first = make_output(rng, 3, (2, 3), B, T, D, C, heads=2)
    with pytest.raises(ValueError, match=r"teacher has exits at layers \[2, 3\] but the student "
                                         r"also has exits at layers \[1\]"):
        objective_loss("pred", student, labels, MASK, teacher=no_first)
    wide = make_output(rng, 2, (2,), B, T, D + 2, C, heads=2)
    with pytest.raises(ValueError, match=r"teacher and student hidden sizes differ "
                                         r"\(student d = 4, teacher d = 6\)"):
        objective_loss("hidden", student, labels, MASK, teacher=wide)
    shallow = make_output(rng, 1, (1,), B, T, D, C, heads=2)
    with pytest.raises(ValueError, match=r"student has more layers \(2\) than the teacher \(1\)"):
        objective_loss("hidden", student, labels, MASK, teacher=shallow)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        objective_loss("pred", student, labels, MASK, teacher=teacher, temperature=0.0)
    with pytest.raises(ValueError, match="use_attention needs attentions"):
        objective_loss("hidden", student, labels, MASK, teacher=dict(vars(teacher), attentions=None),
                   use_attention=True)
    with pytest.raises(ValueError, match="one exit layer per logits array"):
        objective_loss("hard", dict(vars(student), exit_layers=(2,)), labels, MASK)
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\) = \(3,\)"):
        objective_loss("hard", student, labels[:2], MASK)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B, T\) = \(3, 5\)"):
        objective_loss("hidden", student, labels, MASK[:, :4], teacher=teacher)
