"""The checks of npcosteff.exercises: a right answer passes, a wrong one fails and says why."""

from __future__ import annotations

import math

import numpy as np
import pytest

from npcosteff import exercises as ex
from npcosteff.kernels import reference
from npcosteff.losses import cross_entropy_loss, cross_entropy_loss_backward


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


def test_right_answers_pass(capsys):
    assert ex.check_softmax_backward(softmax_backward_ok)
    assert ex.check_attention_backward(attention_backward_ok)
    assert ex.check_entropy_exit(exit_layers_ok)
    assert ex.check_head_scores(head_scores_ok)
    assert ex.check_flops(layer_flops_ok)
    out = capsys.readouterr().out
    assert out.count("passed") == 5, out


def test_a_stub_is_reported_not_failed(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError("write the softmax backward here")
    for check in (ex.check_softmax_backward, ex.check_attention_backward, ex.check_entropy_exit,
                  ex.check_head_scores, ex.check_flops):
        assert check(stub) is False
    assert ex.check_gradient(lambda x: x, stub, {"x": np.ones(3)}) is False
    out = capsys.readouterr().out
    assert out.count("not written yet (write the softmax backward here)") == 6, out


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
