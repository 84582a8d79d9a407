"""Finite-difference gradient checks of every layer of npcosteff.nn, each on its own.

Each layer's backward is compared, entry by entry, with central differences of the scalar
``loss = sum(out * dout)`` for a random upstream gradient ``dout`` (never ones: a random
``dout`` weights every output differently, so a transposed or mis-summed gradient shows up).
Everything runs in float64 with small, odd shapes (B=2, T=5, d=12) so that every entry of
every input and parameter is perturbed. Weights are random with a scale of ~0.5 (not BERT's
0.02) so that attention is far from uniform and every path carries an O(0.1..1) gradient;
LayerNorm gammas and betas are random too.

Tolerance. Central differences with step h = 1e-6 in float64 have a truncation error of
h^2/6 |f'''| ~ 1e-13 and a round-off error of ~ eps_64 |loss| / h ~ 2e-16 * 30 / 1e-6 ~ 1e-8
(the loss sums ~100 products of O(1) numbers, so |loss| is tens and its last bit is ~1e-14).
The largest error measured over all checks here is 9e-9; ``FD_TOL`` (atol 1e-7, rtol 1e-7)
leaves a ~10x margin, while a wrong gradient (a missing factor, a dropped term, a transposed
matrix) is off by O(0.1): each check also asserts that the gradient it checks is not ~0.

Also here: ``linear_backward`` adds into given buffers, the model's ``zero_grad`` clears, two
model backward calls accumulate exactly twice, and a residual-branch check (with the dense
weights zeroed, a block's input gradient is exactly the LayerNorm backward alone).
"""

import numpy as np
import pytest

from npcosteff import kernels
from npcosteff.config import CostEffConfig
from npcosteff.model import CostEffModel, param_shapes
from npcosteff.nn.attention import attention_backward, attention_forward
from npcosteff.nn.embeddings import (embeddings_backward, embeddings_forward,
                                     word_embeddings_backward, word_embeddings_forward)
from npcosteff.nn.exits import exit_backward, exit_forward
from npcosteff.nn.ffn import ffn_backward, ffn_forward
from npcosteff.nn.linear import linear_backward, linear_forward

B, T, D = 2, 5, 12           # batch, tokens, hidden size: odd and unequal, so no axis mix-up passes
HEAD_SIZE = 4
EPS_LN = 1e-12               # BERT's LayerNorm epsilon
FD_STEP = 1e-6               # central-difference step (see the module docstring)
FD_TOL = dict(rtol=1e-7, atol=1e-7)  # ~10x the largest measured FD error (9e-9), far below any real bug


# --------------------------------------------------------------------------- helpers

def random_params(rng, shapes, scale=0.5):
    """Random float64 parameters: N(0, scale^2) weights and biases; LayerNorm gamma ~ 1 + N(0, 0.3^2)
    (not all ones, so a gradient that ignores gamma fails)."""
    out = {}
    for name, shape in shapes.items():
        if name.endswith("LayerNorm.weight"):
            out[name] = 1.0 + 0.3 * rng.standard_normal(shape)
        else:
            out[name] = scale * rng.standard_normal(shape)
    return out


def zero_grads(params):
    return {n: np.zeros_like(p) for n, p in params.items()}


def padding_mask(lengths, tokens=T):
    """(B, T) int mask with lengths[b] leading real tokens."""
    return (np.arange(tokens)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)


def additive(attention_mask):
    """(B, T) 0/1 -> (B, 1, 1, T) additive mask, as CostEffModel.additive_mask builds it."""
    m = (1.0 - attention_mask.astype(np.float64)) * np.finfo(np.float64).min
    return m.reshape(attention_mask.shape[0], 1, 1, attention_mask.shape[1])


def dropout_mask(rng, shape, p=0.3):
    """A float64 dropout multiplier (0 or 1/(1-p)); asserts it drops some and keeps some entries."""
    m = kernels.dropout_mask(rng, shape, p, np.float64)
    assert (m == 0).any() and (m > 0).any()
    return m


def finite_difference(loss, array, h=FD_STEP):
    """Central differences of the scalar loss() with respect to every entry of `array` (in place)."""
    grad = np.zeros_like(array)
    for idx in np.ndindex(array.shape):
        orig = array[idx]
        array[idx] = orig + h
        plus = loss()
        array[idx] = orig - h
        minus = loss()
        array[idx] = orig
        grad[idx] = (plus - minus) / (2.0 * h)
    return grad


def check_all(loss, arrays, analytic, skip_zero=()):
    """Compare analytic gradients with finite differences for each named array.

    `arrays` maps names to the arrays loss() reads (perturbed in place); `analytic` maps the
    same names to the backward's gradients. Returns the largest absolute error seen. Names not
    in `skip_zero` must get a gradient that is not identically zero (else the check is empty).
    """
    worst = 0.0
    for name, array in arrays.items():
        numeric = finite_difference(loss, array)
        np.testing.assert_allclose(analytic[name], numeric, **FD_TOL, err_msg=name)
        if name not in skip_zero:
            assert np.abs(numeric).max() > 1e-3, f"{name}: the check is vacuous (zero gradient)"
        worst = max(worst, float(np.abs(analytic[name] - numeric).max()))
    print(f"largest |analytic - finite difference| = {worst:.2e}")
    return worst


# --------------------------------------------------------------------------- linear

def test_linear_gradients_on_3d_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, 7))                      # (B, T, in): leading axes flattened
    weight = rng.standard_normal((3, 7))                    # (out, in)
    bias = rng.standard_normal(3)
    dout = rng.standard_normal((B, T, 3))
    y, cache = linear_forward(x, weight, bias)
    assert y.shape == (B, T, 3)
    np.testing.assert_allclose(y, np.einsum("bti,oi->bto", x, weight) + bias, rtol=1e-13, atol=1e-13)
    dx, g = linear_backward(dout, cache)
    assert dx.shape == x.shape

    def loss():
        return float((linear_forward(x, weight, bias)[0] * dout).sum())

    check_all(loss, {"x": x, "weight": weight, "bias": bias},
              {"x": dx, "weight": g["weight"], "bias": g["bias"]})


def test_linear_backward_adds_into_given_buffers():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 5))
    weight, bias = rng.standard_normal((4, 5)), rng.standard_normal(4)
    dout = rng.standard_normal((6, 4))
    _, cache = linear_forward(x, weight, bias)
    _, fresh = linear_backward(dout, cache)                 # fresh buffers when grads is None
    buffers = {"weight": np.zeros_like(weight), "bias": np.zeros_like(bias)}
    _, returned = linear_backward(dout, cache, buffers)
    assert returned is buffers                              # the very buffers given, not copies
    linear_backward(dout, cache, buffers)
    # Same products twice: g + g == 2 g exactly in floating point.
    np.testing.assert_array_equal(buffers["weight"], 2.0 * fresh["weight"])
    np.testing.assert_array_equal(buffers["bias"], 2.0 * fresh["bias"])
    # A buffer with prior content keeps it: += not =.
    offset = {"weight": np.full_like(weight, 3.0), "bias": np.full_like(bias, -1.0)}
    linear_backward(dout, cache, offset)
    np.testing.assert_array_equal(offset["weight"], 3.0 + fresh["weight"])
    np.testing.assert_array_equal(offset["bias"], -1.0 + fresh["bias"])


# --------------------------------------------------------------------------- word embeddings

# Repeated ids within and across rows: their rows of dE must add up (np.add.at, not fancy +=).
IDS = np.array([[3, 7, 3, 0, 9],
                [7, 7, 1, 3, 10]])
VOCAB = 11


@pytest.mark.parametrize("rank", [None, 3], ids=["plain", "factorized"])
def test_word_embeddings_gradients_with_repeated_ids(rank):
    rng = np.random.default_rng(2)
    p = {"word_embeddings.weight": rng.standard_normal((VOCAB, rank or D))}
    if rank is not None:
        p["word_embeddings.projection"] = rng.standard_normal((rank, D))
    dout = rng.standard_normal((B, T, D))
    word, cache = word_embeddings_forward(IDS, p)
    assert word.shape == (B, T, D)
    if rank is not None:
        np.testing.assert_allclose(word, p["word_embeddings.weight"][IDS] @ p["word_embeddings.projection"],
                                   rtol=1e-13, atol=1e-13)
    grads = zero_grads(p)
    word_embeddings_backward(dout, cache, p, grads)

    def loss():
        return float((word_embeddings_forward(IDS, p)[0] * dout).sum())

    check_all(loss, p, grads, skip_zero=())
    # Ids that never occur get exactly zero gradient rows.
    unused = np.setdiff1d(np.arange(VOCAB), IDS)
    assert unused.size and not grads["word_embeddings.weight"][unused].any()


# --------------------------------------------------------------------------- embeddings

def embeddings_shapes(max_positions=7, type_vocab=2):
    return {"position_embeddings.weight": (max_positions, D),
            "token_type_embeddings.weight": (type_vocab, D),
            "LayerNorm.weight": (D,), "LayerNorm.bias": (D,)}


def test_embeddings_gradients_with_dropout_and_two_token_types():
    rng = np.random.default_rng(3)
    p = random_params(rng, embeddings_shapes())
    inputs_embeds = rng.standard_normal((B, T, D))
    token_type_ids = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    mask = dropout_mask(rng, (B, T, D))
    dout = rng.standard_normal((B, T, D))

    y, cache = embeddings_forward(inputs_embeds, token_type_ids, p, EPS_LN, mask)
    grads = zero_grads(p)
    dx = embeddings_backward(dout, cache, p, grads)

    def loss():
        return float((embeddings_forward(inputs_embeds, token_type_ids, p, EPS_LN, mask)[0] * dout).sum())

    arrays = dict(p, inputs_embeds=inputs_embeds)
    check_all(loss, arrays, dict(grads, inputs_embeds=dx))
    # Positions beyond T are not used: their gradient rows stay exactly zero.
    assert not grads["position_embeddings.weight"][T:].any()


# --------------------------------------------------------------------------- attention

def attention_shapes(num_heads):
    A = num_heads * HEAD_SIZE
    shapes = {}
    for proj in ("query", "key", "value"):
        shapes[f"self.{proj}.weight"] = (A, D)
        shapes[f"self.{proj}.bias"] = (A,)
    shapes.update({"output.dense.weight": (D, A), "output.dense.bias": (D,),
                   "output.LayerNorm.weight": (D,), "output.LayerNorm.bias": (D,)})
    return shapes


# 3 heads of 4 (A = d = 12) and a slender layer with 2 heads (A = 8 < d = 12).
@pytest.mark.parametrize("num_heads, head_mask", [
    (3, np.array([0.6, 1.0, 0.3])),          # fractional head mask: each head scaled differently
    (2, np.array([1.0, 0.45])),
], ids=["3heads", "slender-2heads"])
def test_attention_gradients_with_masks_dropout_and_dprobs(num_heads, head_mask):
    rng = np.random.default_rng(4 + num_heads)
    p = random_params(rng, attention_shapes(num_heads))
    x = rng.standard_normal((B, T, D))
    add_mask = additive(padding_mask([5, 3]))                       # second sample: 2 padding keys
    probs_drop = dropout_mask(rng, (B, num_heads, T, T))
    out_drop = dropout_mask(rng, (B, T, D))
    dout = rng.standard_normal((B, T, D))
    dprobs_extra = rng.standard_normal((B, num_heads, T, T))        # attention-distillation gradient

    def run():
        return attention_forward(x, p, num_heads, HEAD_SIZE, add_mask, EPS_LN, head_mask=head_mask,
                                 probs_dropout=probs_drop, output_dropout=out_drop)

    y, probs, cache = run()
    assert y.shape == (B, T, D) and probs.shape == (B, num_heads, T, T)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-14, atol=1e-14)
    assert not probs[1, :, :, 3:].any()                              # padding keys get exactly 0
    grads = zero_grads(p)
    dx = attention_backward(dout, cache, p, grads, dprobs_extra=dprobs_extra)

    def loss():
        y, probs, _ = run()
        return float((y * dout).sum() + (probs * dprobs_extra).sum())

    # The key bias adds q . b_k to every score of a query's row, which the softmax cancels:
    # its gradient is zero in exact arithmetic (finite differences see ~1e-9 of round-off).
    check_all(loss, dict(p, x=x), dict(grads, x=dx), skip_zero=("self.key.bias",))
    np.testing.assert_allclose(grads["self.key.bias"], 0.0, atol=1e-12)


def test_attention_gradients_without_optional_masks():
    """The plain path (no padding, head mask, dropout or dprobs_extra) on its own."""
    rng = np.random.default_rng(8)
    p = random_params(rng, attention_shapes(3))
    x = rng.standard_normal((B, T, D))
    add_mask = additive(np.ones((B, T), np.int64))
    dout = rng.standard_normal((B, T, D))
    y, _, cache = attention_forward(x, p, 3, HEAD_SIZE, add_mask, EPS_LN)
    grads = zero_grads(p)
    dx = attention_backward(dout, cache, p, grads)

    def loss():
        return float((attention_forward(x, p, 3, HEAD_SIZE, add_mask, EPS_LN)[0] * dout).sum())

    check_all(loss, dict(p, x=x), dict(grads, x=dx), skip_zero=("self.key.bias",))


# --------------------------------------------------------------------------- FFN

def ffn_shapes(F):
    return {"intermediate.dense.weight": (F, D), "intermediate.dense.bias": (F,),
            "output.dense.weight": (D, F), "output.dense.bias": (D,),
            "output.LayerNorm.weight": (D,), "output.LayerNorm.bias": (D,)}


@pytest.mark.parametrize("use_masks", [True, False], ids=["ffn_mask+dropout", "plain"])
def test_ffn_gradients(use_masks):
    rng = np.random.default_rng(9)
    F = 7
    p = random_params(rng, ffn_shapes(F))
    x = rng.standard_normal((B, T, D))
    ffn_mask = np.array([1.0, 0.0, 0.5, 1.0, 0.8, 0.0, 1.0]) if use_masks else None  # fractional and off
    out_drop = dropout_mask(rng, (B, T, D)) if use_masks else None
    dout = rng.standard_normal((B, T, D))

    def run():
        return ffn_forward(x, p, EPS_LN, ffn_mask=ffn_mask, output_dropout=out_drop)

    y, cache = run()
    grads = zero_grads(p)
    dx = ffn_backward(dout, cache, p, grads)

    def loss():
        return float((run()[0] * dout).sum())

    check_all(loss, dict(p, x=x), dict(grads, x=dx))
    if use_masks:
        # Switched-off neurons (mask 0) get no gradient at all.
        off = ffn_mask == 0
        assert not grads["intermediate.dense.weight"][off].any()
        assert not grads["intermediate.dense.bias"][off].any()
        assert not grads["output.dense.weight"][:, off].any()


# --------------------------------------------------------------------------- exits

@pytest.mark.parametrize("pooler", ["cls_tanh", "mean", "dense"])
def test_exit_gradients_for_each_pooler(pooler):
    rng = np.random.default_rng(10)
    C = 3
    shapes = {"classifier.weight": (C, D), "classifier.bias": (C,)}
    if pooler == "dense":
        shapes.update({"pooler.dense.weight": (D, D), "pooler.dense.bias": (D,)})
    p = random_params(rng, shapes)
    h = rng.standard_normal((B, T, D))
    attention_mask = padding_mask([5, 2])                          # uneven padding for the mean pooler
    drop = dropout_mask(rng, (B, D))
    dlogits = rng.standard_normal((B, C))

    def run():
        return exit_forward(h, attention_mask, p, pooler, drop)

    logits, cache = run()
    assert logits.shape == (B, C)
    grads = zero_grads(p)
    dh = exit_backward(dlogits, cache, grads)
    assert dh.shape == h.shape

    def loss():
        return float((run()[0] * dlogits).sum())

    check_all(loss, dict(p, h=h), dict(grads, h=dh))
    if pooler == "mean":
        assert not dh[1, 2:].any()                                 # padding tokens get no gradient
        assert dh[1, :2].any()
    else:
        assert not dh[:, 1:].any()                                 # only [CLS] is pooled


# --------------------------------------------------------------------------- residual branch

def test_residual_branch_is_the_layer_norm_backward_when_dense_weights_are_zero():
    """With the output dense weights zeroed, out = LayerNorm(x + b): dx must be the LayerNorm
    backward alone (the identity path), and Q/K/V or the intermediate dense get no gradient."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((B, T, D))
    dout = rng.standard_normal((B, T, D))
    add_mask = additive(padding_mask([5, 4]))

    pa = random_params(rng, attention_shapes(2))
    pa["output.dense.weight"][:] = 0.0
    _, _, cache = attention_forward(x, pa, 2, HEAD_SIZE, add_mask, EPS_LN)
    ga = zero_grads(pa)
    dx_att = attention_backward(dout, cache, pa, ga)
    s = x + pa["output.dense.bias"]                               # the LayerNorm's input
    _, mean, rstd = kernels.reference.layer_norm(s, pa["output.LayerNorm.weight"], pa["output.LayerNorm.bias"], EPS_LN)
    dx_ln, _, _ = kernels.reference.layer_norm_backward(dout, s, pa["output.LayerNorm.weight"], mean, rstd)
    assert np.abs(dx_ln).max() > 1e-2
    # Only the summation order of the residual copy differs: a few ulps of O(1) numbers.
    np.testing.assert_allclose(dx_att, dx_ln, rtol=1e-12, atol=1e-12)
    for proj in ("query", "key", "value"):
        assert not ga[f"self.{proj}.weight"].any()

    pf = random_params(rng, ffn_shapes(7))
    pf["output.dense.weight"][:] = 0.0
    _, cache = ffn_forward(x, pf, EPS_LN)
    gf = zero_grads(pf)
    dx_ffn = ffn_backward(dout, cache, pf, gf)
    s = x + pf["output.dense.bias"]
    _, mean, rstd = kernels.reference.layer_norm(s, pf["output.LayerNorm.weight"], pf["output.LayerNorm.bias"], EPS_LN)
    dx_ln, _, _ = kernels.reference.layer_norm_backward(dout, s, pf["output.LayerNorm.weight"], mean, rstd)
    np.testing.assert_allclose(dx_ffn, dx_ln, rtol=1e-12, atol=1e-12)
    assert not gf["intermediate.dense.weight"].any()


# --------------------------------------------------------------------------- model gradient buffers

def tiny_model():
    config = CostEffConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=2, num_attention_heads=3,
                           intermediate_size=10, max_position_embeddings=8, heads_per_layer=[3, 2],
                           intermediate_per_layer=[10, 6], num_labels=3, exit_start=1, pooler="dense")
    rng = np.random.default_rng(12)
    return CostEffModel(config, random_params(rng, param_shapes(config), scale=0.3), dtype=np.float64)


def model_backward(model, rng):
    """One forward/backward with random upstream gradients on hidden states and logits."""
    out = model(IDS, padding_mask([5, 4]), return_cache=True, output_attentions=True)
    ghs = [rng.standard_normal(h.shape) for h in out.hidden_states]
    gz = [rng.standard_normal(z.shape) for z in out.logits]
    ga = [rng.standard_normal(a.shape) for a in out.attentions]
    return model.backward(out.cache, grad_hidden_states=ghs, grad_logits=gz, grad_attentions=ga)


def test_model_zero_grad_clears_and_backward_accumulates_exactly_twice():
    model = tiny_model()
    buffers = {n: g for n, g in model.grads.items()}
    assert all(not g.any() for g in model.grads.values())
    model_backward(model, np.random.default_rng(13))
    once = {n: g.copy() for n, g in model.grads.items()}
    assert all(g.any() for g in once.values()), [n for n, g in once.items() if not g.any()]
    model_backward(model, np.random.default_rng(13))            # same upstream gradients again
    for n in model.param_names:
        if n == "embeddings.word_embeddings.weight":
            # np.add.at adds each repeated id's row into the buffer one at a time, so the second
            # call computes ((g_a + g_b) + g_a) + g_b, not 2 (g_a + g_b): a few roundings of
            # O(10) numbers, i.e. ~1e-15; 1e-13 bounds that, a missing or doubled row would be O(1).
            np.testing.assert_allclose(model.grads[n], 2.0 * once[n], rtol=0, atol=1e-13, err_msg=n)
        else:
            # Every other buffer gets one `+=` of the same array per call: g + g == 2 g exactly.
            np.testing.assert_array_equal(model.grads[n], 2.0 * once[n], err_msg=n)
    model.zero_grad()
    assert all(not g.any() for g in model.grads.values())
    # zero_grad clears in place: an optimizer holding the buffers keeps seeing the live ones.
    assert all(model.grads[n] is buffers[n] for n in model.param_names)
