"""npcosteff's encoder against Hugging Face `transformers` and the independent torch reference:
every hidden state on the real MiniLM weights, and the gradient of every parameter and of the
embeddings' input, in float64 (tight) and float32 (honest)."""

import numpy as np
import pytest
import torch

import npcosteff
from npcosteff.model import CostEffModel

from .helpers import (assert_close_by_name, make_pair, odd_batch, odd_config, replay, shared_dropout,
                      torch_grads, torch_masks)
from .reference import RefCostEffBert, to_numpy

SENTENCES = ["a gripping, funny and moving film", "dull", "the plot makes no sense at all, sadly"]
PAIRS = ["it is what it is", "an ode to the city", "no"]


@pytest.fixture(scope="module")
def real_batch():
    tok = npcosteff.Tokenizer.from_pretrained()
    return tok(SENTENCES, PAIRS, max_length=32)          # uneven lengths: padding in the batch


# float64: both sides do the same arithmetic in a different order; observed ~1e-14.
# float32: 6 layers of LayerNorm/softmax in single precision; observed ~1e-5 (issue's bound 1e-4).
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_forward_matches_transformers_on_minilm(minilm_dir, real_batch, dtype, tol):
    transformers = pytest.importorskip("transformers")
    model = npcosteff.from_pretrained(dtype=dtype)
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    hf = hf.double() if dtype == np.float64 else hf.float()
    out = model(**real_batch)
    with torch.no_grad():
        ref = hf(**{k: torch.as_tensor(v) for k, v in real_batch.items()}, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == 7
    for l, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states)):
        err = np.abs(a - b.numpy()).max()
        assert err <= tol, f"hidden state {l}: max |diff| {err:.3e} > {tol}"


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_forward_matches_reference_on_minilm(minilm_dir, real_batch, device, dtype, tol):
    model = npcosteff.from_pretrained(dtype=np.float64 if dtype == torch.float64 else np.float32)
    ref = RefCostEffBert(model.config.to_dict(), model.state_dict(), dtype=dtype, device=device)
    out = model(**real_batch)
    with torch.no_grad():
        r = ref(**real_batch)
    for l, (a, b) in enumerate(zip(out.hidden_states, r.hidden_states)):
        assert np.abs(a - to_numpy(b)).max() <= tol, f"hidden state {l}"


def _backward_both(model, ref, ids, mask, tt, rng, head_mask=None, ffn_mask=None):
    """Same weights, inputs, dropout masks and random upstream gradients on both sides,
    with gradient equilibrium on; returns (npcosteff grads, reference grads, d inputs_embeds both)."""
    masks = shared_dropout(model, ids, mask, tt, head_mask=head_mask, ffn_mask=ffn_mask)
    out = model(ids, mask, tt, training=True, dropout=replay(masks), head_mask=head_mask, ffn_mask=ffn_mask,
                return_cache=True, output_attentions=True, gradient_equilibrium="authors")
    gh = [rng.standard_normal(h.shape) for h in out.hidden_states]
    gz = [rng.standard_normal(z.shape) for z in out.logits]
    ga = [rng.standard_normal(a.shape) for a in out.attentions]
    model.zero_grad()
    d_embeds = model.backward(out.cache, gh, gz, ga)

    def torch_loss(r):
        t = lambda x: torch.as_tensor(x, dtype=r.hidden_states[0].dtype, device=ref.device)
        loss = sum((h * t(g)).sum() for h, g in zip(r.hidden_states, gh))
        loss = loss + sum((z * t(g)).sum() for z, g in zip(r.logits, gz))
        return loss + sum((a * t(g)).sum() for a, g in zip(r.attentions, ga))

    kw = dict(dropout_masks=torch_masks(masks, ref), head_mask=head_mask, ffn_mask=ffn_mask,
              gradient_equilibrium=True, output_attentions=True)
    ref.zero_grad()
    r = ref(ids, mask, tt, **kw)
    for a, b in zip(out.logits, r.logits):                  # same forward before comparing gradients
        np.testing.assert_allclose(a, to_numpy(b), rtol=1e-6, atol=1e-6)
    torch_loss(r).backward()
    ref_grads = torch_grads(ref)

    # The gradient of inputs_embeds: feed the word vectors as a leaf tensor.
    word = ref.embeddings.word_embeddings(torch.as_tensor(ids, device=ref.device)).detach().requires_grad_(True)
    ref.zero_grad()
    torch_loss(ref(None, mask, tt, inputs_embeds=word, **kw)).backward()
    return model.grads, ref_grads, d_embeds, to_numpy(word.grad)


def test_backward_matches_reference_on_minilm(minilm_dir, real_batch, device):
    """Real weights with fresh exits (C=2), float64, every parameter and the input gradient."""
    model = npcosteff.from_pretrained(dtype=np.float64, num_labels=2, exit_start=1)
    ref = RefCostEffBert(model.config.to_dict(), model.state_dict(), dtype=torch.float64, device=device)
    rng = np.random.default_rng(0)
    g_np, g_ref, de_np, de_ref = _backward_both(model, ref, real_batch["input_ids"], real_batch["attention_mask"],
                                                real_batch["token_type_ids"], rng)
    # float64, relative to each gradient's scale: the two sides sum in different orders (~1e-14).
    assert_close_by_name(g_np, g_ref, model.param_names, rtol=1e-10)
    assert np.abs(de_np - de_ref).max() <= 1e-10 * np.abs(de_ref).max()


@pytest.mark.parametrize("pooler", ["cls_tanh", "mean", "dense"])
@pytest.mark.parametrize("factorized", [False, True])
def test_backward_matches_reference_odd_config(device, pooler, factorized):
    """3 layers, d=48, 4 heads, FFN 80, slender layers, uneven padding, head and FFN masks."""
    config = odd_config(pooler=pooler, heads_per_layer=[4, 3, 2], intermediate_per_layer=[80, 51, 80],
                        embedding_rank=20 if factorized else None, exit_start=2)
    model, ref = make_pair(config, torch.float64, device, seed=3)
    rng = np.random.default_rng(1)
    ids, mask, tt = odd_batch(rng)
    head_mask = [rng.uniform(0.5, 1.5, 4), np.array([1.0, 0.0, 1.0]), None]   # fractional and zero entries
    ffn_mask = [None, (rng.random(51) > 0.3).astype(float), rng.uniform(0.5, 1.5, 80)]
    g_np, g_ref, de_np, de_ref = _backward_both(model, ref, ids, mask, tt, rng, head_mask, ffn_mask)
    assert_close_by_name(g_np, g_ref, model.param_names, rtol=1e-10)
    assert np.abs(de_np - de_ref).max() <= 1e-10 * np.abs(de_ref).max()


def test_backward_float32_is_close(device):
    """float32 on both sides: single-precision rounding through 3 layers; 1e-4 of each scale.

    The analytically-zero key-bias gradient holds float32 rounding noise (~1e-7 of the largest
    gradient) on both sides, hence the scale floor of 1e-3 of the largest gradient here."""
    config = odd_config(heads_per_layer=[4, 2, 3])
    model, ref = make_pair(config, torch.float32, device, seed=5)
    rng = np.random.default_rng(2)
    ids, mask, tt = odd_batch(rng)
    g_np, g_ref, de_np, de_ref = _backward_both(model, ref, ids, mask, tt, rng)
    assert_close_by_name(g_np, g_ref, model.param_names, rtol=1e-4, floor=1e-3)
    assert np.abs(de_np - de_ref).max() <= 1e-4 * np.abs(de_ref).max()


def test_head_mask_and_factorized_embedding_forward(device):
    config = odd_config(embedding_rank=7, heads_per_layer=[4, 4, 1])
    model, ref = make_pair(config, torch.float64, device, seed=9)
    rng = np.random.default_rng(4)
    ids, mask, tt = odd_batch(rng)
    head_mask = np.array([[1, 0, 1, 0.5], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=float)[:, :4]
    hm = [head_mask[0], head_mask[1], head_mask[2][:1]]
    out = model(ids, mask, tt, head_mask=hm)
    with torch.no_grad():
        r = ref(ids, mask, tt, head_mask=hm)
    for a, b in zip(out.hidden_states + out.logits, r.hidden_states + r.logits):
        assert np.abs(a - to_numpy(b)).max() <= 1e-12
