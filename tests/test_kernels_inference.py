"""The inference path's float32 GELU and softmax (npcosteff.kernels.inference) against their plain
NumPy twins, the exact float64 computations of npcosteff.kernels.reference.

These kernels compute in float32 arithmetic, so they are not bit-identical to the reference:
each result is checked to lie within the kernel's stated bound in float32 ulps of the
correctly rounded value (GELU_MAX_ULP, SOFTMAX_MAX_ULP, derived in the module's comments),
over millions of values. float64 data must take the exact kernels unchanged.
"""

import numpy as np
import pytest

from npcosteff import kernels
from npcosteff.kernels import common, fast, fused, inference, lanes, reference
from npcosteff.model import CostEffModel
from npcosteff.config import CostEffConfig

TINY = np.finfo(np.float32).tiny                       # smallest normal float32
# A probability below 1e-30 may be off by as much as one of 1e-30 (SOFTMAX_MAX_ULP ulps of it),
# or be 0 where exp(s - max) < exp(-87) = 1.6e-38 (module docstring of kernels/inference.py).
SMALL_PROB_ERROR = inference.SOFTMAX_MAX_ULP * float(np.spacing(np.float32(1e-30)))


def _ulps(got, want):
    """|got - want| in float32 ulps of want (want float32, correctly rounded)."""
    spacing = np.spacing(np.abs(want)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want.astype(np.float64)) / spacing


def _gelu(x, serial=True):
    pre = x.reshape(1, -1).copy() if serial else x.reshape(-1, 1000).copy()
    act = inference.bias_gelu_inference(pre, np.zeros(pre.shape[1], np.float32))
    return act.reshape(-1), pre.reshape(-1)


def test_gelu_within_its_ulp_bound_on_millions_of_values():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-14.5, 14.5, 3_000_001, dtype=np.float32),
                        (rng.standard_normal(1_000_000) * 3).astype(np.float32)])
    got, _ = _gelu(x)
    want = reference.gelu(x)
    normal = np.abs(want) >= TINY
    assert _ulps(got[normal], want[normal]).max() <= inference.GELU_MAX_ULP
    # Below float32's normal range (x < -13.2) the result is tiny: 0 below x = -14, where the
    # true value is at most |gelu(-14)| = 1.09e-43 (the largest value flushed, rounded to float32).
    assert np.abs(got[~normal].astype(np.float64) - want[~normal]).max() <= abs(float(reference.gelu(np.float32(-14.0))))
    assert np.all(got[x < -14.0] == 0.0)
    # Most results are correctly rounded; the bound is for the worst few.
    assert np.mean(_ulps(got[normal], want[normal]) == 0) > 0.5


def test_gelu_special_values_match_the_reference():
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, np.inf, -np.inf, np.nan, 14.0, -14.0], np.float32)
    got, _ = _gelu(x)
    with np.errstate(invalid="ignore"):                # -inf * erfc(inf) = -inf * 0: NaN, expected
        want = reference.gelu(x)
    finite = np.isfinite(want) & (want != 0)
    assert _ulps(got[finite], want[finite]).max() <= inference.GELU_MAX_ULP
    # The rest by value (a zero may carry the other sign); NaN where the reference is NaN (-inf * 0, NaN).
    assert np.array_equal(got[~finite], want[~finite], equal_nan=True)


def test_gelu_adds_the_bias_in_place_and_applies_the_mask():
    rng = np.random.default_rng(1)
    pre = rng.standard_normal((64, 96)).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    mask = (rng.random(96) < 0.5).astype(np.float32)
    expect_pre = pre + bias                             # float32 add, exactly as the kernel
    act = inference.bias_gelu_inference(pre, bias, mask)
    np.testing.assert_array_equal(pre, expect_pre)
    want = reference.gelu(expect_pre) * mask
    assert _ulps(act[:, mask == 1], want[:, mask == 1]).max() <= inference.GELU_MAX_ULP
    assert np.all(act[:, mask == 0] == 0)


def test_gelu_serial_and_parallel_loops_agree_exactly():
    rng = np.random.default_rng(2)
    pre = (rng.standard_normal((70, 300)) * 4).astype(np.float32)
    bias = np.zeros(300, np.float32)
    mask = np.ones(300, np.float32)
    a, b = np.empty_like(pre), np.empty_like(pre)
    inference._bias_gelu_loop_serial(pre.copy(), bias, mask, a)
    inference._bias_gelu_loop(pre.copy(), bias, mask, b)
    np.testing.assert_array_equal(a, b)                 # the same row code either way


def _scores(rng, shape):
    # Scores at several scales, so that probabilities span many decades.
    return (rng.standard_normal(shape) * rng.uniform(0.1, 20.0, shape[:-1] + (1,))).astype(np.float32)


@pytest.mark.parametrize("serial", [True, False])
def test_softmax_within_its_ulp_bound(serial, monkeypatch):
    if not serial:
        monkeypatch.setattr(common, "SERIAL_MAX_ELEMENTS", 0)
    rng = np.random.default_rng(3)
    s = _scores(rng, (6, 12, 128, 128))
    m = np.zeros((6, 1, 1, 128), np.float32)
    m[1, ..., 90:] = np.finfo(np.float32).min           # padding
    m[2] = np.finfo(np.float32).min                      # a sample with every key masked: uniform rows
    got = inference.softmax_inference(s, m)
    want = reference.softmax(s, m)
    large = want >= 1e-30
    assert _ulps(got[large], want[large]).max() <= inference.SOFTMAX_MAX_ULP
    assert np.abs(got[~large].astype(np.float64) - want[~large]).max() <= SMALL_PROB_ERROR
    assert np.all(got[1, ..., 90:] == 0.0)              # padded keys get exactly nothing
    np.testing.assert_array_equal(got[2], want[2])      # uniform: 1/128 exactly


def test_softmax_float32_and_float64_paths_agree_within_the_bound():
    # The same unmasked rows through both row paths: d = s - max as a float32 hi + lo, or in float64.
    rng = np.random.default_rng(8)
    s = _scores(rng, (4096, 128)).reshape(4096, 128)
    zero_mask = np.zeros((1, 128))
    want = reference.softmax(s)
    for unmasked in (True, False):
        got = np.empty_like(s)
        assert inference._softmax_loop_serial(s, zero_mask, np.array([unmasked]), s.shape[0], got) == 0
        large = want >= 1e-30
        assert _ulps(got[large], want[large]).max() <= inference.SOFTMAX_MAX_ULP
        assert np.abs(got[~large].astype(np.float64) - want[~large]).max() <= SMALL_PROB_ERROR


def test_softmax_unmasked_special_rows_match_the_reference():
    big = np.finfo(np.float32).max
    s = np.array([[0.0, 1.0, np.nan, 2.0],              # a NaN score: a NaN row
                  [0.0, 1.0, np.inf, 2.0],              # +inf: NaN (inf - inf), from the float64 path
                  [-np.inf, 0.0, 1.0, 2.0],             # -inf: probability 0
                  [big, -big, big, 0.0],                # s - max overflows float32 to -inf: 0
                  [1e-30, 0.0, -1e-30, 5.0],
                  [-100.0, 0.0, -86.9, -87.1]], np.float32)   # around the cut at exp(-87)
    got = inference.softmax_inference(s)
    with np.errstate(invalid="ignore"):
        want = reference.softmax(s)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    large, small = ok & (want >= 1e-30), ok & (want < 1e-30)
    assert _ulps(got[large], want[large]).max() <= inference.SOFTMAX_MAX_ULP
    assert np.abs(got[small].astype(np.float64) - want[small]).max() <= SMALL_PROB_ERROR
    with pytest.raises(ValueError, match="every score equal to -inf"):
        inference.softmax_inference(np.full((2, 4), -np.inf, np.float32))   # no mask, no finite score


def test_softmax_errors_and_nan_match_the_reference():
    s = np.zeros((1, 1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="every score equal to -inf"):
        inference.softmax_inference(s, np.full((1, 1, 1, 4), -np.inf, np.float32))
    s[0, 0, 0, 1] = np.nan
    got = inference.softmax_inference(s)
    assert np.isnan(got[0, 0, 0]).all() and not np.isnan(got[0, 0, 1]).any()
    with pytest.raises(TypeError, match="float32 or float64"):
        inference.softmax_inference(np.zeros((2, 3), np.int64))   # the shared input checks


def test_float64_takes_the_exact_kernels():
    rng = np.random.default_rng(4)
    pre = rng.standard_normal((32, 40))
    bias = rng.standard_normal(40)
    a = inference.bias_gelu_inference(pre.copy(), bias)
    b = fused.bias_gelu(pre.copy(), bias)
    np.testing.assert_array_equal(a, b)
    s = rng.standard_normal((2, 3, 5, 5))
    np.testing.assert_array_equal(inference.softmax_inference(s), fast.softmax(s))


def test_teacher_targets_take_the_exact_kernels(monkeypatch):
    from npcosteff.objectives import teacher_outputs
    config = CostEffConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = CostEffModel(config, dtype=np.float32, seed=0)
    ids = np.random.default_rng(7).integers(0, 50, (2, 8))
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    t = teacher_outputs(model, batch)
    s = model(ids, batch["attention_mask"], batch["token_type_ids"], return_cache=True)
    for a, b in zip(t.logits, s.logits):
        np.testing.assert_array_equal(a, b)          # the student's forward, to the bit


def test_reference_switch_gives_the_exact_computation():
    rng = np.random.default_rng(5)
    s = _scores(rng, (1, 2, 8, 8))
    try:
        kernels.use("reference")
        np.testing.assert_array_equal(kernels.softmax_inference(s), reference.softmax(s))
    finally:
        kernels.use("fast")


def test_model_forward_without_cache_uses_the_inference_kernels(monkeypatch):
    config = CostEffConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=16, num_labels=3)
    rng = np.random.default_rng(6)
    ids = rng.integers(0, 50, (3, 10))
    mask = np.ones((3, 10), np.int64)
    mask[1, 6:] = 0
    monkeypatch.setattr(lanes, "MIN_FLOPS", 0)      # the lanes' calls counted too, however small the model
    calls = []
    for name in ("softmax_inference", "bias_gelu_inference"):
        inner = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=inner, _n=name, **k: calls.append(_n) or _f(*a, **k))
    # the plain layers take their softmax inside the attention core, the inference one when told
    core = kernels.attention_core
    monkeypatch.setattr(kernels, "attention_core",
                        lambda *a, _f=core, **k: (k.get("inference") and calls.append("softmax_inference")) or _f(*a, **k))
    for dtype in (np.float32, np.float64):
        model = CostEffModel(config, dtype=dtype, seed=0)
        calls.clear()
        model(ids, mask, return_cache=True)
        assert calls == []                                            # a backward may follow: exact kernels
        model(ids, mask, inference=False)
        assert calls == []                                            # chosen: a teacher's targets in training
        model(ids, mask)
        # per layer one call of each, or one per lane when the layer is shared out (kernels/lanes_layer.py)
        per_layer = lanes.count(ids.size, dtype, 0)
        assert sorted(set(calls)) == ["bias_gelu_inference", "softmax_inference"] and len(calls) == 4 * per_layer
        with pytest.raises(ValueError, match="no backward"):
            model(ids, mask, return_cache=True, inference=True)
        fast_out = model(ids, mask)                                   # no cache: inference kernels
        exact_out = model(ids, mask, return_cache=True)               # what a backward pass needs
        assert fast_out.cache is None
        for a, b in zip(fast_out.logits, exact_out.logits):
            if dtype == np.float64:
                np.testing.assert_array_equal(a, b)                   # float64: the same kernels
            else:
                # A few float32 ulps per GELU and softmax value, carried through two small layers.
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", [inference, reference])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_softmax_inference_in_place(monkeypatch, impl, parallel, masked):
    """out= the scores themselves (the lanes' attention core writes its scores into probs):
    the same probabilities as into a separate array, on the float32 path, on the float64 path
    (a mask, an infinite score) and in the serial and the parallel loop."""
    from npcosteff.kernels import common

    monkeypatch.setattr(common, "SERIAL_MAX_ELEMENTS", 1 << 30 if not parallel else 0)
    rng = np.random.default_rng(12)
    scores = (3 * rng.standard_normal((3, 4, 9, 9))).astype(np.float32)
    scores[0, 1, 2, 3] = np.inf                      # a row that takes the float64 path
    scores[2, 0, 5, :4] = -np.inf
    mask = None
    if masked:
        mask = np.zeros((3, 1, 1, 9))
        mask[1, ..., 6:] = -1e9
    inplace = scores.copy()
    with np.errstate(invalid="ignore"):              # the +inf row is NaN (inf - inf), as torch's
        expected = impl.softmax_inference(scores, mask)
        got = impl.softmax_inference(inplace, mask, out=inplace)
    assert np.shares_memory(got, inplace)
    np.testing.assert_array_equal(inplace, expected)


@pytest.mark.parametrize("impl", [inference, reference])
def test_softmax_inference_into_out(impl):
    """out= receives exactly what the call returns otherwise; a wrong out is refused by name."""
    rng = np.random.default_rng(11)
    scores = (3 * rng.standard_normal((2, 3, 5, 7))).astype(np.float32)
    mask = np.zeros((2, 1, 1, 7), np.float32)
    mask[1, ..., 4:] = -1e9
    out = np.empty_like(scores)
    got = impl.softmax_inference(scores, mask, out=out)
    assert got is out or np.shares_memory(got, out)
    np.testing.assert_array_equal(out, impl.softmax_inference(scores, mask))
    zeros = np.zeros_like(mask)                     # a mask of zeros is no mask, to the bit
    np.testing.assert_array_equal(impl.softmax_inference(scores, zeros), impl.softmax_inference(scores))
    for bad in (np.empty((2, 3, 5, 6), np.float32), np.empty_like(scores, dtype=np.float64),
                np.empty((2, 3, 7, 5), np.float32).transpose(0, 1, 3, 2)):
        with pytest.raises(ValueError, match="out"):
            impl.softmax_inference(scores, mask, out=bad)
    with pytest.raises(ValueError, match="out"):
        impl.softmax_inference(scores.astype(np.float64), mask, out=np.empty(scores.shape))
