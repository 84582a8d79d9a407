"""The attention core by chunks of samples (npcosteff.kernels.chunked_attention) against its plain
twin, the step-by-step npcosteff.kernels.reference.attention_core, and against the same steps
taken by the fast kernels over the whole batch at once.

float32: the same (T, d_h) products and the same row loops, so the very same numbers, to the
bit, whether the samples go in one share or two, one sample per chunk or all of them.
float64 against the reference: the softmax's exp and the float64 sums are the fast kernels'
(a few ulps of O(1) values), so 1e-13.
"""

import numpy as np
import pytest

from npcosteff.kernels import chunked_attention as core_module
from npcosteff.kernels import common, fast, pool, reference

threadpoolctl = pytest.importorskip("threadpoolctl")

B, H, T, D_H = 5, 3, 16, 8


def _inputs(dtype, seed=0):
    """q, k, v as the heads of one (B*T, 3*H*d_h) array (strided views, as a layer makes them),
    dcontext, a padding mask of different lengths per sample, a dropout mask, a head mask and
    a gradient on the probabilities; random, upstream gradients included."""
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B * T, 3 * H * D_H)).astype(dtype)
    q, k, v = (qkv.reshape(B, T, 3, H, D_H)[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
    dcontext = rng.standard_normal((B, H, T, D_H)).astype(dtype)
    lengths = np.array([16, 5, 11, 1, 9])
    mask = np.where(np.arange(T) < lengths[:, None], 0.0, np.finfo(dtype).min).astype(dtype).reshape(B, 1, 1, T)
    drop = reference.dropout_mask(rng, (B, H, T, T), 0.2, dtype)
    head_mask = (rng.random(H) + 0.5).astype(dtype)
    extra = rng.standard_normal((B, H, T, T)).astype(dtype)
    return q, k, v, dcontext, mask, drop, head_mask, extra


def _fast_steps(q, k, v, dcontext, mask, drop, head_mask, extra, inference=False):
    """The same core with the fast kernels over the whole batch, step by step."""
    scores = np.matmul(q, k.transpose(0, 1, 3, 2))
    probs = (fast.softmax_inference if inference else fast.softmax)(scores, mask)
    weights = fast.attention_weights(probs, drop, head_mask)
    context = np.matmul(weights, v)
    dweights = np.matmul(dcontext, v.transpose(0, 1, 3, 2))
    dv = np.matmul(weights.transpose(0, 1, 3, 2), dcontext)
    dscores = fast.attention_probs_backward(dweights, probs, head_mask, drop, extra)
    return context, probs, np.matmul(dscores, k), np.matmul(dscores.transpose(0, 1, 3, 2), q), dv


@pytest.fixture(params=["one share", "two shares"])
def shares(request, monkeypatch):
    """The samples in one share (the calling thread) or one share per BLAS thread (2)."""
    monkeypatch.setattr(core_module, "MIN_FLOPS", 1e30 if request.param == "one share" else 0.0)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        yield request.param


@pytest.mark.parametrize("samples_per_chunk", [1, 2, B])
@pytest.mark.parametrize("masks", ["all", "none", "padding only"])
def test_float32_core_is_the_fast_steps_to_the_bit(shares, monkeypatch, samples_per_chunk, masks):
    monkeypatch.setattr(common, "CORE_CHUNK_FLOATS", samples_per_chunk * H * T * T)
    q, k, v, dcontext, mask, drop, head_mask, extra = _inputs(np.float32)
    if masks == "none":
        mask = drop = head_mask = extra = None
    elif masks == "padding only":
        drop = head_mask = extra = None
    handed_off = []
    workers = pool.workers
    monkeypatch.setattr(pool, "workers", lambda n: handed_off.append(n) or workers(n))
    context, probs = core_module.attention_core(q, k, v, mask, drop, head_mask)
    dq, dk, dv = core_module.attention_core_backward(dcontext, q, k, v, probs, drop, head_mask, extra)
    expected = _fast_steps(q, k, v, dcontext, mask, drop, head_mask, extra)
    for name, got, want in zip(("context", "probs", "dq", "dk", "dv"), (context, probs, dq, dk, dv), expected):
        np.testing.assert_array_equal(got, want, err_msg=name)
    # the shares did go to the pool (once forward, once backward), or not at all
    assert handed_off == ([1, 1] if shares == "two shares" and pool.blas_threads() == 2 else [])


def test_inference_core_uses_the_inference_softmax(shares):
    q, k, v, dcontext, mask, _, head_mask, _ = _inputs(np.float32, seed=1)
    context, probs = core_module.attention_core(q, k, v, mask, None, head_mask, inference=True)
    want_context, want_probs, *_ = _fast_steps(q, k, v, dcontext, mask, None, head_mask, None, inference=True)
    np.testing.assert_array_equal(probs, want_probs)
    np.testing.assert_array_equal(context, want_context)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_core_matches_its_plain_twin(shares, dtype):
    q, k, v, dcontext, mask, drop, head_mask, extra = _inputs(dtype, seed=2)
    got = core_module.attention_core(q, k, v, mask, drop, head_mask)
    want = reference.attention_core(q, k, v, mask, drop, head_mask)
    got += core_module.attention_core_backward(dcontext, q, k, v, got[1], drop, head_mask, extra)
    want += reference.attention_core_backward(dcontext, q, k, v, want[1], drop, head_mask, extra)
    # float64: the exp and the summation order of the fast softmax, a few ulps of O(1) values;
    # float32: one float32 rounding of the same float64 values (in practice bit-identical).
    tol = 1e-13 if dtype == np.float64 else 1e-6
    for name, g, w in zip(("context", "probs", "dq", "dk", "dv"), got, want):
        assert g.dtype == dtype and g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=0, atol=tol, err_msg=name)


def test_reference_core_is_the_textbook_attention():
    """The plain twin against softmax(q k^T + mask) v written out per sample and head (float64),
    and its backward against central differences of a random projection of its outputs."""
    q, k, v, dcontext, mask, drop, head_mask, extra = _inputs(np.float64, seed=3)
    context, probs = reference.attention_core(q, k, v, mask, drop, head_mask)
    for b in range(B):
        for h in range(H):
            s = q[b, h] @ k[b, h].T + mask[b, 0]
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(probs[b, h], p, rtol=0, atol=1e-15)
            np.testing.assert_allclose(context[b, h], (p * drop[b, h] * head_mask[h]) @ v[b, h], rtol=0, atol=1e-14)

    def loss(q_, k_, v_):
        c, p = reference.attention_core(q_, k_, v_, mask, drop, head_mask)
        return np.sum(c * dcontext) + np.sum(p * extra)

    dq, dk, dv = reference.attention_core_backward(dcontext, q, k, v, probs, drop, head_mask, extra)
    rng = np.random.default_rng(4)
    for grad, which in ((dq, 0), (dk, 1), (dv, 2)):
        direction = rng.standard_normal(q.shape)
        args = [np.array(a) for a in (q, k, v)]
        eps = 1e-6
        args[which] = args[which] + eps * direction
        up = loss(*args)
        args[which] = args[which] - 2 * eps * direction
        down = loss(*args)
        # central difference: O(eps^2) truncation and ~1e-16 / eps rounding of O(10) losses
        assert abs((up - down) / (2 * eps) - np.sum(grad * direction)) < 1e-6


def test_fewer_samples_than_threads_take_one_share(monkeypatch):
    monkeypatch.setattr(core_module, "MIN_FLOPS", 0.0)
    q, k, v, dcontext, mask, drop, head_mask, extra = _inputs(np.float32, seed=5)
    handed_off = []
    workers = pool.workers
    monkeypatch.setattr(pool, "workers", lambda n: handed_off.append(n) or workers(n))
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        context, probs = core_module.attention_core(q[:1], k[:1], v[:1], mask[:1], drop[:1], head_mask)
    assert handed_off == []
    want = _fast_steps(q[:1], k[:1], v[:1], dcontext[:1], mask[:1], drop[:1], head_mask, extra[:1])
    np.testing.assert_array_equal(context, want[0])
    np.testing.assert_array_equal(probs, want[1])


@pytest.mark.parametrize("impl", [reference, core_module], ids=["reference", "fast"])
def test_bad_inputs_are_named_alike(impl):
    q, k, v, dcontext, mask, drop, head_mask, extra = _inputs(np.float32, seed=7)
    with pytest.raises(ValueError, match=r"q must be a \(B, H, T, d_h\) array"):
        impl.attention_core(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="k .* and q .* differ"):
        impl.attention_core(q, k[:, :2], v)
    with pytest.raises(ValueError, match="v .* float64 and q .* float32 differ"):
        impl.attention_core(q, k, v.astype(np.float64))
    with pytest.raises(ValueError, match="does not broadcast to scores"):
        impl.attention_core(q, k, v, mask[:2])
    with pytest.raises(ValueError, match="probs_dropout has shape"):
        impl.attention_core(q, k, v, mask, drop[:, :2])
    with pytest.raises(ValueError, match="head_mask has shape"):
        impl.attention_core(q, k, v, mask, drop, head_mask[:2])
    context, probs = impl.attention_core(q, k, v, mask, drop, head_mask)
    with pytest.raises(ValueError, match="probs .* do not match q"):
        impl.attention_core_backward(dcontext, q, k, v, probs[:, :2].copy(), drop, head_mask)
    with pytest.raises(ValueError, match="dcontext .* and q .* differ"):
        impl.attention_core_backward(dcontext[:2], q, k, v, probs, drop, head_mask)
    with pytest.raises(ValueError, match="dprobs_extra has shape"):
        impl.attention_core_backward(dcontext, q, k, v, probs, drop, head_mask, extra[:2])
