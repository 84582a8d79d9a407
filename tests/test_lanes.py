"""Lanes: a layer at inference shared out over the cores (npcosteff/kernels/lanes_layer.py, run
by npcosteff/kernels/lanes.py with the worker threads of npcosteff/kernels/pool.py).

The runner is checked on its own (every part runs once, the first in the calling thread,
errors reach the caller, BLAS gets its threads back, the pool is the attention core's one);
the layer in lanes is checked against its plain twin, the pair of npcosteff/nn/attention.py
and ffn.py on the plain NumPy kernels (``kernels.use("reference")``), block by block and
through the float32 model: slender layers (one head, fewer heads than lanes), padding, head
and FFN masks, one sample (by heads and by neurons) and several (by rows and samples), and an
early-exit pass.
"""

import threading

import numpy as np
import pytest

from npcosteff import kernels
from npcosteff.config import CostEffConfig
from npcosteff.early_exit import early_exit_forward
from npcosteff.kernels import lanes, pool
from npcosteff.kernels.lanes_layer import layer_forward_in_lanes
from npcosteff.model import CostEffModel
from npcosteff.nn.attention import attention_forward
from npcosteff.nn.ffn import ffn_forward
from npcosteff.nn.prefixed import Prefixed
from small_models import D, MAX_POS, batch, slender_model

threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads():
    return pool.blas_threads()


@pytest.fixture
def lanes_on(monkeypatch):
    """BLAS at two threads (lanes need more than one), whatever this machine's default, and
    no least work (the small models of these tests would otherwise never take lanes)."""
    monkeypatch.setattr(lanes, "MIN_FLOPS", 0)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() < 2:
            pytest.fail("BLAS refused a second thread: the lanes cannot be tested")
        yield


# ---------------------------------------------------------------------------- the runner


def test_row_parts_cover_the_range_without_empty_parts():
    for n, k in [(1, 2), (2, 2), (7, 2), (128, 2), (12, 4), (5, 8)]:
        parts = lanes.row_parts(n, k)
        assert len(parts) == min(n, k)
        covered = np.concatenate([np.arange(n)[p] for p in parts])
        np.testing.assert_array_equal(covered, np.arange(n))


def test_by_width_only_for_fewer_samples_than_lanes_and_enough_width():
    assert lanes.by_width(1, 2, 12)            # one sentence, 2 lanes, 12 heads: by heads
    assert lanes.by_width(3, 4, 4)             # 3 samples, 4 lanes, one head per lane
    assert not lanes.by_width(2, 2, 12)        # as many samples as lanes: by rows and samples
    assert not lanes.by_width(1, 4, 2)         # 2 heads for 4 lanes: by rows
    assert not lanes.by_width(1, 1, 12)        # one lane: nothing to split


def test_run_runs_every_part_once_the_first_in_the_calling_thread(lanes_on):
    seen, threads, inside, blas_inside = [], {}, [], []
    lock = threading.Lock()

    def fn(part):
        with lock:
            seen.append(part)
            threads[part] = threading.get_ident()
            inside.append(lanes.inside())
            blas_inside.append(blas_threads())

    lanes.run(fn, [0, 1, 2])
    assert sorted(seen) == [0, 1, 2]
    assert threads[0] == threading.get_ident()
    assert threads[1] != threading.get_ident() and threads[2] != threading.get_ident()
    assert all(inside) and not lanes.inside()
    assert blas_inside == [1, 1, 1]                 # one BLAS thread per lane ...
    assert blas_threads() == 2                      # ... and the caller's count back afterwards


@pytest.mark.parametrize("failing", [0, 1])
def test_run_raises_a_lanes_error_after_every_lane_finished(lanes_on, failing):
    finished = []
    release = threading.Event()

    def fn(part):
        if part == failing:
            raise ValueError(f"lane {part} failed")
        release.wait(5)                             # the other lane is still busy when the error comes
        finished.append(part)

    threading.Timer(0.2, release.set).start()
    with pytest.raises(ValueError, match=f"lane {failing} failed"):
        lanes.run(fn, [0, 1])
    assert finished == [1 - failing]
    assert blas_threads() == 2 and not lanes.inside()


def test_run_and_sum_adds_every_lanes_result_once(lanes_on):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((5, 3)) for _ in range(3)]
    total = lanes.run_and_sum(lambda j: arrays[j].copy(), [0, 1, 2])
    np.testing.assert_array_equal(total, (arrays[0] + arrays[1]) + arrays[2])   # in the parts' order



def test_lanes_and_the_attention_core_share_one_pool(lanes_on, monkeypatch):
    from npcosteff.kernels import chunked_attention

    monkeypatch.setattr(chunked_attention, "MIN_FLOPS", 0)
    handed_off = []
    workers = pool.workers
    monkeypatch.setattr(pool, "workers", lambda n: handed_off.append(workers(n)) or handed_off[-1])
    lanes.run(lambda part: None, [0, 1])
    q = np.ones((4, 3, 5, 2), np.float32)
    context, probs = chunked_attention.attention_core(q, q, q)
    np.testing.assert_array_equal(context, q)                      # uniform weights over equal values
    assert len(handed_off) == 2 and handed_off[0] is handed_off[1] and pool.started()


def test_count(lanes_on):
    work = 1e9
    assert lanes.count(128, np.float32, work) == 2
    assert lanes.count(1, np.float32, work) == 1    # never more lanes than rows
    assert lanes.count(128, np.float64, work) == 1  # float64 runs its exact kernels unsplit
    with lanes.disabled():
        assert lanes.count(128, np.float32, work) == 1
    kernels.use("reference")
    try:
        assert lanes.count(128, np.float32, work) == 1   # the plain path starts no thread
    finally:
        kernels.use("fast")
    seen = []
    lanes.run(lambda part: seen.append(lanes.count(128, np.float32, work)), [0, 1])
    assert seen == [1, 1]                           # no lanes inside a lane
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        assert lanes.count(128, np.float32, work) == 1


def test_a_layer_with_little_work_takes_no_lanes(monkeypatch):
    """Below MIN_FLOPS a layer's hand-offs cost more than the second core saves: the unsplit path."""
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() < 2:
            pytest.fail("BLAS refused a second thread: the lanes cannot be tested")
        assert lanes.count(128, np.float32, lanes.MIN_FLOPS) == 2
        assert lanes.count(128, np.float32, lanes.MIN_FLOPS - 1) == 1
        runs = CountRuns(monkeypatch)
        model = slender_model()                     # a few thousand FLOPs per layer
        ids, mask, types = batch(3, True)
        model.forward(ids, mask, types)
        assert runs.calls == 0
        monkeypatch.setattr(lanes, "MIN_FLOPS", 0)
        model.forward(ids, mask, types)
        assert runs.calls == 4 * 3


def test_a_layer_asks_for_lanes_with_its_whole_work(monkeypatch):
    """run_layer hands the lanes the FLOPs of the layer's matrix products over the batch
    (flops.layer_flops), lanes.count is asked once per layer, and both blocks of the layer
    follow that one answer:
    MiniLM's layer at 1 x 128 tokens is 8 N d A + 4 B T^2 A + 4 N d F = 478.2 MFLOP
    (N = B T = 128, d = A = 384, F = 1536)."""
    from npcosteff.flops import layer_flops

    model = slender_model()
    ids, mask, types = batch(3, True)
    seen = []
    monkeypatch.setattr(lanes, "count", lambda n_rows, dtype, flops: seen.append((n_rows, flops)) or 1)
    runs = CountRuns(monkeypatch)
    model.forward(ids, mask, types)
    assert seen == [(3 * MAX_POS, 3 * layer_flops(model.config, i, MAX_POS)["total"]) for i in range(3)]
    assert runs.calls == 0                          # one lane: both blocks unsplit
    monkeypatch.setattr(lanes, "count", lambda n_rows, dtype, flops: 2)
    model.forward(ids, mask, types)
    assert runs.calls == 4 * 3                      # two lanes: both blocks split, in every layer
    minilm = CostEffConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                           intermediate_size=1536, max_position_embeddings=512, num_labels=2)
    assert round(layer_flops(minilm, 0, 128)["total"] / 1e6, 1) == 478.2


# ---------------------------------------------------------------------------- the layers

def forward_plain(model, *args, **kwargs):
    kernels.use("reference")
    try:
        return model.forward(*args, **kwargs)
    finally:
        kernels.use("fast")


class CountRuns:
    """Counts lanes.run calls (so that a test of the lanes cannot pass with the lanes off)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = lanes.run

        def run(fn, parts):
            self.calls += 1
            return original(fn, parts)
        monkeypatch.setattr(lanes, "run", run)


# float32 tolerance: the lanes differ from the plain path by BLAS's summation order over row
# shares and by the inference kernels (GELU within 8 ulps, softmax within 4, against the
# correctly rounded plain kernels), carried through 3 LayerNorm'd layers whose outputs reach
# about 3 (ulp 2.4e-7). Measured: at most 1.8e-6 (hidden states), 3.6e-7 (attention
# probabilities); 4e-6 leaves room for another BLAS build. A wrong mask, head or row share
# moves the outputs by 1e-2 or more.
ATOL32 = 4e-6


@pytest.mark.parametrize("B", [1, 3])
def test_the_layer_in_lanes_is_the_plain_pair(lanes_on, monkeypatch, B):
    """The twin on its own: one layer through layer_forward_in_lanes against attention_forward
    and ffn_forward (npcosteff.nn) on the plain kernels, with padding and both masks; one
    sample goes by heads and by neurons, three by rows and samples."""
    model = slender_model()
    c = model.config
    ids, mask, _ = batch(B, True)
    x = np.random.default_rng(B).standard_normal((B, MAX_POS, D)).astype(np.float32)
    attention_p = Prefixed(model.params, "encoder.layer.0.attention.")
    ffn_p = Prefixed(model.params, "encoder.layer.0.")
    args = (4, c.attention_head_size, model.additive_mask(mask), c.layer_norm_eps)
    masks = dict(head_mask=np.array([1.0, 0.0, 0.5, 1.0], np.float32), ffn_mask=np.linspace(0, 1, 20))
    kernels.use("reference")
    try:
        a, expected_probs, _ = attention_forward(x, attention_p, *args, head_mask=masks["head_mask"], inference=True)
        expected, _ = ffn_forward(a, ffn_p, c.layer_norm_eps, ffn_mask=masks["ffn_mask"], inference=True)
    finally:
        kernels.use("fast")
    runs = CountRuns(monkeypatch)
    y, probs = layer_forward_in_lanes(x, attention_p, ffn_p, *args, **masks, flops=lanes.MIN_FLOPS)
    assert runs.calls == (2 if B == 1 else 4)
    np.testing.assert_allclose(y, expected, rtol=0, atol=ATOL32)
    np.testing.assert_allclose(probs, expected_probs, rtol=0, atol=ATOL32)


def test_a_layer_without_lanes_is_left_to_the_plain_pair(lanes_on, monkeypatch):
    """None: float64 data, too little work, or the plain kernels; the caller runs npcosteff.nn."""
    model = slender_model()
    c = model.config
    x = np.zeros((2, MAX_POS, D), np.float32)
    params = (Prefixed(model.params, "encoder.layer.0.attention."), Prefixed(model.params, "encoder.layer.0."),
              4, c.attention_head_size, None, c.layer_norm_eps)
    runs = CountRuns(monkeypatch)
    assert layer_forward_in_lanes(x.astype(np.float64), *params, flops=1e12) is None
    monkeypatch.setattr(lanes, "MIN_FLOPS", 1e9)
    assert layer_forward_in_lanes(x, *params, flops=1e9 - 1) is None
    kernels.use("reference")
    try:
        assert layer_forward_in_lanes(x, *params, flops=1e12) is None
    finally:
        kernels.use("fast")
    assert runs.calls == 0


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("masks", [False, True])
def test_layers_in_lanes_match_the_plain_path(lanes_on, monkeypatch, B, padded, masks):
    model = slender_model()
    ids, mask, types = batch(B, padded)
    kwargs = {}
    if masks:                                       # a head switched off, neurons halved and zeroed
        kwargs = dict(head_mask=[np.array([1.0, 0.0, 0.5, 1.0]), np.array([1.0]), np.array([0.0, 1.0])],
                      ffn_mask=[np.r_[np.ones(10), np.zeros(10)], np.ones(9), np.linspace(0, 1, 14)])
    expected = forward_plain(model, ids, mask, types, output_attentions=True, **kwargs)
    runs = CountRuns(monkeypatch)
    got = model.forward(ids, mask, types, output_attentions=True, **kwargs)
    # Hand-offs per layer: 4 by rows and samples (projections, attention core, output, FFN);
    # for one sample, 1 for the attention by heads and 1 for the FFN by neurons, except that a
    # layer with fewer heads than lanes (layer 2, one head) takes its attention by rows.
    assert runs.calls == (4 * 3 if B > 1 else 2 + (3 + 1) + 2)
    for g, e in zip(got.hidden_states, expected.hidden_states):
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL32)
    for g, e in zip(got.attentions, expected.attentions):
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL32)
    for g, e in zip(got.logits, expected.logits):
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL32)


def test_lanes_give_what_the_unsplit_fast_path_gives(lanes_on):
    """Within the fast path the lanes change only BLAS's summation order."""
    model = slender_model()
    ids, mask, types = batch(2, True)
    got = model.forward(ids, mask, types)
    with lanes.disabled():
        unsplit = model.forward(ids, mask, types)
    for g, e in zip(got.hidden_states, unsplit.hidden_states):
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL32)   # measured at most 1.2e-6


def test_early_exit_in_lanes_matches_the_plain_path(lanes_on, monkeypatch):
    model = slender_model()
    ids, mask, types = batch(3, True)
    kernels.use("reference")
    try:
        expected = early_exit_forward(model, ids, mask, types, threshold=0.9)
    finally:
        kernels.use("fast")
    runs = CountRuns(monkeypatch)
    got = early_exit_forward(model, ids, mask, types, threshold=0.9)
    assert runs.calls > 0
    np.testing.assert_array_equal(got.exit_layers, expected.exit_layers)
    np.testing.assert_allclose(got.logits, expected.logits, rtol=0, atol=ATOL32)


def test_training_and_float64_take_no_lanes(lanes_on, monkeypatch):
    model = slender_model()
    ids, mask, types = batch(2, False)
    runs = CountRuns(monkeypatch)
    model.forward(ids, mask, types, return_cache=True)            # a cache: the backward may follow
    model.forward(ids, mask, types, training=True)               # dropout
    model.forward(ids, mask, types, inference=False)             # a teacher's targets in training
    CostEffModel(model.config, model.params, dtype=np.float64).forward(ids, mask, types)
    assert runs.calls == 0


def test_a_bad_head_mask_is_refused_before_it_is_cut(lanes_on):
    model = slender_model()
    ids, mask, types = batch(1, False)
    with pytest.raises(ValueError, match="head_mask"):
        model.forward(ids, mask, types, head_mask=[np.ones(5), np.ones(1), np.ones(2)])


def test_a_bad_ffn_mask_is_refused_before_it_is_cut(lanes_on):
    model = slender_model()
    ids, mask, types = batch(1, False)              # one sample: the FFN by neurons, the mask cut in shares
    with pytest.raises(ValueError, match="ffn_mask"):
        model.forward(ids, mask, types, ffn_mask=[np.ones(21), np.ones(9), np.ones(14)])


def test_fewer_samples_than_lanes_take_heads_and_neurons(lanes_on, monkeypatch):
    """More lanes than samples (4 lanes, 3 samples, as on a 4-core machine): the attention goes
    by heads where the layer has as many heads as lanes (layer 1), each lane's share of the
    probabilities strided over the samples, and every FFN by neurons (20, 9 and 14 >= 4)."""
    model = slender_model()
    ids, mask, types = batch(3, True)
    kwargs = dict(head_mask=[np.array([1.0, 0.0, 0.5, 1.0]), np.array([1.0]), np.array([0.0, 1.0])],
                  ffn_mask=[np.r_[np.ones(10), np.zeros(10)], np.ones(9), np.linspace(0, 1, 14)])
    expected = forward_plain(model, ids, mask, types, output_attentions=True, **kwargs)
    monkeypatch.setattr(lanes, "count", lambda n_rows, dtype, flops: 4)
    runs = CountRuns(monkeypatch)
    got = model.forward(ids, mask, types, output_attentions=True, **kwargs)
    assert runs.calls == (1 + 1) + (3 + 1) + (3 + 1)
    for g, e in zip(got.hidden_states + got.attentions + got.logits,
                    expected.hidden_states + expected.attentions + expected.logits):
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL32)


@pytest.mark.parametrize("samples_per_chunk", [1, 2, 5])
def test_the_attention_core_in_chunks_of_samples_is_the_whole_core(monkeypatch, samples_per_chunk):
    """attention_core takes whole samples a chunk at a time (common.CORE_CHUNK_FLOATS): the same
    products and softmax rows as the whole batch at once, so the same numbers to the bit, and
    each sample keeps its own padding mask (five samples of different lengths; chunks of 1, 2
    and all 5 samples)."""
    from npcosteff.kernels import common, lanes_layer, reference

    rng = np.random.default_rng(7)
    B, h, T, d_h = 5, 3, 16, 8
    q, k, v = (rng.standard_normal((B, h, T, d_h)).astype(np.float32) for _ in range(3))
    lengths = np.array([16, 5, 11, 1, 9])
    mask = np.where(np.arange(T) < lengths[:, None], 0.0, np.finfo(np.float32).min).astype(np.float32)
    mask = mask.reshape(B, 1, 1, T)

    def core():
        probs = np.empty((B, h, T, T), np.float32)
        context = np.empty((B, T, h, d_h), np.float32).transpose(0, 2, 1, 3)   # (B, h, T, d_h), as a layer's
        lanes_layer.attention_core(q, k, v, mask, None, probs, context)
        return probs, np.array(context)

    monkeypatch.setattr(common, "CORE_CHUNK_FLOATS", B * h * T * T)      # one chunk: the whole batch
    whole = core()
    monkeypatch.setattr(common, "CORE_CHUNK_FLOATS", samples_per_chunk * h * T * T)
    chunked = core()
    for c, w in zip(chunked, whole):
        np.testing.assert_array_equal(c, w)
    # and the plain computation, in float64 (tolerance: the float32 softmax's 4 ulps and
    # float32 products of 16 terms, about 1e-6 here; a sample given another's mask moves its
    # probabilities by 1e-2 or more)
    expected = reference.softmax(np.matmul(q, k.transpose(0, 1, 3, 2)).astype(np.float64), mask.astype(np.float64))
    np.testing.assert_allclose(chunked[0], expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(chunked[1], expected @ v, rtol=0, atol=2e-5)
