"""CostEffModel input handling: bad input raises a clear error; equivalent inputs agree.

Every malformed argument of ``forward`` and ``backward`` must raise an error whose message
names the problem (the offending id, shape or range), not a NumPy error from deep inside a
layer or, worse, a silently wrong result. Equivalent inputs (``inputs_embeds`` instead of
``input_ids``, extra padding, float32 instead of float64) must give the same hidden states.
"""

import numpy as np
import pytest

import npcosteff
from npcosteff.config import CostEffConfig
from npcosteff.model import CostEffModel, param_shapes

VOCAB, D, MAX_POS = 23, 12, 9


def tiny_config(**changes):
    fields = dict(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=2, num_attention_heads=3,
                  intermediate_size=10, max_position_embeddings=MAX_POS, heads_per_layer=[3, 2],
                  intermediate_per_layer=[10, 7], num_labels=3, exit_start=1, pooler="mean")
    fields.update(changes)
    return CostEffConfig(**fields)


def tiny_model(dtype=np.float64, **changes):
    """Random weights of scale 0.3 (biases and LayerNorms too): attention is far from uniform."""
    config = tiny_config(**changes)
    rng = np.random.default_rng(0)
    params = {}
    for name, shape in param_shapes(config).items():
        base = 1.0 if name.endswith("LayerNorm.weight") else 0.0
        params[name] = base + 0.3 * rng.standard_normal(shape)
    return CostEffModel(config, params, dtype=dtype)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


IDS = np.array([[1, 5, 22, 7, 2], [3, 3, 9, 0, 14]])        # (B=2, T=5)


# --------------------------------------------------------------------------- bad input_ids

def test_token_id_at_vocab_size_names_id_and_vocab_size(model):
    ids = IDS.copy()
    ids[1, 2] = VOCAB
    with pytest.raises(ValueError, match=rf"token id {VOCAB} .*vocab_size {VOCAB}"):
        model(ids)


def test_negative_token_id(model):
    ids = IDS.copy()
    ids[0, 4] = -1
    with pytest.raises(ValueError, match=rf"token id -1 .*vocab_size {VOCAB}"):
        model(ids)


def test_sequence_longer_than_max_positions(model):
    ids = np.ones((1, MAX_POS + 1), np.int64)
    with pytest.raises(ValueError, match=rf"sequence length {MAX_POS + 1} .*max_position_embeddings {MAX_POS}"):
        model(ids)
    assert model(np.ones((1, MAX_POS), np.int64)).last_hidden_state.shape == (1, MAX_POS, D)  # the limit itself is fine


def test_one_dimensional_input_ids(model):
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, tokens\), got shape \(5,\)"):
        model(IDS[0])


def test_float_input_ids(model):
    with pytest.raises(TypeError, match="input_ids must be integers, got float64"):
        model(IDS.astype(np.float64))


def test_empty_batch(model):
    with pytest.raises(ValueError, match="empty batch"):
        model(np.zeros((2, 0), np.int64))


def test_both_or_neither_of_input_ids_and_inputs_embeds(model):
    embeds = np.zeros((2, 5, D))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(IDS, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model()


def test_inputs_embeds_of_wrong_width(model):
    with pytest.raises(ValueError, match=rf"inputs_embeds must be \(batch, tokens, {D}\), got shape \(2, 5, 11\)"):
        model(inputs_embeds=np.zeros((2, 5, D - 1)))


# --------------------------------------------------------------------------- bad masks and types

def test_attention_mask_shape_mismatch(model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\), input has \(2, 5\)"):
        model(IDS, np.ones((2, 4), np.int64))


def test_attention_mask_values_other_than_0_and_1(model):
    """(1 - m) * finfo.min with m = 2 is +max: the "masked" token would take all attention."""
    mask = np.ones_like(IDS)
    mask[0, 1] = 2
    with pytest.raises(ValueError, match="attention_mask"):
        model(IDS, mask)


def test_sample_without_real_tokens(model):
    """An all-padding row has nothing to pool: the mean pooler would divide by zero (NaN)."""
    mask = np.ones_like(IDS)
    mask[1] = 0
    with pytest.raises(ValueError, match="attention_mask"):
        model(IDS, mask)


def test_token_type_ids_out_of_range(model):
    with pytest.raises(ValueError, match=r"token_type_ids must lie in 0\.\.1"):
        model(IDS, token_type_ids=np.full_like(IDS, 2))
    with pytest.raises(ValueError, match=r"token_type_ids must lie in 0\.\.1"):
        model(IDS, token_type_ids=np.full_like(IDS, -1))


def test_token_type_ids_shape_mismatch(model):
    with pytest.raises(ValueError, match=r"token_type_ids has shape \(2, 4\), input has \(2, 5\)"):
        model(IDS, token_type_ids=np.zeros((2, 4), np.int64))


def test_float_token_type_ids(model):
    with pytest.raises(TypeError, match="token_type_ids"):
        model(IDS, token_type_ids=np.zeros(IDS.shape, np.float64))


def test_head_mask_of_wrong_length_or_shape(model):
    with pytest.raises(ValueError, match="head_mask has 1 entries for 2 layers"):
        model(IDS, head_mask=[np.ones(3)])
    # Layer 1 is slender (2 heads): a 3-head mask for it names the layer and both widths.
    with pytest.raises(ValueError, match=r"head_mask for layer 1 has shape \(3,\), the layer has width \(2,\)"):
        model(IDS, head_mask=[np.ones(3), np.ones(3)])
    # A (L, H) array only fits when every layer has H heads.
    with pytest.raises(ValueError, match=r"head_mask for layer 1 has shape \(3,\)"):
        model(IDS, head_mask=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"head_mask for layer 0 has shape \(\)"):
        model(IDS, head_mask=np.ones(2))          # one number per layer is not a per-head mask


def test_ffn_mask_of_wrong_shape(model):
    with pytest.raises(ValueError, match=r"ffn_mask for layer 1 has shape \(10,\), the layer has width \(7,\)"):
        model(IDS, ffn_mask=[np.ones(10), np.ones(10)])
    with pytest.raises(ValueError, match="ffn_mask has 3 entries for 2 layers"):
        model(IDS, ffn_mask=[np.ones(10), np.ones(7), np.ones(7)])


@pytest.mark.parametrize("max_layer", [0, 3, -1])
def test_max_layer_out_of_range(model, max_layer):
    with pytest.raises(ValueError, match=rf"max_layer {max_layer} is outside 1\.\.2"):
        model(IDS, max_layer=max_layer)


# --------------------------------------------------------------------------- bad backward calls

def test_backward_without_cache(model):
    out = model(IDS)                                    # return_cache=False: out.cache is None
    with pytest.raises(ValueError, match="return_cache=True"):
        model.backward(out.cache, grad_logits=[np.ones((2, 3)), None])


def test_backward_with_wrong_number_of_gradients(model):
    out = model(IDS, return_cache=True)
    g = [np.zeros((2, 5, D))] * 3
    with pytest.raises(ValueError, match="expected 3 hidden-state, 2 logit and 2 attention gradients, got 2, 2 and 2"):
        model.backward(out.cache, grad_hidden_states=g[:2])
    with pytest.raises(ValueError, match="got 3, 1 and 2"):
        model.backward(out.cache, grad_logits=[np.zeros((2, 3))])
    with pytest.raises(ValueError, match="got 3, 2 and 3"):
        model.backward(out.cache, grad_attentions=[None] * 3)
    # After max_layer=1 there is one layer and one exit.
    out1 = model(IDS, max_layer=1, return_cache=True)
    with pytest.raises(ValueError, match="expected 2 hidden-state, 1 logit and 1 attention gradients"):
        model.backward(out1.cache, grad_logits=[np.zeros((2, 3))] * 2)


def test_backward_with_wrongly_shaped_gradients(model):
    """A transposed (C, B) logit gradient or a broadcastable (1, T, d) one must not be
    silently reshaped or broadcast into a wrong result."""
    out = model(IDS, return_cache=True, output_attentions=True)
    model.zero_grad()
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        model.backward(out.cache, grad_logits=[None, np.ones((3, 2))])           # (C, B) for (B, C)
    with pytest.raises(ValueError, match=r"\(1, 5, 12\)"):
        model.backward(out.cache, grad_hidden_states=[None, None, np.ones((1, 5, D))])
    with pytest.raises(ValueError, match=r"\(1, 2, 5, 5\)"):
        model.backward(out.cache, grad_attentions=[None, np.ones((1, 2, 5, 5))],
                       grad_hidden_states=[None, None, np.ones((2, 5, D))])
    model.zero_grad()


# --------------------------------------------------------------------------- equivalent inputs

def test_inputs_embeds_equal_to_word_embeddings_gives_the_same_output():
    """Word embeddings E[ids] (or E[ids] @ P when factorized) passed as inputs_embeds."""
    for rank in (None, 4):
        m = tiny_model(embedding_rank=rank)
        types = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
        mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
        E = m.params["embeddings.word_embeddings.weight"]
        embeds = E[IDS] if rank is None else E[IDS] @ m.params["embeddings.word_embeddings.projection"]
        a = m(IDS, mask, types)
        b = m(None, mask, types, inputs_embeds=embeds)
        # The same arithmetic on the same numbers: identical to the bit.
        for x, y in zip(a.hidden_states + a.logits, b.hidden_states + b.logits):
            np.testing.assert_array_equal(x, y)


def test_padding_does_not_change_real_tokens():
    """Appending padding columns leaves the real positions' hidden states and the mean-pooled
    logits unchanged: padded keys get exactly zero attention (exp(finfo.min) == 0), so only the
    summation order inside BLAS may differ (a few ulps; 1e-12 for O(1) float64 values)."""
    m = tiny_model()
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    types = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    base = m(IDS, mask, types)
    extra = 3
    ids_p = np.concatenate([IDS, np.zeros((2, extra), np.int64)], axis=1)
    mask_p = np.concatenate([mask, np.zeros((2, extra), np.int64)], axis=1)
    types_p = np.concatenate([types, np.zeros((2, extra), np.int64)], axis=1)
    padded = m(ids_p, mask_p, types_p)
    real = mask == 1
    for h, hp in zip(base.hidden_states, padded.hidden_states):
        np.testing.assert_allclose(hp[:, :5][real], h[real], rtol=1e-12, atol=1e-12)
    for z, zp in zip(base.logits, padded.logits):
        np.testing.assert_allclose(zp, z, rtol=1e-12, atol=1e-12)


def test_float32_and_float64_agree_on_minilm():
    """The packaged MiniLM on real sentences, float32 vs float64.

    float32 rounds every product and sum to 2^-24 ~ 6e-8 relative; over 6 layers of d=384
    dot products and LayerNorms the hidden states (up to ~10 in size after the LayerNorm gains)
    drift by ~1e-6: measured up to 3.5e-6 in the last layer. rtol = atol = 1e-5 bounds that with a
    ~3x margin, while a real float32 bug (a lost mask, an unscaled score) would be O(1e-2) or worse.
    """
    tok = npcosteff.Tokenizer.from_pretrained()
    # Sentence pairs of uneven lengths: two token types and padding in the batch.
    batch = tok(["a gripping, funny film", "the plot never quite comes together, sadly", "is it good?"],
                text_pair=["it is", "a pity", "yes, very much so, and more"], max_length=24)
    assert batch["token_type_ids"].any() and not batch["attention_mask"].all()
    m32 = npcosteff.from_pretrained(dtype=np.float32)
    m64 = m32.astype(np.float64)
    out32, out64 = m32(**batch), m64(**batch)
    assert out32.last_hidden_state.dtype == np.float32 and out64.last_hidden_state.dtype == np.float64
    real = batch["attention_mask"] == 1
    for h32, h64 in zip(out32.hidden_states, out64.hidden_states):
        np.testing.assert_allclose(h32[real], h64[real], rtol=1e-5, atol=1e-5)
