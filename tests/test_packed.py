"""A model packed for inference (npcosteff/packed_model.py, its layers in
npcosteff/kernels/packed_layer.py) against its plain twin: the model's own forward pass on the
plain NumPy kernels (``kernels.use("reference")``, no lanes).

Checked: the packed layout itself (the columns of Q, K and V per share of heads, Q scaled);
the float32 model through every way a layer runs packed (in the calling thread, by samples
in one hand-off, by heads and neurons for fewer samples than lanes), slender layers (one
head, fewer heads than lanes), padding, odd batch sizes; early exit; what the packed layers do
not cover going to the plain layers (masks, training, caches, float64); and that the packed
model is a copy that later changes to the original do not reach.
"""

import math

import numpy as np
import pytest

from npcosteff import kernels
from npcosteff.early_exit import early_exit_forward
from npcosteff.kernels import lanes
from npcosteff.model import CostEffModel
from npcosteff.packed_model import PackedModel, pack
from small_models import batch, slender_model

threadpoolctl = pytest.importorskip("threadpoolctl")

# float32 tolerance: the packed layers differ from the plain path by BLAS's summation order
# (one product for Q, K and V, shares of heads and neurons summed by the caller), by the scale
# 1/sqrt(d_h) applied to W_Q instead of to Q (one more rounding, 0.5 ulp), and by the inference
# kernels (GELU within 8 ulps, softmax within 4) against the correctly rounded plain ones,
# carried through 3 LayerNorm'd layers whose outputs reach about 3 (ulp 2.4e-7): the same
# sources of difference as the lanes (tests/test_lanes.py, measured there at most 1.8e-6).
# A wrong share, column order, scale or mask moves the outputs by 1e-2 or more.
ATOL32 = 4e-6


def plain(fn, *args, **kwargs):
    """`fn` on the plain NumPy kernels (no lanes, no Numba)."""
    kernels.use("reference")
    try:
        return fn(*args, **kwargs)
    finally:
        kernels.use("fast")


@pytest.fixture
def lanes_on(monkeypatch):
    """BLAS at two threads and no least work, so that the small models here take lanes."""
    monkeypatch.setattr(lanes, "MIN_FLOPS", 0)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if lanes.count(128, np.float32, 1.0) < 2:
            pytest.fail("BLAS refused a second thread: the packed lanes cannot be tested")
        yield


class Calls:
    """Counts the lanes' hand-offs and the plain layers' calls, so that a test of one way a
    layer runs cannot pass by running another."""

    def __init__(self, monkeypatch):
        self.runs = 0
        self.plain_layers = 0
        run, plain_layer = lanes.run, CostEffModel.run_layer

        def counted_run(fn, parts):
            self.runs += 1
            return run(fn, parts)

        def counted_layer(model, *args, **kwargs):
            self.plain_layers += 1
            return plain_layer(model, *args, **kwargs)
        monkeypatch.setattr(lanes, "run", counted_run)
        monkeypatch.setattr(CostEffModel, "run_layer", counted_layer)


def test_the_packed_layout_holds_each_shares_scaled_queries_keys_and_values():
    model = slender_model()
    packed = pack(model, n_lanes=2)
    layer, p = packed.layers[0], model.params
    d_h = model.config.attention_head_size
    assert [(s.start, s.stop) for s in layer.shares] == [(0, 2), (2, 4)]
    for s, heads in enumerate(layer.shares):
        span = slice(heads.start * d_h, heads.stop * d_h)
        block = layer.qkv[:, layer.qkv_columns(s)]                              # (d, 3 a_s)
        bias = layer.qkv_bias[layer.qkv_columns(s)]
        for j, (name, factor) in enumerate((("query", 1 / math.sqrt(d_h)), ("key", 1.0), ("value", 1.0))):
            a = span.stop - span.start
            W, b = p[f"encoder.layer.0.attention.self.{name}.weight"], p[f"encoder.layer.0.attention.self.{name}.bias"]
            np.testing.assert_allclose(block[:, j * a:(j + 1) * a], W[span].T * factor, rtol=1e-7, atol=0)
            np.testing.assert_allclose(bias[j * a:(j + 1) * a], b[span] * factor, rtol=1e-7, atol=0)
    whole = np.concatenate([p[f"encoder.layer.0.attention.self.{n}.weight"].T * f
                            for n, f in (("query", 1 / math.sqrt(d_h)), ("key", 1.0), ("value", 1.0))], axis=1)
    np.testing.assert_allclose(layer.qkv_whole, whole, rtol=1e-7, atol=0)       # all heads as one share
    np.testing.assert_array_equal(layer.attention_output, p["encoder.layer.0.attention.output.dense.weight"].T)
    np.testing.assert_array_equal(layer.intermediate, p["encoder.layer.0.intermediate.dense.weight"].T)
    np.testing.assert_array_equal(layer.output, p["encoder.layer.0.output.dense.weight"].T)
    assert layer.qkv.flags.c_contiguous and layer.intermediate.flags.c_contiguous


@pytest.mark.parametrize("B", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("padded", [False, True])
def test_the_packed_model_in_lanes_matches_the_plain_path(lanes_on, monkeypatch, B, padded):
    """1 sample: by heads and neurons (two hand-offs a layer); 2 and 8: by samples (one); 3 and
    5: by heads and neurons where the layer has a head and a neuron per lane (layers 1 and 3),
    by samples where it has not (layer 2, one head)."""
    model = slender_model()
    ids, mask, types = batch(B, padded)
    expected = plain(model.forward, ids, mask, types, output_attentions=True)
    packed = pack(model, n_lanes=2)
    calls = Calls(monkeypatch)
    got = packed.forward(ids, mask, types, output_attentions=True)
    assert calls.plain_layers == 0
    assert calls.runs == sum(1 if B % 2 == 0 or B >= 8 or len(layer.shares) < 2 else 2 for layer in packed.layers)
    for g, e in zip(got.hidden_states, expected.hidden_states):
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL32)
    for g, e in zip(got.attentions, expected.attentions):
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL32)
    for g, e in zip(got.logits, expected.logits):
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL32)


@pytest.mark.parametrize("B", [1, 4])
def test_the_packed_model_without_lanes_matches_the_plain_path(monkeypatch, B):
    """Too little work for lanes (the default least work): every layer in the calling thread."""
    model = slender_model()
    ids, mask, types = batch(B, True)
    expected = plain(model.forward, ids, mask, types, output_attentions=True)
    packed = pack(model)
    calls = Calls(monkeypatch)
    got = packed.forward(ids, mask, types, output_attentions=True)
    assert calls.runs == 0 and calls.plain_layers == 0
    for g, e in zip(got.hidden_states + got.attentions, expected.hidden_states + expected.attentions):
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL32)


def test_early_exit_on_the_packed_model_matches_the_plain_path(lanes_on, monkeypatch):
    model = slender_model()
    ids, mask, types = batch(3, True)
    expected = plain(early_exit_forward, model, ids, mask, types, threshold=0.9)
    calls = Calls(monkeypatch)
    got = early_exit_forward(pack(model, n_lanes=2), ids, mask, types, threshold=0.9)
    assert calls.runs > 0 and calls.plain_layers == 0
    np.testing.assert_array_equal(got.exit_layers, expected.exit_layers)
    np.testing.assert_allclose(got.logits, expected.logits, rtol=0, atol=ATOL32)


def test_what_the_packed_layers_do_not_cover_takes_the_plain_layers(lanes_on, monkeypatch):
    model = slender_model()
    packed = pack(model, n_lanes=2)
    ids, mask, types = batch(2, True)
    L = model.config.num_hidden_layers
    head_mask = [np.array([1, 0, 1, 1], np.float32), None, None]                 # per layer, its own width
    ffn_mask = [None, np.ones(9, np.float32), None]
    for kwargs in (dict(return_cache=True), dict(training=True), dict(inference=False), dict(head_mask=head_mask),
                   dict(ffn_mask=ffn_mask)):
        calls = Calls(monkeypatch)
        got = packed.forward(ids, mask, types, **kwargs)
        assert calls.plain_layers == (L if "head_mask" not in kwargs and "ffn_mask" not in kwargs else 1), kwargs
        if "training" not in kwargs:                                  # dropout: no fixed answer to compare
            expected = model.forward(ids, mask, types, **kwargs)
            for g, e in zip(got.hidden_states, expected.hidden_states):
                np.testing.assert_array_equal(g, e)
    calls = Calls(monkeypatch)
    pack(CostEffModel(model.config, model.params, dtype=np.float64)).forward(ids, mask, types)
    assert calls.plain_layers == L                                    # float64 keeps its exact kernels


def test_the_packed_model_is_a_copy():
    model = slender_model()
    ids, mask, types = batch(2, False)
    packed = pack(model)
    before = packed.forward(ids, mask, types).hidden_states[-1].copy()
    for p in model.params.values():                                   # training the original afterwards
        p *= 0.5
    np.testing.assert_array_equal(packed.forward(ids, mask, types).hidden_states[-1], before)
    assert isinstance(packed, PackedModel) and isinstance(packed, CostEffModel)
    assert packed.grads is None
    repacked = pack(packed, n_lanes=3)                                # a packed model packs like its copy
    assert len(repacked.layers[0].shares) == 3
    np.testing.assert_allclose(repacked.forward(ids, mask, types).hidden_states[-1], before, rtol=0, atol=ATOL32)
