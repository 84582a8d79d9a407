"""The fused hot-path loops (npcosteff.kernels.fused, the compiled AdamW update) against their
plain NumPy twins in npcosteff.kernels.reference (the attention core: tests/test_chunked_attention.py).

float64: the same operations in the same order, so results are equal to the last bit, or
(where a float64 sum is reordered) within a few ulps: tolerance 1e-15 relative, with the
reason at each check. float32 GELU uses a polynomial approximation of the normal CDF with a
relative error below 2e-13 (checked on a dense grid), far below float32's rounding step
(6e-8): rounded results equal the kernel's except for values within 2e-13 of a rounding
boundary, which then differ by one ulp; the test bounds both the ulp distance (<= 1) and
how often it happens (< 1e-5 of the elements).
"""

import math

import numba
import numpy as np
import pytest
from scipy.special import erfc

from npcosteff import kernels
from npcosteff.kernels import reference
from npcosteff.kernels import common, fast_softmax, fused
import npcosteff.optim as optim


@numba.njit
def _phi_grid(v, phi, gauss):
    for i in range(v.size):
        phi[i], gauss[i] = fused._phi_and_gauss(v[i])


def test_normal_cdf_approximation_is_accurate_to_2e_13():
    rng = np.random.default_rng(0)
    # |v| <= 14.8: beyond a = 10.5 (|v| = 14.85) the CDF is set to 0, where float32 GELU underflows.
    v = np.concatenate([np.linspace(-14.8, 14.8, 400_001), rng.uniform(-14.8, 14.8, 200_000)])
    phi, gauss = np.empty_like(v), np.empty_like(v)
    _phi_grid(v, phi, gauss)
    exact = 0.5 * erfc(-v * (1.0 / math.sqrt(2.0)))
    assert np.max(np.abs(phi / exact - 1.0)) < 2e-13
    assert np.max(np.abs(gauss / np.exp(-0.5 * v * v) - 1.0)) < 2e-13


def test_fit_coefficients_reproduces_the_stored_polynomials():
    q, e = fused.fit_coefficients()
    u = np.linspace(-1.0, 1.0, 10_001)
    # Compared by value on the fitted interval, not coefficient by coefficient: a degree-16
    # least-squares fit is ill-conditioned in the power basis, so LAPACK builds differ in the
    # ~11th digit of single coefficients while the polynomials agree to ~1e-15.
    for fitted, stored in ((q, fused._ERFCX_POLY), (e, fused._EXP_POLY)):
        a = np.polynomial.polynomial.polyval(u, fitted)
        b = np.polynomial.polynomial.polyval(u, stored)
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)


@pytest.mark.parametrize("with_mask", [False, True])
def test_bias_gelu_float64_is_the_kernel_bit_for_bit(with_mask):
    rng = np.random.default_rng(1)
    pre = 3.0 * rng.standard_normal((37, 23))
    bias = rng.standard_normal(23)
    mask = rng.random(23) if with_mask else None
    expect_pre = pre + bias
    expect = kernels.fast.gelu(expect_pre) * (mask if with_mask else 1.0)
    act = fused.bias_gelu(pre, bias, mask)
    np.testing.assert_array_equal(pre, expect_pre)                 # pre += bias, in place
    np.testing.assert_array_equal(act, expect)                     # the same formula and libm erfc
    dact = rng.standard_normal(pre.shape)
    expect_d = kernels.fast.gelu_backward(dact * (mask if with_mask else 1.0), pre)
    act2 = np.empty_like(act)
    d = fused.bias_gelu_backward(dact.copy(), pre, mask, act_out=act2)
    np.testing.assert_array_equal(d, expect_d)
    np.testing.assert_array_equal(act2, act)                       # the recomputed activation


def ulp_distance(a, b):
    """Distance in float32 ulps; +0 and -0 count as equal (x + 0 turns -0 into +0): the sign of a
    zero that stands for a value below the smallest subnormal is not a numerical difference."""
    return np.abs((a + np.float32(0)).view(np.int32).astype(np.int64) - (b + np.float32(0)).view(np.int32))


def test_bias_gelu_float32_agrees_with_the_kernel_to_one_rounding():
    rng = np.random.default_rng(2)
    pre = (4.0 * rng.standard_normal((512, 1536))).astype(np.float32)
    bias = (0.1 * rng.standard_normal(1536)).astype(np.float32)
    mask = rng.random(1536).astype(np.float32)
    s = pre + bias
    expect = kernels.fast.gelu(s) * mask
    p = pre.copy()
    act = fused.bias_gelu(p, bias, mask)
    np.testing.assert_array_equal(p, s)
    ulps = ulp_distance(act, expect)
    assert ulps.max() <= 1 and np.count_nonzero(ulps) < 1e-5 * act.size
    dact = rng.standard_normal(pre.shape).astype(np.float32)
    expect_d = kernels.fast.gelu_backward(dact * mask, s)
    act2 = np.empty_like(act)
    d = fused.bias_gelu_backward(dact.copy(), s, mask, act_out=act2)
    ulps = ulp_distance(d, expect_d)
    assert ulps.max() <= 1 and np.count_nonzero(ulps) < 1e-5 * d.size
    np.testing.assert_array_equal(act2, act)


def test_gelu_float32_special_values_match_the_kernel():
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 14.0, -14.0, 14.9, -14.9, 40.0, -40.0, 3e38, -3e38,
                  np.inf, -np.inf, np.nan], np.float32).reshape(1, -1)
    zero = np.zeros(x.shape[1], np.float32)
    x = x + zero                                                   # as bias_gelu's `pre += bias` (-0 + 0 = +0)
    with np.errstate(invalid="ignore", over="ignore"):
        expect = kernels.fast.gelu(x)
        expect_d = kernels.fast.gelu_backward(np.ones_like(x), x)
    act = fused.bias_gelu(x.copy(), zero)
    d = fused.bias_gelu_backward(np.ones_like(x), x)
    np.testing.assert_array_equal(act, expect)                     # NaNs compare equal here
    np.testing.assert_array_equal(np.signbit(act), np.signbit(expect))
    np.testing.assert_array_equal(d, expect_d)                     # by value: the sign of 0 may differ


@pytest.mark.parametrize("path", ["serial", "parallel"])
def test_attention_weights_and_probs_backward_match_the_unfused_code(monkeypatch, path):
    # the serial loops (little work, or a share of the attention core) and the parallel ones
    monkeypatch.setattr(common, "SERIAL_MAX_ELEMENTS", 1 << 62 if path == "serial" else -1)
    rng = np.random.default_rng(3)
    B, H, T = 3, 4, 7
    probs = reference.softmax(rng.standard_normal((B, H, T, T)))
    mask = reference.dropout_mask(rng, (B, H, T, T), 0.3, np.float64)
    hm = rng.random(H) + 0.5
    extra = rng.standard_normal((B, H, T, T))
    np.testing.assert_array_equal(fused.attention_weights(probs, mask, hm), probs * mask * hm.reshape(1, H, 1, 1))
    assert fused.attention_weights(probs) is probs
    for m, h, e in [(mask, hm, extra), (None, None, None), (mask, None, None), (None, hm, extra)]:
        dw = rng.standard_normal((B, H, T, T))
        dp = dw * (1.0 if h is None else h.reshape(1, H, 1, 1)) * (1.0 if m is None else m) + (0.0 if e is None else e)
        expect = reference.softmax_backward(dp, probs)
        got = fused.attention_probs_backward(dw.copy(), probs, h, m, e)
        # Only the float64 dot sum_k dp_k p_k is summed in another order: a few ulps of O(1).
        np.testing.assert_allclose(got, expect, rtol=1e-15, atol=1e-15)


def test_scatter_add_rows_is_np_add_at():
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 6, 50)                                   # many repeats
    rows = rng.standard_normal((50, 5)).astype(np.float32)
    table = rng.standard_normal((6, 5)).astype(np.float32)
    expect = table.copy()
    np.add.at(expect, ids, rows)
    fused.scatter_add_rows(table, ids, rows)
    np.testing.assert_array_equal(table, expect)                   # the same additions in the same order
    with pytest.raises(ValueError, match="ids must lie in 0..5"):
        fused.scatter_add_rows(table, np.array([6]), rows[:1])
    with pytest.raises(ValueError, match="rows has shape"):
        fused.scatter_add_rows(table, ids, rows[:, :4])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="pre must be a C-contiguous 2-D array"):
        fused.bias_gelu(np.zeros((2, 3, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="bias has shape"):
        fused.bias_gelu(np.zeros((2, 3)), np.zeros(4))
    with pytest.raises(TypeError, match="dact has dtype float32, expected float64"):
        fused.bias_gelu_backward(np.zeros((2, 3), np.float32), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="probs_dropout has shape"):
        fused.attention_probs_backward(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3)), None, np.zeros((1, 2, 3, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.5)])
def test_compiled_adamw_update_is_the_numpy_update_bit_for_bit(dtype, betas):
    def run(implementation):
        previous = kernels.current()
        kernels.use(implementation)
        try:
            rng = np.random.default_rng(6)
            params = {"a.weight": rng.standard_normal((9, 7)).astype(dtype),
                      "a.bias": rng.standard_normal(7).astype(dtype)}
            opt = optim.AdamW(params, 1e-2, betas=betas, weight_decay=0.1)
            for k in range(4):
                grads = {n: (rng.standard_normal(p.shape) * 10.0 ** rng.integers(-4, 3)).astype(dtype)
                         for n, p in params.items()}
                grads["a.weight"] = np.asfortranarray(grads["a.weight"])   # a non-contiguous gradient too
                opt.step(grads, lr=1e-2 * (k + 1))
        finally:
            kernels.use(previous)
        return params, opt.exp_avg, opt.exp_avg_sq

    for got, expect in zip(run("fast"), run("reference")):
        for n in expect:
            np.testing.assert_array_equal(got[n], expect[n])


def test_adamw_update_twins_agree_on_one_call():
    rng = np.random.default_rng(8)
    p, g = rng.standard_normal(50).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    m, v = rng.standard_normal(50).astype(np.float32) * 0.1, rng.random(50).astype(np.float32)
    args = dict(lr=3e-3, weight_decay=0.01, beta1=0.9, beta2=0.999, eps=1e-8, step=7)
    a = [x.copy() for x in (p, g, m, v)]
    b = [x.copy() for x in (p, g, m, v)]
    fused.adamw_update(*a, **args)
    reference.adamw_update(*b, **args)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)                        # the same operations, the same rounding
    assert not np.array_equal(a[0], p)                             # and the parameter did move


def test_reference_twins_are_the_unfused_numpy_steps():
    """The switch's reference twins of the fused steps are the unfused NumPy code."""
    rng = np.random.default_rng(7)
    previous = kernels.current()
    kernels.use("reference")
    try:
        pre = rng.standard_normal((5, 6)).astype(np.float32)
        bias, mask = rng.standard_normal(6).astype(np.float32), rng.random(6).astype(np.float32)
        p = pre.copy()
        act = kernels.bias_gelu(p, bias, mask)
        np.testing.assert_array_equal(act, reference.gelu(pre + bias) * mask)
        dact = rng.standard_normal((5, 6)).astype(np.float32)
        act2 = np.empty_like(act)
        d = kernels.bias_gelu_backward(dact.copy(), p, mask, act_out=act2)
        np.testing.assert_array_equal(d, reference.gelu_backward(dact * mask, p))
        np.testing.assert_array_equal(act2, act)
        probs = reference.softmax(rng.standard_normal((2, 3, 4, 4)))
        m = reference.dropout_mask(rng, probs.shape, 0.3, np.float64)
        dw = rng.standard_normal(probs.shape)
        np.testing.assert_array_equal(kernels.attention_probs_backward(dw.copy(), probs, None, m),
                                      reference.softmax_backward(dw * m, probs))
        np.testing.assert_array_equal(kernels.attention_weights(probs, m), probs * m)
    finally:
        kernels.use(previous)


@numba.njit
def _exp_grid(t, out):
    for i in range(t.size):
        out[i] = fast_softmax._exp_f32_range(t[i])


def test_float32_softmax_exp_is_accurate_to_5e_14():
    """The vectorizable exp of the float32 softmax: ~3e-14 relative on the range it serves."""
    t = np.concatenate([np.linspace(-110.0, 0.0, 200_001), -np.random.default_rng(9).exponential(5.0, 100_000)])
    t = np.maximum(t, -110.0)
    got = np.empty_like(t)
    _exp_grid(t, got)
    assert np.max(np.abs(got / np.exp(t) - 1.0)) < 5e-14


def test_float32_softmax_differs_from_the_reference_by_at_most_one_ulp_rarely():
    # The reason for the bound: the exp's ~3e-14 error moves a probability across a float32
    # rounding boundary only when it lies within 3e-14 of it (well under 1e-5 of the values).
    rng = np.random.default_rng(10)
    scores = (4.0 * rng.standard_normal((64, 12, 64, 64))).astype(np.float32)
    mask = np.where(rng.random((64, 1, 1, 64)) < 0.2, np.finfo(np.float32).min, 0.0).astype(np.float32)
    mask[:, :, :, 0] = 0.0                                         # every row keeps a real token
    got, expect = kernels.fast.softmax(scores, mask), reference.softmax(scores, mask)
    ulps = np.abs(got.view(np.int32).astype(np.int64) - expect.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1
    assert np.mean(ulps > 0) < 1e-5
    np.testing.assert_array_equal(got[np.broadcast_to(mask < 0, got.shape)], 0.0)   # padding gets exactly 0
