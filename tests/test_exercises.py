"""The checks of npcosteff.exercises: a right answer passes, a wrong one fails and says why."""

from __future__ import annotations

import math

import numpy as np
import pytest

from npcosteff import exercises as ex
from npcosteff.kernels import reference
from npcosteff.losses import cross_entropy_loss, cross_entropy_loss_backward, log_softmax
from npcosteff.operating_point import simulate_exit


# --------------------------------------------------------------------------- right answers

def softmax_backward_ok(dP, P):
    return P * (dP - (dP * P).sum(axis=-1, keepdims=True))


def attention_backward_ok(dO, Q, K, V, P):
    dh = Q.shape[-1]
    dV = np.swapaxes(P, -1, -2) @ dO
    dS = softmax_backward_ok(dO @ np.swapaxes(V, -1, -2), P)
    return dS @ K / math.sqrt(dh), np.swapaxes(dS, -1, -2) @ Q / math.sqrt(dh), dV


def exit_layers_ok(logits, tau):
    N = logits[0].shape[0]
    layer = np.full(N, len(logits))
    for k in reversed(range(len(logits))):
        z = logits[k] - logits[k].max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        H = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
        layer = np.where(H < tau, k + 1, layer)
    return layer


def head_scores_ok(W, grads, num_heads):
    s = np.abs(W * np.abs(grads).sum(axis=0))
    return s.sum(axis=0).reshape(num_heads, -1).sum(axis=1)


def layer_flops_ok(n, d, A, F):
    return 8 * n * d * A + 4 * n * n * A + 4 * n * d * F


def equilibrium_ok(g_exit, g_hid, g_deeper, l, L):
    return (g_exit + g_hid + (L - l) * g_deeper) / (L - l + 1)


def distillation_ok(z, t, T):
    log_q, p = log_softmax(z / T), np.exp(log_softmax(t / T))
    return float(-(p * log_q).sum(axis=1).mean()), (np.exp(log_q) - p) / (z.shape[0] * T)


def neuron_scores_ok(s_in, s_out):
    return s_in.sum(axis=1) + s_out.sum(axis=0)


def ffn_slice_ok(W_I, b_I, W_O, keep):
    return W_I[keep], b_I[keep], W_O[:, keep]


def low_rank_ok(E, r):
    U, S, Vt = np.linalg.svd(E, full_matrices=False)
    return U[:, :r] * S[:r], Vt[:r]


def _scored_thresholds(half, thresholds):
    E, n, _ = half["logits"].shape
    out = []
    for tau in thresholds:
        layers, chosen = simulate_exit(half["logits"], list(range(1, E + 1)), threshold=tau)
        out.append((tau, np.mean(chosen.argmax(1) == half["labels"]), half["flops"][layers - 1, np.arange(n)].mean()))
    return out


def operating_point_ok(choose, report, thresholds, target):
    scored = _scored_thresholds(choose, thresholds)
    good = [s for s in scored if s[1] >= target * choose["teacher_right"].mean()]
    return min(good, key=lambda s: (s[2], -s[1]))[0] if good else max(scored, key=lambda s: (s[1], -s[2]))[0]


RIGHT = [(ex.check_softmax_backward, softmax_backward_ok), (ex.check_attention_backward, attention_backward_ok),
         (ex.check_entropy_exit, exit_layers_ok), (ex.check_head_scores, head_scores_ok),
         (ex.check_flops, layer_flops_ok), (ex.check_gradient_equilibrium, equilibrium_ok),
         (ex.check_distillation_loss, distillation_ok), (ex.check_neuron_scores, neuron_scores_ok),
         (ex.check_ffn_slice, ffn_slice_ok), (ex.check_low_rank_embedding, low_rank_ok),
         (ex.check_operating_point, operating_point_ok)]


def test_right_answers_pass(capsys):
    for check, fn in RIGHT:
        assert check(fn) is True, check.__name__
    out = capsys.readouterr().out
    assert out.count(": passed (") == len(RIGHT), out


def test_every_check_is_tested():
    checks = {n for n in ex.__all__ if n.startswith("check_") and n != "check_gradient"}
    assert checks == {check.__name__ for check, _ in RIGHT}


def test_a_stub_is_reported_not_failed(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError("write the softmax backward here")
    for check, _ in RIGHT:
        assert check(stub) is False, check.__name__
    assert ex.check_gradient(lambda x: x, stub, {"x": np.ones(3)}) is False
    out = capsys.readouterr().out
    assert out.count("not written yet (write the softmax backward here)") == len(RIGHT) + 1, out


# --------------------------------------------------------------------------- wrong answers

@pytest.mark.parametrize("wrong, message", [
    (lambda dP, P: dP * P, r"dS is wrong for P of shape \(3, 5\): max \|error\|"),                 # no row-sum term
    (lambda dP, P: -softmax_backward_ok(dP, P), "sign is flipped"),
    (lambda dP, P: softmax_backward_ok(dP, P)[..., :-1], r"dS has shape \(3, 4\), expected \(3, 5\)"),
    (lambda dP, P: None, "returned None"),
])
def test_softmax_backward_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_softmax_backward(wrong)


def test_softmax_backward_sum_over_the_wrong_axis():
    def wrong(dP, P):
        return P * (dP - (dP * P).sum(axis=-2, keepdims=True))
    with pytest.raises(AssertionError, match="dS is wrong"):
        ex.check_softmax_backward(wrong)


def _scaled(k, factor):
    def wrong(*args):
        out = list(attention_backward_ok(*args))
        out[k] = out[k] * factor
        return tuple(out)
    return wrong


@pytest.mark.parametrize("wrong, message", [
    (_scaled(0, math.sqrt(2.0)), r"dQ is wrong .*against finite differences.*1\.414 times the right answer"),
    (_scaled(1, -1.0), "dK is wrong.*sign is flipped"),
    (_scaled(2, 0.5), "dV is wrong"),
    (lambda dO, Q, K, V, P: attention_backward_ok(dO, Q, K, V, P)[:2], "must return three arrays"),
])
def test_attention_backward_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_attention_backward(wrong)


def test_attention_backward_transposed_probabilities():
    def wrong(dO, Q, K, V, P):                      # dV = P dO instead of P^T dO
        dQ, dK, _ = attention_backward_ok(dO, Q, K, V, P)
        return dQ, dK, P @ dO
    with pytest.raises(AssertionError, match="dV is wrong"):
        ex.check_attention_backward(wrong)


@pytest.mark.parametrize("wrong, message", [
    (lambda logits, tau: exit_layers_ok(logits, tau) - 1, "look 0-based"),
    (lambda logits, tau: exit_layers_ok(logits, -tau if tau else 1.0), r"wrong exit for \d+ of 24 samples"),
    (lambda logits, tau: exit_layers_ok(logits, tau)[:-1], r"shape \(23,\), expected \(24,\)"),
])
def test_entropy_exit_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_entropy_exit(wrong)


def test_entropy_exit_max_prob_instead_of_entropy():
    def wrong(logits, tau):                          # leaves when 1 - max p < tau: a different rule
        N = logits[0].shape[0]
        layer = np.full(N, len(logits))
        for k in reversed(range(len(logits))):
            p = np.exp(logits[k] - logits[k].max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            layer = np.where(1 - p.max(axis=1) < tau, k + 1, layer)
        return layer
    with pytest.raises(AssertionError, match="should leave at layer"):
        ex.check_entropy_exit(wrong)


@pytest.mark.parametrize("wrong, message", [
    (lambda W, g, H: np.abs(W * g.sum(axis=0)).sum(axis=0).reshape(H, -1).sum(axis=1), "score vector is wrong"),
    (lambda W, g, H: np.abs(W * np.abs(g).sum(axis=0)).sum(axis=1)[:H], "score vector is wrong"),   # rows, not heads
    (lambda W, g, H: np.abs(W * np.abs(g).sum(axis=0)).sum(axis=0), r"shape \(8,\), expected \(4,\)"),
])
def test_head_scores_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_head_scores(wrong)


@pytest.mark.parametrize("wrong, message", [
    (lambda n, d, A, F: 4 * n * d * A + 4 * n * n * A + 4 * n * d * F, r"expected 1,862,270,976 \(0\.838 of it\)"),
    (lambda n, d, A, F: (8 * n * d * A + 4 * n * n * A + 4 * n * d * F) // 2, "multiply-add is 2 FLOPs"),
    (lambda n, d, A, F: "many", "must return a number"),
])
def test_flops_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_flops(wrong)


# --------------------------------------------------------------------------- check_gradient

def test_check_gradient_accepts_library_backwards():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    assert ex.check_gradient(reference.gelu, lambda dy, x: {"x": reference.gelu_backward(dy, x)}, {"x": x})
    z, y = rng.standard_normal((4, 3)), np.array([0, 2, 1, 1])
    assert ex.check_gradient(lambda z, y: cross_entropy_loss(z, y)[0],
                             lambda dl, z, y: {"z": cross_entropy_loss_backward(cross_entropy_loss(z, y)[1], dl)},
                             {"z": z, "y": y}, name="cross-entropy")
    W, b = rng.standard_normal((5, 4)), rng.standard_normal(5)
    assert ex.check_gradient(lambda x, W, b: x @ W.T + b,
                             lambda dy, x, W, b: (dy @ W, dy.T @ x, dy.sum(axis=0)), {"x": x, "W": W, "b": b},
                             name="linear")


def test_check_gradient_catches_a_wrong_backward():
    x = np.random.default_rng(1).standard_normal((3, 4))
    W = np.random.default_rng(2).standard_normal((5, 4))
    with pytest.raises(AssertionError, match=r"linear: dW is wrong .*against finite differences, W of shape \(5, 4\)"):
        ex.check_gradient(lambda x, W: x @ W.T, lambda dy, x, W: (dy @ W, dy.T @ x * 2.0), {"x": x, "W": W},
                          name="linear")
    with pytest.raises(AssertionError, match="returned 1 gradients, expected 2"):
        ex.check_gradient(lambda x, W: x @ W.T, lambda dy, x, W: dy @ W, {"x": x, "W": W}, name="linear")
    with pytest.raises(AssertionError, match=r"dW has shape \(4, 5\), expected \(5, 4\)"):
        ex.check_gradient(lambda x, W: x @ W.T, lambda dy, x, W: {"W": x.T @ dy}, {"x": x, "W": W})


def test_inputs_are_not_changed():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3))
    before = x.copy()
    ex.check_gradient(lambda x: np.tanh(x), lambda dy, x: {"x": dy * (1 - np.tanh(x) ** 2)}, {"x": x})
    assert np.array_equal(x, before)


# --------------------------------------------------------------------------- gradient equilibrium

@pytest.mark.parametrize("wrong, message", [
    (lambda e, h, g, l, L: e + h + g, r"gradient of h_l is wrong for layer l = 1 of L = 6.*plain sum"),
    (lambda e, h, g, l, L: (e + (L - l) * g) / (L - l + 1) + h, "g_hid is added unscaled.*exit_layers"),
    (lambda e, h, g, l, L: ((L - l) * e + h + g) / (L - l + 1), "belongs to g_deeper"),
    (lambda e, h, g, l, L: (e + h + (L - l) * g) / max(L - l, 1), "denominator is L - l \\+ 1"),
    (lambda e, h, g, l, L: None, "returned None"),
    (lambda e, h, g, l, L: "no idea", "has shape \\(\\), expected \\(2, 3, 4\\)"),
    (lambda e, h, g, l, L: equilibrium_ok(e, h, g, l, L)[0], r"has shape \(3, 4\), expected \(2, 3, 4\)"),
])
def test_gradient_equilibrium_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_gradient_equilibrium(wrong)


def test_gradient_equilibrium_runs_the_learners_rule_inside_the_backward_pass():
    calls = []

    def counting(e, h, g, l, L):
        calls.append((l, L))
        return equilibrium_ok(e, h, g, l, L)
    assert ex.check_gradient_equilibrium(counting)
    assert calls[-4:] == [(4, 4), (3, 4), (2, 4), (1, 4)]            # every layer of the 4-layer model, top down

    def right_on_random_arrays_only(e, h, g, l, L):              # a rule that is off once inside a real backward
        return equilibrium_ok(e, h, g, l, L) * (1.0 if e.shape == (2, 3, 4) else 1.5)
    with pytest.raises(AssertionError, match="inside the backward pass of a 4-layer model"):
        ex.check_gradient_equilibrium(right_on_random_arrays_only)


# --------------------------------------------------------------------------- prediction distillation

def _naive_distillation(z, t, T):                                   # log(softmax): -inf for large logits
    with np.errstate(all="ignore"):
        q = np.exp(z / T) / np.exp(z / T).sum(axis=1, keepdims=True)
        p = np.exp(t / T) / np.exp(t / T).sum(axis=1, keepdims=True)
        return float(-(p * np.log(q)).sum(axis=1).mean()), (q - p) / (z.shape[0] * T)


def _kl_distillation(z, t, T):
    loss, dz = distillation_ok(z, t, T)
    p = np.exp(log_softmax(t / T))
    return loss + float((p * log_softmax(t / T)).sum(axis=1).mean()), dz


@pytest.mark.parametrize("wrong, message", [
    (_naive_distillation, "log_softmax"),
    (_kl_distillation, "KL divergence"),
    (lambda z, t, T: (distillation_ok(z, t, T)[0], distillation_ok(z, t, T)[1] * T ** 2),
     r"dz is wrong for B = 6, C = 5, T = 2.0.*4 times the right answer"),
    (lambda z, t, T: (distillation_ok(z, t, T)[0] * z.shape[0], distillation_ok(z, t, T)[1]),
     "the loss is wrong.*4 times the right answer"),
    (lambda z, t, T: (distillation_ok(z, t, T)[0], distillation_ok(z, t, T)[1] * T),
     r"dz is wrong for B = 6, C = 5, T = 2.0.*2 times"),
    (lambda z, t, T: distillation_ok(z, t, T)[1], "must return two things"),
    (lambda z, t, T: (None, distillation_ok(z, t, T)[1]), "returned None for the loss"),
])
def test_distillation_loss_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_distillation_loss(wrong)


# --------------------------------------------------------------------------- FFN neurons

@pytest.mark.parametrize("wrong, message", [
    (lambda s_in, s_out: s_in.sum(axis=1), "W_I's rows only"),
    (lambda s_in, s_out: s_out.sum(axis=0), "W_O''s columns only"),
    (lambda s_in, s_out: s_in.sum(axis=0) + s_out.sum(axis=1), r"has shape \(6,\), expected \(10,\)"),
    (lambda s_in, s_out: s_in.max(axis=1) + s_out.max(axis=0), "score vector is wrong"),
])
def test_neuron_scores_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_neuron_scores(wrong)


@pytest.mark.parametrize("wrong, message", [
    (lambda W_I, b_I, W_O, keep: (W_I[keep], b_I[keep], W_O.T[keep]), r"W_O' has shape \(5, 8\), expected \(8, 5\)"),
    (lambda W_I, b_I, W_O, keep: (W_I[keep], b_I, W_O[:, keep]), r"b_I' has shape \(12,\), expected \(5,\)"),
    (lambda W_I, b_I, W_O, keep: (W_I[np.sort(keep)], b_I[np.sort(keep)], W_O[:, keep]),
     "output of the sliced FFN is wrong.*same order"),
    (lambda W_I, b_I, W_O, keep: (W_I[keep], b_I[keep]), "must return three arrays"),
])
def test_ffn_slice_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_ffn_slice(wrong)


# --------------------------------------------------------------------------- low-rank embedding

def _svd(E):
    return np.linalg.svd(E, full_matrices=False)


@pytest.mark.parametrize("wrong, message", [
    (lambda E, r: (_svd(E)[0][:, :r], _svd(E)[2][:r]), r"A @ P is wrong.*Eckart-Young"),         # S left out
    (lambda E, r: (_svd(E)[0][:, -r:] * _svd(E)[1][-r:], _svd(E)[2][-r:]), "best rank-4 approximation"),
    (lambda E, r: (_svd(E)[0][:, :r] * _svd(E)[1][:r], _svd(E)[2][:r].T), r"P has shape \(12, 4\), expected \(4, 12\)"),
    (lambda E, r: (E, np.eye(E.shape[1])), r"A has shape \(40, 12\), expected \(40, 4\)"),
])
def test_low_rank_embedding_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_low_rank_embedding(wrong)


# --------------------------------------------------------------------------- operating point

def _reads_the_report_half(choose, report, thresholds, target):
    both = {k: np.concatenate([choose[k], report[k]], axis=-1) for k in ("labels",)}
    return operating_point_ok(choose, report, thresholds, target) if both else None


def _most_accurate(choose, report, thresholds, target):
    return max(_scored_thresholds(choose, thresholds), key=lambda s: (s[1], -s[2]))[0]


def _absolute_target(choose, report, thresholds, target):          # accuracy >= target, not target x teacher's
    scored = _scored_thresholds(choose, thresholds)
    good = [s for s in scored if s[1] >= target]
    return min(good, key=lambda s: (s[2], -s[1]))[0] if good else max(scored, key=lambda s: (s[1], -s[2]))[0]


def _no_fallback(choose, report, thresholds, target):
    scored = _scored_thresholds(choose, thresholds)
    good = [s for s in scored if s[1] >= target * choose["teacher_right"].mean()]
    return min(good, key=lambda s: (s[2], -s[1]))[0] if good else None


@pytest.mark.parametrize("wrong, message", [
    (_reads_the_report_half, r"read the report half \(report\['labels'\]\)"),
    (lambda choose, report, thresholds, target: operating_point_ok(choose, np.asarray(report), thresholds, target),
     "read the report half"),
    (_most_accurate, r"chose tau = .* for target 0.965 .*fewest FLOPs among the thresholds"),
    (_absolute_target, "chose tau = "),
    (_no_fallback, "must return one threshold"),
    (lambda choose, report, thresholds, target: 0.33, r"returned 0.33, which is not one of the thresholds"),
])
def test_operating_point_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ex.check_operating_point(wrong)


def test_operating_point_accepts_a_tie():
    def last_of_equals(choose, report, thresholds, target):       # among equal (FLOPs, accuracy) take the last
        scored = _scored_thresholds(choose, thresholds)[::-1]
        good = [s for s in scored if s[1] >= target * choose["teacher_right"].mean()]
        return min(good, key=lambda s: (s[2], -s[1]))[0] if good else max(scored, key=lambda s: (s[1], -s[2]))[0]
    assert ex.check_operating_point(last_of_equals)
