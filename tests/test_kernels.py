"""Tests of npcosteff.kernels.

* reference kernels against PyTorch (forward values and autograd / aten backwards), in
  float64 and, for float32 inputs, against PyTorch run in float64 and rounded once;
* reference backwards against central finite differences (float64);
* fast (Numba) kernels against the reference kernels, float64 and float32, normal and
  extreme ranges, odd shapes, every mask layout;
* dropout mask statistics, input validation, and the implementation switch.

Tolerances. Both implementations compute in float64 and round once to the input dtype, so:
float64 comparisons allow relative differences of 1e-12 (the float64 paths differ only by
summation order and libm, ~1e-15 here; the margin covers row reductions); float32
comparisons allow one float32 rounding (F32_ULP). Where an output is a difference of
larger terms (GELU' near its root, softmax and LayerNorm backwards), rounding is absolute
in size, so an absolute tolerance scaled to the terms is added, with its reason.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from npcosteff import kernels
from npcosteff.kernels import common, fast, fast_softmax
from npcosteff.kernels import reference as ref

IMPLEMENTATIONS = [pytest.param(ref, id="reference"), pytest.param(fast, id="fast")]
DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]

EPS64 = 2.0**-52  # float64 machine epsilon
F32_ULP = 2.0**-23  # |a - b| <= F32_ULP * |b| allows a and b to differ by one float32 rounding
RTOL64 = 1e-12  # float64: paths differ at ~1e-15 (order of sums, libm); margin for row reductions
LN_EPS = 1e-5


def rtol_for(dtype) -> float:
    """Relative tolerance between two implementations that round a float64 result once."""
    return RTOL64 if np.dtype(dtype) == np.float64 else F32_ULP


def assert_same(actual, expected, *, rtol, atol=0.0):
    """Values within tolerance, and the same shape and dtype."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def t64(a, requires_grad=False) -> torch.Tensor:
    """A float64 torch copy of a NumPy array (float32 inputs are widened exactly)."""
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


def padding_mask(rng, batch: int, seq: int, dtype) -> np.ndarray:
    """Additive mask (B, 1, 1, T): 0 on kept keys, finfo.min on padding; key 0 always kept."""
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0] = seq - 2  # make sure some padding occurs
    keep = np.arange(seq)[None, :] < lengths[:, None]  # (B, T)
    return np.where(keep, 0.0, np.finfo(dtype).min).astype(dtype)[:, None, None, :]


@pytest.fixture(autouse=True)
def _restore_kernel_choice():
    """Tests that switch implementations must not leak the choice into other tests."""
    before = kernels.current()
    yield
    kernels.use(before)


@pytest.fixture(params=["serial", "parallel"])
def row_path(request, monkeypatch):
    """Run a fast LayerNorm / softmax test through the serial loop (little work, the one
    sample of inference) and through the parallel loop, whatever the test's size."""
    monkeypatch.setattr(common, "SERIAL_MAX_ELEMENTS", 1 << 62 if request.param == "serial" else -1)
    return request.param


# ---------------------------------------------------------------------------
# Reference against PyTorch
# ---------------------------------------------------------------------------

# Torch's GELU evaluates 1 + erf(x / sqrt 2), whose rounding error is absolute (~2^-53 |x|),
# so where GELU is tiny (x << 0) only an absolute comparison is meaningful: |x| <= ~12 here.
GELU_TORCH_ATOL = 16 * EPS64 * 12


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 4, 9, 9)])
def test_reference_gelu_matches_torch_float64(shape):
    rng = np.random.default_rng(0)
    x = 3.0 * rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    xt = t64(x, requires_grad=True)
    yt = F.gelu(xt, approximate="none")
    (yt * t64(dy)).sum().backward()
    assert_same(ref.gelu(x), yt.detach().numpy(), rtol=RTOL64, atol=GELU_TORCH_ATOL)
    assert_same(ref.gelu_backward(dy, x), xt.grad.numpy(), rtol=RTOL64, atol=GELU_TORCH_ATOL)


def test_reference_softmax_matches_torch_float64():
    rng = np.random.default_rng(1)
    scores = 3.0 * rng.standard_normal((2, 4, 9, 9))  # (B, H, T, T)
    mask = padding_mask(rng, 2, 9, np.float64)  # (B, 1, 1, T)
    dprobs = rng.standard_normal(scores.shape)
    st = t64(scores, requires_grad=True)
    pt = torch.softmax(st + t64(mask), dim=-1)
    (pt * t64(dprobs)).sum().backward()
    probs = ref.softmax(scores, mask)
    # Probabilities are <= 1 and backward terms are p * dp with |dp| <~ 4: absolute rounding
    # of a 9-term float64 row sum is below 9 * 4 * eps.
    assert_same(probs, pt.detach().numpy(), rtol=RTOL64, atol=9 * 4 * EPS64)
    assert_same(ref.softmax_backward(dprobs, probs), st.grad.numpy(), rtol=RTOL64, atol=9 * 4 * EPS64)


@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 16)])
def test_reference_layer_norm_matches_torch_float64(shape):
    rng = np.random.default_rng(2)
    d = shape[-1]
    x = 2.0 * rng.standard_normal(shape) + 0.5
    gamma = 1.0 + 0.3 * rng.standard_normal(d)
    beta = 0.3 * rng.standard_normal(d)
    dy = rng.standard_normal(shape)
    xt, gt, bt = t64(x, True), t64(gamma, True), t64(beta, True)
    yt, mean_t, rstd_t = torch.native_layer_norm(xt, (d,), gt, bt, LN_EPS)
    (yt * t64(dy)).sum().backward()
    y, mean, rstd = ref.layer_norm(x, gamma, beta, LN_EPS)
    # Outputs are O(1) sums of d terms: their absolute rounding is below d * eps per unit.
    atol = 4 * d * EPS64
    assert_same(y, yt.detach().numpy(), rtol=RTOL64, atol=atol)
    assert_same(mean, mean_t.detach().numpy().reshape(shape[:-1]), rtol=RTOL64, atol=atol)
    assert_same(rstd, rstd_t.detach().numpy().reshape(shape[:-1]), rtol=RTOL64)
    dx, dgamma, dbeta = ref.layer_norm_backward(dy, x, gamma, mean, rstd)
    n_rows = x.size // d  # dgamma, dbeta sum over every row
    assert_same(dx, xt.grad.numpy(), rtol=RTOL64, atol=atol)
    assert_same(dgamma, gt.grad.numpy(), rtol=RTOL64, atol=n_rows * atol)
    assert_same(dbeta, bt.grad.numpy(), rtol=RTOL64, atol=n_rows * atol)


def test_reference_add_layer_norm_matches_torch_float64():
    rng = np.random.default_rng(3)
    x, residual, dy = (rng.standard_normal((3, 5, 8)) for _ in range(3))
    gamma = 1.0 + 0.3 * rng.standard_normal(8)
    beta = 0.3 * rng.standard_normal(8)
    xt, rt, gt, bt = t64(x, True), t64(residual, True), t64(gamma, True), t64(beta, True)
    yt = F.layer_norm(xt + rt, (8,), gt, bt, LN_EPS)
    (yt * t64(dy)).sum().backward()
    y, s, mean, rstd = ref.add_layer_norm(x, residual, gamma, beta, LN_EPS)
    atol = 4 * 8 * EPS64  # as in the LayerNorm test: O(1) values from 8-term sums
    assert_same(y, yt.detach().numpy(), rtol=RTOL64, atol=atol)
    assert_same(s, x + residual, rtol=0.0)  # the sum is the exact float64 sum, as documented
    ds, dgamma, dbeta = ref.layer_norm_backward(dy, s, gamma, mean, rstd)
    assert_same(ds, xt.grad.numpy(), rtol=RTOL64, atol=atol)  # d/dx and d/dresidual are both ds
    assert_same(ds, rt.grad.numpy(), rtol=RTOL64, atol=atol)
    assert_same(dgamma, gt.grad.numpy(), rtol=RTOL64, atol=15 * atol)
    assert_same(dbeta, bt.grad.numpy(), rtol=RTOL64, atol=15 * atol)


# float32: torch run in float64 on the same (exactly widened) float32 inputs, rounded once to
# float32, must agree with the reference to one float32 rounding. Backwards use torch's aten
# backward kernels so that both sides get the same float32 probs / statistics as inputs.
# Absolute tolerances cover outputs that are cancellations of O(1)-sized float64 terms.
F32_CANCEL_ATOL = 64 * EPS64


def test_reference_float32_matches_torch_rounded():
    rng = np.random.default_rng(4)
    f32 = np.float32

    x = (3.0 * rng.standard_normal((3, 5, 7))).astype(f32)
    dy = rng.standard_normal(x.shape).astype(f32)
    want = F.gelu(t64(x), approximate="none").numpy().astype(f32)
    assert_same(ref.gelu(x), want, rtol=F32_ULP, atol=F32_CANCEL_ATOL)
    want = torch.ops.aten.gelu_backward(t64(dy), t64(x), approximate="none").numpy().astype(f32)
    assert_same(ref.gelu_backward(dy, x), want, rtol=F32_ULP, atol=F32_CANCEL_ATOL)

    scores = (3.0 * rng.standard_normal((2, 4, 9, 9))).astype(f32)
    mask = padding_mask(rng, 2, 9, f32)
    probs = ref.softmax(scores, mask)
    want = torch.softmax(t64(scores) + t64(mask), dim=-1).numpy().astype(f32)
    assert_same(probs, want, rtol=F32_ULP, atol=F32_CANCEL_ATOL)
    dprobs = rng.standard_normal(scores.shape).astype(f32)
    want = torch._softmax_backward_data(t64(dprobs), t64(probs), -1, torch.float64).numpy().astype(f32)
    assert_same(ref.softmax_backward(dprobs, probs), want, rtol=F32_ULP, atol=F32_CANCEL_ATOL)

    x = (2.0 * rng.standard_normal((3, 5, 7)) + 0.5).astype(f32)
    gamma = (1.0 + 0.3 * rng.standard_normal(7)).astype(f32)
    beta = (0.3 * rng.standard_normal(7)).astype(f32)
    dy = rng.standard_normal(x.shape).astype(f32)
    y, mean, rstd = ref.layer_norm(x, gamma, beta, LN_EPS)
    want = F.layer_norm(t64(x), (7,), t64(gamma), t64(beta), LN_EPS).numpy().astype(f32)
    assert_same(y, want, rtol=F32_ULP, atol=F32_CANCEL_ATOL)
    got = ref.layer_norm_backward(dy, x, gamma, mean, rstd)
    want = torch.ops.aten.native_layer_norm_backward(
        t64(dy), t64(x), [7], t64(mean[..., None]), t64(rstd[..., None]), t64(gamma), t64(beta), [True, True, True]
    )
    for g, w in zip(got, want):
        # dgamma, dbeta sum 15 rows of O(1) terms: cancellation scale 15x that of dx.
        assert_same(g, w.numpy().astype(f32), rtol=F32_ULP, atol=15 * F32_CANCEL_ATOL)


# ---------------------------------------------------------------------------
# Reference backwards against central finite differences (float64)
# ---------------------------------------------------------------------------

FD_STEP = 1e-6
# Central differences: truncation h^2 |f'''| / 6 ~ 1e-13, rounding eps |L| / h ~ 1e-9 for
# losses |L| ~ 10; 1e-7 relative (plus the same absolute) is well above both.
FD_TOL = 1e-7


def directional_derivative(loss, x, direction):
    return (loss(x + FD_STEP * direction) - loss(x - FD_STEP * direction)) / (2 * FD_STEP)


def test_reference_gelu_backward_finite_differences():
    rng = np.random.default_rng(5)
    x = 3.0 * rng.standard_normal((4, 6))
    dy = rng.standard_normal(x.shape)
    numeric = dy * (ref.gelu(x + FD_STEP) - ref.gelu(x - FD_STEP)) / (2 * FD_STEP)  # elementwise
    np.testing.assert_allclose(ref.gelu_backward(dy, x), numeric, rtol=FD_TOL, atol=FD_TOL)


def test_reference_softmax_backward_finite_differences():
    rng = np.random.default_rng(6)
    scores = 2.0 * rng.standard_normal((2, 3, 5, 5))
    mask = padding_mask(rng, 2, 5, np.float64)
    dprobs = rng.standard_normal(scores.shape)
    dscores = ref.softmax_backward(dprobs, ref.softmax(scores, mask))

    def loss(s):
        return np.sum(ref.softmax(s, mask) * dprobs)

    for _ in range(3):
        v = rng.standard_normal(scores.shape)
        np.testing.assert_allclose(
            np.sum(dscores * v), directional_derivative(loss, scores, v), rtol=FD_TOL, atol=FD_TOL
        )


def test_reference_layer_norm_backward_finite_differences():
    rng = np.random.default_rng(7)
    x = 2.0 * rng.standard_normal((3, 4, 6)) + 1.0
    gamma = 1.0 + 0.3 * rng.standard_normal(6)
    beta = 0.3 * rng.standard_normal(6)
    dy = rng.standard_normal(x.shape)
    _, mean, rstd = ref.layer_norm(x, gamma, beta, LN_EPS)
    dx, dgamma, dbeta = ref.layer_norm_backward(dy, x, gamma, mean, rstd)

    def loss(x_, gamma_, beta_):
        return np.sum(ref.layer_norm(x_, gamma_, beta_, LN_EPS)[0] * dy)

    for _ in range(2):
        v = rng.standard_normal(x.shape)
        fd = directional_derivative(lambda a: loss(a, gamma, beta), x, v)
        np.testing.assert_allclose(np.sum(dx * v), fd, rtol=FD_TOL, atol=FD_TOL)
        v = rng.standard_normal(6)
        fd = directional_derivative(lambda a: loss(x, a, beta), gamma, v)
        np.testing.assert_allclose(np.sum(dgamma * v), fd, rtol=FD_TOL, atol=FD_TOL)
        fd = directional_derivative(lambda a: loss(x, gamma, a), beta, v)
        np.testing.assert_allclose(np.sum(dbeta * v), fd, rtol=FD_TOL, atol=FD_TOL)


def test_reference_add_layer_norm_backward_finite_differences():
    rng = np.random.default_rng(8)
    x, residual, dy = (rng.standard_normal((3, 6)) for _ in range(3))
    gamma = 1.0 + 0.3 * rng.standard_normal(6)
    beta = 0.3 * rng.standard_normal(6)
    _, s, mean, rstd = ref.add_layer_norm(x, residual, gamma, beta, LN_EPS)
    ds = ref.layer_norm_backward(dy, s, gamma, mean, rstd)[0]
    v = rng.standard_normal(x.shape)
    fd_x = directional_derivative(lambda a: np.sum(ref.add_layer_norm(a, residual, gamma, beta, LN_EPS)[0] * dy), x, v)
    fd_r = directional_derivative(lambda a: np.sum(ref.add_layer_norm(x, a, gamma, beta, LN_EPS)[0] * dy), residual, v)
    np.testing.assert_allclose(np.sum(ds * v), fd_x, rtol=FD_TOL, atol=FD_TOL)
    np.testing.assert_allclose(np.sum(ds * v), fd_r, rtol=FD_TOL, atol=FD_TOL)


# ---------------------------------------------------------------------------
# Fast against reference
# ---------------------------------------------------------------------------

# GELU' = Phi(x) + x phi(x) vanishes near x = -0.75 by cancellation of O(|x|) terms: the
# float64 paths' absolute rounding there is ~|x| eps, |x| <= ~15 in these tests.
GELU_ATOL = 16 * 15 * EPS64
# GELU outputs below this are in or next to float64's subnormal range, where libraries differ
# in where they flush to zero (SciPy's erfc returns 0 below ~1e-308) and carry < 15 digits.
SUBNORMAL_ATOL = 1e-300


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 4, 9, 9), (7,), ()])
def test_fast_gelu_matches_reference(dtype, shape):
    rng = np.random.default_rng(10)
    x = (3.0 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    assert_same(fast.gelu(x), ref.gelu(x), rtol=rtol_for(dtype), atol=GELU_ATOL)
    assert_same(fast.gelu_backward(dy, x), ref.gelu_backward(dy, x), rtol=rtol_for(dtype), atol=GELU_ATOL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_gelu_matches_reference_extreme(dtype):
    rng = np.random.default_rng(11)
    big = 3e38 if dtype == np.float32 else 1e300  # near the largest finite value
    x = np.concatenate(
        [
            -rng.uniform(5.0, 40.0, 500),  # far negative tail: tiny outputs, down to underflow
            rng.uniform(5.0, 1e4, 200),  # GELU(x) = x
            np.array([-big, big, -1e4, 1e4, 0.0, -0.0]),
        ]
    ).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    assert_same(fast.gelu(x), ref.gelu(x), rtol=rtol_for(dtype), atol=SUBNORMAL_ATOL)
    assert_same(fast.gelu_backward(dy, x), ref.gelu_backward(dy, x), rtol=rtol_for(dtype), atol=SUBNORMAL_ATOL)


# Softmax backward ds = p (dp - sum p dp): the bracket cancels O(|dp|) ~ 4 terms summed over
# n <= 16 keys, so its rounding is absolute, ~n * 4 * eps.
SOFTMAX_ATOL = 16 * 4 * EPS64


def check_fast_softmax(scores, mask, dtype):
    rng = np.random.default_rng(12)
    probs = fast.softmax(scores, mask)
    assert_same(probs, ref.softmax(scores, mask), rtol=rtol_for(dtype), atol=SOFTMAX_ATOL)
    dprobs = rng.standard_normal(scores.shape).astype(dtype)
    assert_same(
        fast.softmax_backward(dprobs, probs),
        ref.softmax_backward(dprobs, probs),
        rtol=rtol_for(dtype),
        atol=SOFTMAX_ATOL,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 9, 9), (3, 5, 7), (16,)])
def test_fast_softmax_matches_reference(dtype, shape, row_path):
    rng = np.random.default_rng(13)
    scores = (3.0 * rng.standard_normal(shape)).astype(dtype)
    check_fast_softmax(scores, None, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "mask_shape",
    [
        (2, 1, 1, 9),  # BERT padding mask: one mask row per sample, never expanded
        (1, 1, 1, 9),  # one mask shared by the batch
        (9,),  # fewer dimensions: left-padded
        (),  # a scalar
        (1, 1, 9, 9),  # per query (e.g. causal): expanded to one row per score row
        (2, 4, 9, 9),  # full
        (2, 1, 9, 1),  # per query, broadcast along keys
    ],
)
def test_fast_softmax_mask_layouts_match_reference(dtype, mask_shape, row_path):
    rng = np.random.default_rng(14)
    scores = (3.0 * rng.standard_normal((2, 4, 9, 9))).astype(dtype)
    mask = np.where(rng.random(mask_shape) < 0.3, np.finfo(dtype).min, 0.0).astype(dtype)
    mask[(0,) * mask.ndim] = 0.0  # keep at least one key in the shared rows
    check_fast_softmax(scores, mask, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_softmax_matches_reference_extreme(dtype, row_path):
    rng = np.random.default_rng(15)
    B, H, T = 3, 2, 8
    scores = rng.choice([-1e4, 1e4], size=(B, H, T, T)) * rng.random((B, H, T, T))  # ±1e4
    scores = scores.astype(dtype)
    mask = np.full((B, 1, 1, T), np.finfo(dtype).min, dtype=dtype)
    mask[0, ..., 3] = 0.0  # sample 0: every key masked but one
    mask[1] = 0.0  # sample 1: nothing masked
    # sample 2: every key masked (a uniform row, as in Hugging Face BERT)
    check_fast_softmax(scores, mask, dtype)
    probs = fast.softmax(scores, mask)
    np.testing.assert_array_equal(probs[0, ..., 3], 1.0)  # all mass on the one kept key
    np.testing.assert_array_equal(np.delete(probs[0], 3, axis=-1), 0.0)
    np.testing.assert_allclose(probs[2], 1.0 / T, rtol=rtol_for(dtype))  # uniform
    # a float64 mask (finfo(float64).min) on float32 scores must not overflow to -inf
    check_fast_softmax(scores, np.where(mask == 0, 0.0, np.finfo(np.float64).min), dtype)


def test_softmax_nan_row_propagates():
    """A NaN score makes its row NaN (NumPy's max propagates NaN); other rows are unaffected."""
    scores = np.zeros((3, 4))
    scores[1, 2] = np.nan
    for impl in (ref, fast):
        probs = impl.softmax(scores)
        assert np.isnan(probs[1]).all()
        np.testing.assert_array_equal(probs[[0, 2]], 0.25)


def test_softmax_uniform_row_matches_torch():
    """A fully padded row with finfo.min is uniform in torch too (Hugging Face behaviour)."""
    rng = np.random.default_rng(16)
    scores = rng.standard_normal((1, 2, 4, 4))
    mask = np.full((1, 1, 1, 4), np.finfo(np.float64).min)
    want = torch.softmax(t64(scores) + t64(mask), dim=-1).numpy()
    for impl in (ref, fast):
        assert_same(impl.softmax(scores, mask), want, rtol=RTOL64)


def layer_norm_case(rng, shape, dtype, offset=0.0, scale=1.0):
    d = shape[-1]
    x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
    gamma = (1.0 + 0.3 * rng.standard_normal(d)).astype(dtype)
    beta = (0.3 * rng.standard_normal(d)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dy


def check_fast_layer_norm(x, gamma, beta, dy, dtype, atol):
    y_f, mean_f, rstd_f = fast.layer_norm(x, gamma, beta, LN_EPS)
    y_r, mean_r, rstd_r = ref.layer_norm(x, gamma, beta, LN_EPS)
    assert_same(y_f, y_r, rtol=rtol_for(dtype), atol=atol)
    assert_same(mean_f, mean_r, rtol=RTOL64)  # statistics are float64 in both
    assert_same(rstd_f, rstd_r, rtol=RTOL64)
    n_rows = max(1, x.size // x.shape[-1])
    got = fast.layer_norm_backward(dy, x, gamma, mean_r, rstd_r)
    want = ref.layer_norm_backward(dy, x, gamma, mean_r, rstd_r)
    assert_same(got[0], want[0], rtol=rtol_for(dtype), atol=atol)  # dx
    assert_same(got[1], want[1], rtol=rtol_for(dtype), atol=n_rows * atol)  # dgamma: a sum over rows
    assert_same(got[2], want[2], rtol=rtol_for(dtype), atol=n_rows * atol)  # dbeta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 384), (9,)])
def test_fast_layer_norm_matches_reference(dtype, shape, row_path):
    rng = np.random.default_rng(17)
    x, gamma, beta, dy = layer_norm_case(rng, shape, dtype, offset=0.5, scale=2.0)
    # O(1) outputs built from d-term float64 sums: absolute rounding below 4 d eps.
    check_fast_layer_norm(x, gamma, beta, dy, dtype, atol=4 * shape[-1] * EPS64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_layer_norm_matches_reference_large_offset(dtype, row_path):
    rng = np.random.default_rng(18)
    offset, d = 1e4, 96
    x, gamma, beta, dy = layer_norm_case(rng, (6, d), dtype, offset=offset)
    # The mean of values ~1e4 is summed in a different order by the two paths: its error is
    # below d * eps * 1e4, and it shifts x_hat (std 1) by as much, hence outputs by ~2x that.
    check_fast_layer_norm(x, gamma, beta, dy, dtype, atol=2 * d * EPS64 * offset)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_add_layer_norm_matches_reference(dtype, row_path):
    rng = np.random.default_rng(19)
    x, gamma, beta, _ = layer_norm_case(rng, (3, 5, 8), dtype)
    residual = rng.standard_normal(x.shape).astype(dtype)
    got = fast.add_layer_norm(x, residual, gamma, beta, LN_EPS)
    want = ref.add_layer_norm(x, residual, gamma, beta, LN_EPS)
    atol = 4 * 8 * EPS64  # as for LayerNorm
    assert_same(got[0], want[0], rtol=rtol_for(dtype), atol=atol)  # y
    assert_same(got[1], want[1], rtol=0.0)  # s = x + residual: one rounding, bit-identical
    assert_same(got[2], want[2], rtol=RTOL64, atol=atol)  # mean
    assert_same(got[3], want[3], rtol=RTOL64)  # rstd
    # the fused kernel equals the unfused add then LayerNorm
    y, mean, rstd = fast.layer_norm(x + residual, gamma, beta, LN_EPS)
    assert_same(got[0], y, rtol=0.0)
    assert_same(got[2], mean, rtol=0.0)
    assert_same(got[3], rstd, rtol=0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_fast_bias_add_layer_norm_matches_reference(dtype, offset, row_path):
    """The end of a block at inference, LayerNorm((x + bias) + residual), in one pass: against
    the plain twin (x + bias, then add_layer_norm), at 384 features (MiniLM) and with a large
    offset; the sums x + bias and + residual are rounded as the twin rounds them."""
    rng = np.random.default_rng(23)
    x, gamma, beta, _ = layer_norm_case(rng, (2, 7, 384), dtype, offset=offset)
    residual = rng.standard_normal(x.shape).astype(dtype)
    bias = rng.standard_normal(384).astype(dtype)
    got = fast.bias_add_layer_norm_inference(x, bias, residual, gamma, beta, LN_EPS)
    want = ref.bias_add_layer_norm_inference(x, bias, residual, gamma, beta, LN_EPS)
    # As for LayerNorm: the row's mean is summed in another order (error below d eps |offset|,
    # shifting x_hat of std 1 by as much), outputs O(1): absolute rounding below 4 d eps.
    atol = 4 * 384 * EPS64 * max(1.0, offset)
    assert_same(got, want, rtol=rtol_for(dtype), atol=atol)
    # the fused kernel gives what the unfused fast steps give, to the bit
    assert_same(got, fast.add_layer_norm(x + bias, residual, gamma, beta, LN_EPS)[0], rtol=0.0)
    # into out, x itself: the result, and x overwritten with it
    x_copy = x.copy()
    out = fast.bias_add_layer_norm_inference(x_copy, bias, residual, gamma, beta, LN_EPS, out=x_copy)
    assert out is x_copy
    assert_same(x_copy, got, rtol=0.0)
    # into a strided out (rows of a wider array)
    wide = np.zeros((2, 7, 2 * 384), dtype)
    fast.bias_add_layer_norm_inference(x, bias, residual, gamma, beta, LN_EPS, out=wide[..., ::2])
    assert_same(wide[..., ::2], got, rtol=0.0)
    assert not wide[..., 1::2].any()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bias_add_layer_norm_rejects_bad_inputs(impl):
    x, residual = np.ones((2, 4)), np.zeros((2, 4))
    g, b = np.ones(4), np.zeros(4)
    with pytest.raises(ValueError, match="bias is required"):
        impl.bias_add_layer_norm_inference(x, None, residual, g, b, LN_EPS)
    with pytest.raises(ValueError, match=r"bias has shape \(5,\)"):
        impl.bias_add_layer_norm_inference(x, np.zeros(5), residual, g, b, LN_EPS)
    with pytest.raises(ValueError, match="residual has shape"):
        impl.bias_add_layer_norm_inference(x, b, np.ones((2, 5)), g, b, LN_EPS)
    with pytest.raises(TypeError, match="residual has dtype float32"):
        impl.bias_add_layer_norm_inference(x, b, residual.astype(np.float32), g, b, LN_EPS)
    with pytest.raises(ValueError, match=r"gamma must have shape \(4,\)"):
        impl.bias_add_layer_norm_inference(x, b, residual, np.ones(5), b, LN_EPS)
    with pytest.raises(ValueError, match="out must be an array of x's shape"):
        impl.bias_add_layer_norm_inference(x, b, residual, g, b, LN_EPS, out=np.empty((2, 5)))
    with pytest.raises(ValueError, match="out must not share memory with the residual"):
        impl.bias_add_layer_norm_inference(x, b, residual, g, b, LN_EPS, out=residual)


@pytest.mark.parametrize("path", ["serial", "parallel"])
def test_fast_row_kernels_take_the_path_their_size_asks_for(monkeypatch, path):
    """Small inputs run the serial loops, large ones the parallel loops (SERIAL_MAX_ELEMENTS)."""
    ran = []
    for module, name in ((fast, "_layer_norm_loop"), (fast, "_layer_norm_loop_serial"),
                         (fast_softmax, "_softmax_loop_f32"), (fast_softmax, "_softmax_loop_f32_serial")):
        loop = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _loop=loop, _name=name: (ran.append(_name), _loop(*a))[1])
    n = 2 * common.SERIAL_MAX_ELEMENTS // 384 if path == "parallel" else 3
    rng = np.random.default_rng(20)
    x = rng.standard_normal((n, 384)).astype(np.float32)
    g, b = np.ones(384, np.float32), np.zeros(384, np.float32)
    fast.layer_norm(x, g, b, LN_EPS)
    fast.add_layer_norm(x, x, g, b, LN_EPS)
    fast.softmax(x)
    suffix = "_serial" if path == "serial" else ""
    assert ran == ["_layer_norm_loop" + suffix] * 2 + ["_softmax_loop_f32" + suffix]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_kernels_accept_non_contiguous_inputs(dtype):
    rng = np.random.default_rng(20)
    x = (2.0 * rng.standard_normal((7, 5, 3))).astype(dtype).transpose(2, 1, 0)  # (3, 5, 7) view
    assert not x.flags.c_contiguous
    dy = rng.standard_normal((3, 5, 7)).astype(dtype)
    gamma = (1.0 + 0.3 * rng.standard_normal(7)).astype(dtype)
    beta = (0.3 * rng.standard_normal(7)).astype(dtype)
    rtol = rtol_for(dtype)
    assert_same(fast.gelu(x), ref.gelu(x), rtol=rtol, atol=GELU_ATOL)
    assert_same(fast.gelu_backward(dy, x), ref.gelu_backward(dy, x), rtol=rtol, atol=GELU_ATOL)
    assert_same(fast.softmax(x), ref.softmax(x), rtol=rtol, atol=SOFTMAX_ATOL)
    assert_same(fast.layer_norm(x, gamma, beta, LN_EPS)[0], ref.layer_norm(x, gamma, beta, LN_EPS)[0], rtol=rtol, atol=4 * 7 * EPS64)


def test_fast_kernels_accept_empty_batches():
    for dtype in (np.float32, np.float64):
        x = np.zeros((0, 4), dtype=dtype)
        assert fast.gelu(x).shape == (0, 4)
        assert fast.softmax(x).shape == (0, 4)
        y, mean, rstd = fast.layer_norm(x, np.ones(4, dtype), np.zeros(4, dtype), LN_EPS)
        assert y.shape == (0, 4) and mean.shape == (0,) and rstd.shape == (0,)
        dx, dgamma, dbeta = fast.layer_norm_backward(x, x, np.ones(4, dtype), mean, rstd)
        assert dx.shape == (0, 4)
        np.testing.assert_array_equal(dgamma, 0.0)  # a sum over no rows
        np.testing.assert_array_equal(dbeta, 0.0)


def test_fast_exp_matches_numpy():
    """The vectorizable exp used by the fast softmax, over its whole domain t <= 0."""
    t = np.concatenate(
        [
            -np.geomspace(1e-300, 700.0, 4000),
            -np.linspace(700.0, 746.0, 2000),  # subnormal results, then underflow to 0
            np.array([0.0, -0.0, -1e4, -np.inf]),
        ]
    )
    e = t.copy()
    fast_softmax._exp_shifted(e, 0.0, np.empty((2, t.size), dtype=np.int64))
    # About one ulp each for this exp and NumPy's: 4 eps relative. Subnormal results have an
    # absolute spacing of 2^-1074; allow two of those.
    np.testing.assert_allclose(e, np.exp(t), rtol=4 * 2.0**-53 * 2, atol=2 * 2.0**-1074)
    nan = np.array([np.nan, -1.0])
    fast_softmax._exp_shifted(nan, 0.0, np.empty((2, 2), dtype=np.int64))
    assert np.isnan(nan[0]) and nan[1] == np.exp(-1.0)


# ---------------------------------------------------------------------------
# Dropout masks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_mask_statistics(impl, dtype, p):
    shape = (200, 500)  # 1e5 draws
    mask = impl.dropout_mask(np.random.default_rng(21), shape, p, dtype)
    assert mask.shape == shape and mask.dtype == np.dtype(dtype)
    scale = np.dtype(dtype).type(1.0 / (1.0 - p))
    assert set(np.unique(mask).tolist()) == {0.0, float(scale)}  # exactly 0 or 1/(1-p)
    n = mask.size
    # Zeros are Binomial(n, p): 5 standard deviations is a < 1e-6 false-failure rate.
    assert abs(np.mean(mask == 0) - p) < 5 * np.sqrt(p * (1 - p) / n)
    # E[mask] = 1, Var[mask] = p / (1 - p).
    assert abs(mask.astype(np.float64).mean() - 1.0) < 5 * np.sqrt(p / (1 - p) / n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_reproducible_and_shared_between_implementations(dtype):
    masks = [impl.dropout_mask(np.random.default_rng(22), (4, 3, 8, 8), 0.2, dtype) for impl in (ref, fast, ref)]
    np.testing.assert_array_equal(masks[0], masks[1])  # fast draws exactly what reference draws
    np.testing.assert_array_equal(masks[0], masks[2])  # same seed, same mask
    other = ref.dropout_mask(np.random.default_rng(23), (4, 3, 8, 8), 0.2, dtype)
    assert not np.array_equal(masks[0], other)
    # Consecutive draws from one generator differ (the generator advances).
    rng = np.random.default_rng(22)
    assert not np.array_equal(fast.dropout_mask(rng, (64,), 0.5, dtype), fast.dropout_mask(rng, (64,), 0.5, dtype))


def _same_state(a, b) -> bool:
    """Two bit generators' states (dicts of ints and, for MT19937, arrays) are equal."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


def _generator(kind, seed, buffered, dtype):
    """A generator of bit generator `kind`, moved on by `buffered` float32 draws and 3 draws of
    `dtype` (an odd float32 count leaves a 32-bit half in PCG64's buffer)."""
    rng = np.random.Generator(kind(seed))
    rng.random(buffered, dtype=np.float32)
    rng.random(3, dtype=dtype)
    return rng


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox])
@pytest.mark.parametrize("buffered", [0, 1])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_dropout_masks_in_threads_equal_the_reference(monkeypatch, dtype, kind, buffered, threads):
    """draws.dropout_multiplier cut into parts and blocks (PCG64: jumped copies, one per
    thread, raw outputs; others: rng.random) gives the reference's mask bit for bit and leaves
    the generator in rng.random's state, with a float32 half in the buffer or not, for part and
    block boundaries that fall on odd draws and odd and even counts of draws."""
    from npcosteff.kernels import draws

    monkeypatch.setattr(draws, "MIN_PART", 5)                 # parts of a few draws, odd sizes
    monkeypatch.setattr(draws, "BLOCK_OUTPUTS", 3)            # blocks of a few outputs
    for shape in [(7, 3), (101,), (2, 3, 17), (40,), (1,)]:
        expected_rng = _generator(kind, 31, buffered, dtype)
        rng = _generator(kind, 31, buffered, dtype)
        expected = ref.dropout_mask(expected_rng, shape, 0.3, dtype)
        got = draws.dropout_multiplier(rng, shape, 0.3, dtype, threads)
        assert got.shape == shape and got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, expected)
        assert 0 < np.count_nonzero(got) < got.size or got.size < 5   # both outcomes occur
        assert _same_state(rng.bit_generator.state, expected_rng.bit_generator.state)
        for follow in (np.float32, np.float64):             # the next draws of either kind agree too
            np.testing.assert_array_equal(rng.random(5, dtype=follow), expected_rng.random(5, dtype=follow))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_of_training_size_equals_reference(dtype):
    """A mask large enough to be drawn by every thread (4 x 12 x 128 x 128 ~ 786k > 2 MIN_PART
    draws) is the reference's, and the generators end in the same state."""
    shape = (4, 12, 128, 128)
    rngs = [np.random.default_rng(25), np.random.default_rng(25)]
    masks = [impl.dropout_mask(rng, shape, 0.1, dtype) for impl, rng in zip((ref, fast), rngs)]
    np.testing.assert_array_equal(masks[1], masks[0])
    assert _same_state(rngs[0].bit_generator.state, rngs[1].bit_generator.state)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_dropout_mask_p_zero_is_ones(impl):
    mask = impl.dropout_mask(np.random.default_rng(24), (3, 4), 0.0, np.float32)
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, 1.0)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_dropout_mask_rejects_p_out_of_range(impl, p):
    with pytest.raises(ValueError, match="0 <= p < 1"):
        impl.dropout_mask(np.random.default_rng(0), (3,), p, np.float32)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_dropout_mask_rejects_bad_arguments(impl):
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        impl.dropout_mask(np.random.RandomState(0), (3,), 0.1, np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        impl.dropout_mask(np.random.default_rng(0), (3,), 0.1, np.int32)
    with pytest.raises(ValueError, match="non-negative integers"):
        impl.dropout_mask(np.random.default_rng(0), (3, -1), 0.1, np.float32)


# ---------------------------------------------------------------------------
# Input validation (both implementations raise the same errors)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_elementwise_and_softmax_reject_bad_inputs(impl):
    x = np.ones((2, 3))
    with pytest.raises(TypeError, match="float32 or float64.*int64"):
        impl.gelu(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        impl.gelu_backward(np.ones((3, 2)), x)
    with pytest.raises(TypeError, match="dtype"):
        impl.gelu_backward(np.ones((2, 3), np.float32), x)
    with pytest.raises(ValueError, match="does not broadcast"):
        impl.softmax(np.ones((2, 4, 9, 9)), np.zeros((2, 1, 1, 8)))
    with pytest.raises(TypeError, match="additive mask"):
        impl.softmax(np.ones((2, 4, 9, 9)), np.ones((2, 1, 1, 9), dtype=bool))
    with pytest.raises(ValueError, match="non-empty last axis"):
        impl.softmax(np.ones((2, 0)))
    with pytest.raises(ValueError, match="-inf"):
        impl.softmax(np.zeros((2, 3)), np.array([[0.0, 0.0, 0.0], [-np.inf] * 3]))
    with pytest.raises(ValueError, match="shape"):
        impl.softmax_backward(np.ones((2, 3)), np.ones((2, 4)))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_layer_norm_rejects_bad_inputs(impl):
    x = np.ones((2, 4))
    g, b = np.ones(4), np.zeros(4)
    with pytest.raises(ValueError, match=r"gamma must have shape \(4,\)"):
        impl.layer_norm(x, np.ones(5), b, LN_EPS)
    with pytest.raises(TypeError, match="beta has dtype float32"):
        impl.layer_norm(x, g, b.astype(np.float32), LN_EPS)
    with pytest.raises(ValueError, match="eps"):
        impl.layer_norm(x, g, b, -1.0)
    with pytest.raises(ValueError, match="residual has shape"):
        impl.add_layer_norm(x, np.ones((2, 5)), g, b, LN_EPS)
    _, mean, rstd = ref.layer_norm(x, g, b, LN_EPS)
    with pytest.raises(ValueError, match=r"mean must have shape \(2,\)"):
        impl.layer_norm_backward(x, x, g, mean[:1], rstd)
    with pytest.raises(ValueError, match="dy has shape"):
        impl.layer_norm_backward(np.ones((2, 5)), x, g, mean, rstd)


# ---------------------------------------------------------------------------
# Choosing the implementation
# ---------------------------------------------------------------------------


def test_use_switches_package_level_functions():
    x = np.linspace(-3.0, 3.0, 7)
    from npcosteff.kernels import gelu  # bound before the switch: must follow it anyway

    kernels.use("reference")
    assert kernels.current() == "reference"
    assert_same(gelu(x), ref.gelu(x), rtol=0.0)
    kernels.use("fast")
    assert kernels.current() == "fast"
    assert_same(kernels.gelu(x), fast.gelu(x), rtol=0.0)
    assert kernels.softmax.__doc__ == ref.softmax.__doc__
    with pytest.raises(ValueError, match="'fast', 'reference'"):
        kernels.use("numpy")


def _import_in_subprocess(env_value: str | None, prelude: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NPCOSTEFF_KERNELS", None)
    if env_value is not None:
        env["NPCOSTEFF_KERNELS"] = env_value
    code = prelude + "import npcosteff.kernels as k; print(k.current())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_selects_implementation():
    assert _import_in_subprocess(None).stdout.strip() == "fast"
    assert _import_in_subprocess("reference").stdout.strip() == "reference"
    bad = _import_in_subprocess("gpu")
    assert bad.returncode != 0 and "NPCOSTEFF_KERNELS must be 'fast' or 'reference'" in bad.stderr


def test_missing_numba_falls_back_to_reference_with_warning():
    result = _import_in_subprocess(None, prelude="import sys; sys.modules['numba'] = None; ")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"
    assert "RuntimeWarning" in result.stderr and "Numba could not be imported" in result.stderr
