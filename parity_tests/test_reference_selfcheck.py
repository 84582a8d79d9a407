"""Checks of the PyTorch reference itself, before it is trusted as a yardstick.

Nothing here uses the NumPy library: the reference is checked against Hugging Face's
``BertModel`` on the real MiniLM weights, against the definition of gradient equilibrium,
against hand-written loss formulas, and against equivalent re-formulations of the model
(slicing a head out instead of masking it, padding that changes nothing...).
"""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from . import reference as ref
from .reference import RefCostEffBert, to_numpy

F64 = torch.float64


# --------------------------------------------------------------------------- helpers
def make_batch(rng, config, B=3, T=7, lengths=(7, 5, 3)):
    """Random ids, token types and a padded attention mask (sample b has lengths[b] tokens)."""
    ids = rng.integers(0, config["vocab_size"], size=(B, T))
    mask = np.zeros((B, T))
    for b, n in enumerate(lengths):
        mask[b, :n] = 1.0
    types = (np.arange(T)[None, :] >= 2).astype(np.int64).repeat(B, axis=0)  # two segments
    ids = np.where(mask > 0, ids, 0)  # padding id 0, as a tokenizer writes it
    return ids, mask, types


def additive_mask(mask: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, 1, 1, T)
    return ((1.0 - mask) * torch.finfo(mask.dtype).min)[:, None, None, :]


def np_log_softmax_row(z):
    """log softmax of one row, written out: z - max - log(sum exp(z - max))."""
    zmax = max(z)
    lse = zmax + math.log(sum(math.exp(v - zmax) for v in z))
    return [v - lse for v in z]


# --------------------------------------------------------------------------- (a) Hugging Face
def test_matches_huggingface_bert_on_minilm(minilm_dir, device):
    """num_labels=0 reference == transformers.BertModel on every hidden state and attention map,
    with padding in the batch, in float64."""
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import load_file

    with open(os.path.join(minilm_dir, "config.json"), encoding="utf-8") as f:
        config = dict(json.load(f), num_labels=0)
    state = load_file(os.path.join(minilm_dir, "model.safetensors"))
    model = RefCostEffBert(config, state, dtype=F64, device=device)

    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").double().eval().to(device)

    rng = np.random.default_rng(1)
    ids, mask, types = make_batch(rng, config, B=3, T=11, lengths=(11, 8, 4))
    ids[:, 0] = 101  # [CLS], as real inputs start
    with torch.no_grad():
        out = model(ids, mask, types, output_attentions=True)
        hf_out = hf(input_ids=torch.as_tensor(ids, device=device),
                    attention_mask=torch.as_tensor(mask, dtype=torch.long, device=device),
                    token_type_ids=torch.as_tensor(types, device=device),
                    output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == len(hf_out.hidden_states) == config["num_hidden_layers"] + 1
    assert out.logits == ()
    for l, (a, b) in enumerate(zip(out.hidden_states, hf_out.hidden_states)):
        # Same float64 operations in a possibly different order: rounding ~1e-15 relative on
        # O(1) LayerNorm outputs (measured max 6e-15 over six layers); 1e-12 leaves margin.
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=0, atol=1e-12, err_msg=f"hidden state {l}")
    for l, (a, b) in enumerate(zip(out.attentions, hf_out.attentions)):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=0, atol=1e-12, err_msg=f"attention {l}")  # probs in [0, 1]
    # The padded keys get exactly zero probability.
    assert np.all(to_numpy(out.attentions[0])[2, :, :, 4:] == 0.0)


# --------------------------------------------------------------------------- structure
@pytest.mark.parametrize("overrides", [
    dict(),
    dict(embedding_rank=5, pooler="dense", heads_per_layer=[4, 2, 1], intermediate_per_layer=[24, 10, 3], exit_start=2),
    dict(num_labels=0),
    dict(exit_start=3, pooler="mean"),
])
def test_parameter_names_follow_the_table(overrides, device):
    config = ref.tiny_config(**overrides)
    model = RefCostEffBert(config, dtype=F64, device=device)
    got = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert list(got) == list(ref.param_shapes(config))  # same names, same order
    assert got == dict(ref.param_shapes(config))
    if "embedding_rank" in overrides:
        assert got["embeddings.word_embeddings.projection"] == (5, 16)
        assert got["encoder.layer.2.attention.output.dense.weight"] == (16, 4)  # 1 head of size 4
        assert "exits.0.classifier.weight" not in got and got["exits.1.pooler.dense.weight"] == (16, 16)
    expected_exits = tuple(range(config["exit_start"], 4)) if config["num_labels"] else ()
    assert model.exit_layers == expected_exits


def test_load_numpy_state_checks_names_and_shapes(device):
    config = ref.tiny_config()
    state = ref.random_numpy_state(config, seed=3)
    model = RefCostEffBert(config, state, dtype=F64, device=device)
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(to_numpy(p), state[name])
    # Hugging Face extras and the bert. prefix are accepted.
    RefCostEffBert(config, {"bert." + k: v for k, v in state.items()} | {"embeddings.position_ids": np.arange(32)},
                   device=device)
    with pytest.raises(KeyError, match="unknown parameter"):
        RefCostEffBert(config, state | {"encoder.layer.0.extra": np.zeros(2)}, device=device)
    with pytest.raises(KeyError, match="lacks 1 parameter"):
        RefCostEffBert(config, {k: v for k, v in state.items() if k != "exits.2.classifier.bias"}, device=device)
    bad = dict(state)
    bad["encoder.layer.1.intermediate.dense.weight"] = np.zeros((23, 16))
    with pytest.raises(ValueError, match=r"intermediate.dense.weight: state has shape \(23, 16\)"):
        RefCostEffBert(config, bad, device=device)


def test_bad_inputs_raise(device, rng):
    config = ref.tiny_config()
    model = RefCostEffBert(config, device=device)
    ids, mask, types = make_batch(rng, config)
    with pytest.raises(ValueError, match="input_ids outside"):
        model(ids + 100, mask, types)
    with pytest.raises(ValueError, match="exactly one"):
        model(None, mask, types)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(ids, mask[:, :3], types)
    with pytest.raises(KeyError, match="unknown dropout site"):
        model(ids, mask, types, dropout_masks={"layer.9.output": np.ones((3, 7, 16))})
    with pytest.raises(ValueError, match="dropout mask for 'embeddings' has shape"):
        model(ids, mask, types, dropout_masks={"embeddings": np.ones((3, 7, 15))})
    with pytest.raises(ValueError, match=r"head_mask\[1\] has shape"):
        model(ids, mask, types, head_mask=[np.ones(4), np.ones(3), np.ones(4)])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(np.zeros((1, 40), dtype=np.int64))


# --------------------------------------------------------------------------- forward semantics
@pytest.mark.parametrize("pooler", ref.POOLERS)
def test_exits_by_hand_and_padding_invariance(pooler, device, rng):
    """Exit logits recomputed from hidden states and weights in NumPy; appending padding tokens
    changes neither the real tokens' hidden states nor any logits."""
    config = ref.tiny_config(pooler=pooler, exit_start=2)
    model = RefCostEffBert(config, ref.random_numpy_state(config, seed=4), dtype=F64, device=device)
    ids, mask, types = make_batch(rng, config, B=3, T=7, lengths=(7, 5, 3))
    with torch.no_grad():
        out = model(ids, mask, types)
    W = model.numpy_state()
    for l, z in zip(out.exit_layers, out.logits):
        h = to_numpy(out.hidden_states[l])  # (B, T, d)
        if pooler == "cls_tanh":
            pooled = np.tanh(h[:, 0])
        elif pooler == "mean":
            pooled = np.stack([h[b, mask[b] > 0].mean(axis=0) for b in range(3)])
        else:
            pooled = np.tanh(h[:, 0] @ W[f"exits.{l - 1}.pooler.dense.weight"].T + W[f"exits.{l - 1}.pooler.dense.bias"])
        expected = pooled @ W[f"exits.{l - 1}.classifier.weight"].T + W[f"exits.{l - 1}.classifier.bias"]
        np.testing.assert_allclose(to_numpy(z), expected, rtol=0, atol=1e-13)  # a few float64 roundings

    pad = 4  # four more padding positions at the end
    ids_p = np.concatenate([ids, np.zeros((3, pad), dtype=ids.dtype)], axis=1)
    mask_p = np.concatenate([mask, np.zeros((3, pad))], axis=1)
    types_p = np.concatenate([types, np.zeros((3, pad), dtype=types.dtype)], axis=1)
    with torch.no_grad():
        out_p = model(ids_p, mask_p, types_p)
    for z, z_p in zip(out.logits, out_p.logits):
        np.testing.assert_allclose(to_numpy(z_p), to_numpy(z), rtol=0, atol=1e-12)  # softmax sums in another order
    for h, h_p in zip(out.hidden_states, out_p.hidden_states):
        real = mask > 0
        np.testing.assert_allclose(to_numpy(h_p)[:, :7][real], to_numpy(h)[real], rtol=0, atol=1e-12)


def test_factorized_embedding_and_inputs_embeds(device, rng):
    config = ref.tiny_config(embedding_rank=5)
    model = RefCostEffBert(config, ref.random_numpy_state(config, seed=5), dtype=F64, device=device)
    ids, mask, types = make_batch(rng, config)
    W = model.numpy_state()
    word = W["embeddings.word_embeddings.weight"][ids] @ W["embeddings.word_embeddings.projection"]  # (B, T, d)
    with torch.no_grad():
        a = model(ids, mask, types)
        b = model(inputs_embeds=word, attention_mask=mask, token_type_ids=types)
    for x, y in zip(a.hidden_states + a.logits, b.hidden_states + b.logits):
        np.testing.assert_allclose(to_numpy(x), to_numpy(y), rtol=0, atol=1e-13)  # E[ids] @ P in torch vs NumPy


def _slice_state(state, layer, heads_kept=None, neurons_kept=None, head_size=4):
    """A copy of `state` with layer `layer` physically reduced to some heads / neurons."""
    s = dict(state)
    p = f"encoder.layer.{layer}."
    if heads_kept is not None:
        cols = np.concatenate([np.arange(h * head_size, (h + 1) * head_size) for h in heads_kept])
        for proj in ("query", "key", "value"):
            s[p + f"attention.self.{proj}.weight"] = state[p + f"attention.self.{proj}.weight"][cols]
            s[p + f"attention.self.{proj}.bias"] = state[p + f"attention.self.{proj}.bias"][cols]
        s[p + "attention.output.dense.weight"] = state[p + "attention.output.dense.weight"][:, cols]
    if neurons_kept is not None:
        s[p + "intermediate.dense.weight"] = state[p + "intermediate.dense.weight"][neurons_kept]
        s[p + "intermediate.dense.bias"] = state[p + "intermediate.dense.bias"][neurons_kept]
        s[p + "output.dense.weight"] = state[p + "output.dense.weight"][:, neurons_kept]
    return s


def test_head_and_ffn_masks_equal_slicing(device, rng):
    """Masking head 2 of layer 1 and neurons {0, 7} of layer 2 == a model without them."""
    config = ref.tiny_config()
    state = ref.random_numpy_state(config, seed=6)
    model = RefCostEffBert(config, state, dtype=F64, device=device)
    ids, mask, types = make_batch(rng, config)
    head_mask = np.ones((3, 4))
    head_mask[1, 2] = 0.0
    ffn_mask = [None, None, np.ones(24)]
    ffn_mask[2][[0, 7]] = 0.0
    with torch.no_grad():
        masked = model(ids, mask, types, head_mask=head_mask, ffn_mask=ffn_mask, output_attentions=True)
    kept_neurons = [j for j in range(24) if j not in (0, 7)]
    small_config = ref.tiny_config(heads_per_layer=[4, 3, 4], intermediate_per_layer=[24, 24, 22])
    small_state = _slice_state(_slice_state(state, 1, heads_kept=[0, 1, 3]), 2, neurons_kept=kept_neurons)
    small = RefCostEffBert(small_config, small_state, dtype=F64, device=device)
    with torch.no_grad():
        sliced = small(ids, mask, types)
    for x, y in zip(masked.hidden_states + masked.logits, sliced.hidden_states + sliced.logits):
        np.testing.assert_allclose(to_numpy(x), to_numpy(y), rtol=0, atol=1e-13)  # sums with/without zero terms
    assert masked.attentions[1].shape == (3, 4, 7, 7)  # reported before the head mask: all 4 heads


def test_fractional_masks_are_multipliers(device, rng):
    """head_mask c on head 1 of layer 0 == that head's value rows scaled by c (the context is
    linear in V); ffn_mask c on neuron 5 of layer 1 == output.dense column 5 scaled by c."""
    config = ref.tiny_config()
    state = ref.random_numpy_state(config, seed=12)
    model = RefCostEffBert(config, state, dtype=F64, device=device)
    ids, mask, types = make_batch(rng, config)
    head_mask = [np.array([1.0, 0.3, 1.0, 1.0]), None, None]
    ffn_mask = [None, np.ones(24), None]
    ffn_mask[1][5] = 0.6
    scaled = dict(state)
    for k in ("weight", "bias"):
        v = state[f"encoder.layer.0.attention.self.value.{k}"].copy()
        v[4:8] *= 0.3  # head 1 owns rows 4..7 (d_h = 4)
        scaled[f"encoder.layer.0.attention.self.value.{k}"] = v
    w = state["encoder.layer.1.output.dense.weight"].copy()
    w[:, 5] *= 0.6
    scaled["encoder.layer.1.output.dense.weight"] = w
    with torch.no_grad():
        a = model(ids, mask, types, head_mask=head_mask, ffn_mask=ffn_mask)
        b = RefCostEffBert(config, scaled, dtype=F64, device=device)(ids, mask, types)
    for x, y in zip(a.hidden_states + a.logits, b.hidden_states + b.logits):
        np.testing.assert_allclose(to_numpy(x), to_numpy(y), rtol=0, atol=1e-13)  # multiplications regrouped


def test_dropout_masks_act_at_their_sites(device, rng):
    config = ref.tiny_config()
    model = RefCostEffBert(config, ref.random_numpy_state(config, seed=7), dtype=F64, device=device)
    ids, mask, types = make_batch(rng, config)
    with torch.no_grad():
        plain = model(ids, mask, types, output_attentions=True)
        ones = {"embeddings": np.ones((3, 7, 16)), "layer.0.attention.probs": np.ones((3, 4, 7, 7)),
                "layer.2.output": np.ones((3, 7, 16)), "exit.1": np.ones((3, 16))}
        same = model(ids, mask, types, dropout_masks=ones)
        emb_mask = rng.integers(0, 2, size=(3, 7, 16)) / 0.5  # 0 or 1/(1-p), p = 0.5
        dropped = model(ids, mask, types, dropout_masks={"embeddings": emb_mask})
        probs_mask = rng.integers(0, 2, size=(3, 4, 7, 7)) / 0.5
        dropped_p = model(ids, mask, types, dropout_masks={"layer.1.attention.probs": probs_mask},
                          output_attentions=True)
        exit_mask = np.zeros((3, 16))
        dropped_exit = model(ids, mask, types, dropout_masks={"exit.1": exit_mask})
    for x, y in zip(plain.hidden_states + plain.logits, same.hidden_states + same.logits):
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))  # multiplying by 1 is exact
    np.testing.assert_array_equal(to_numpy(dropped.hidden_states[0]), to_numpy(plain.hidden_states[0]) * emb_mask)
    # attentions are reported before dropout; the layer output changes.
    np.testing.assert_array_equal(to_numpy(dropped_p.attentions[1]), to_numpy(plain.attentions[1]))
    assert not np.allclose(to_numpy(dropped_p.hidden_states[2]), to_numpy(plain.hidden_states[2]))
    np.testing.assert_array_equal(to_numpy(dropped_p.hidden_states[1]), to_numpy(plain.hidden_states[1]))
    # a zeroed exit input leaves only the classifier bias
    np.testing.assert_array_equal(to_numpy(dropped_exit.logits[1]),
                                  np.broadcast_to(model.numpy_state()["exits.1.classifier.bias"], (3, 3)))


# --------------------------------------------------------------------------- (b) gradient equilibrium
def test_gradient_equilibrium_function():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=F64, generator=gen, requires_grad=True)
    dy = torch.randn(2, 3, 4, dtype=F64, generator=gen)
    y = ref.gradient_equilibrium(x, 0.375)
    assert torch.equal(y, x)
    (g,) = torch.autograd.grad((y * dy).sum(), x)
    assert torch.equal(g, 0.375 * dy)  # a multiplication by a power-of-two fraction is exact


def _random_upstream_loss(out, gen):
    """sum_l <logits_l, r_l> + sum_l <h_l, s_l> with random r, s (never all ones)."""
    rs = [torch.randn(z.shape, dtype=F64, generator=gen) for z in out.logits]
    ss = [torch.randn(h.shape, dtype=F64, generator=gen) for h in out.hidden_states]
    loss = sum((z * r).sum() for z, r in zip(out.logits, rs)) + sum((h * s).sum() for h, s in zip(out.hidden_states, ss))
    return loss, rs, ss


@pytest.mark.parametrize("rule", ["exit_layers", "authors"])
@pytest.mark.parametrize("exit_start", [1, 2])
def test_gradient_equilibrium_identity_forward_and_rescaled_backward(exit_start, rule, device, rng):
    """With GE, G_l = dLoss/dh_l must satisfy, layer by layer (s_l the direct gradient of the
    loss on h_l, E_l the exit's VJP, V_l(u) layer l+1's VJP of an upstream u, recomputed on
    detached copies of h_l):

    exit_layers:  G_l = s_l + E_l / (L-l+1) + V_l(G_{l+1}) (L-l) / (L-l+1)   (l < L with an exit),
                  G_l = s_l + V_l(G_{l+1}) (no exit),  G_L = s_L + E_L;
    authors:      h_l is the output of layer l after the first hook, so the raw output's
                  gradient is R_l = G_l / (L-l+1) and G_l = s_l + E_l + (L-l) V_l(R_{l+1})
                  for 1 <= l < L, G_0 = s_0 + V_0(R_1), G_L = s_L + E_L."""
    L = 4
    config = ref.tiny_config(num_hidden_layers=L, exit_start=exit_start)
    model = RefCostEffBert(config, ref.random_numpy_state(config, seed=8), dtype=F64, device="cpu")
    ids, mask, types = make_batch(rng, config)
    plain = model(ids, mask, types)
    out = model(ids, mask, types, gradient_equilibrium=rule)
    for x, y in zip(plain.hidden_states + plain.logits, out.hidden_states + out.logits):
        assert torch.equal(x, y)  # identity in forward, bit for bit

    gen = torch.Generator().manual_seed(1)
    loss, rs, ss = _random_upstream_loss(out, gen)
    G = torch.autograd.grad(loss, out.hidden_states)  # G[l] = dLoss/dh_l, l = 0..L
    m = torch.as_tensor(mask, dtype=F64)
    amask = additive_mask(m)
    exits = dict(zip(out.exit_layers, range(len(out.logits))))
    for l in range(L, -1, -1):
        expected = ss[l].clone()
        D = E = None
        if l < L:
            h = out.hidden_states[l].detach().requires_grad_()
            h_next, _ = model.encoder.layer[l](h, amask)  # layer l+1 has index l
            upstream = G[l + 1] if rule == "exit_layers" else G[l + 1] / (L - l)  # R_{l+1}
            (D,) = torch.autograd.grad(h_next, h, upstream)
        if l in exits:
            h = out.hidden_states[l].detach().requires_grad_()
            z = model.exits[str(l - 1)](h, m)
            (E,) = torch.autograd.grad(z, h, rs[exits[l]])
        if rule == "authors":
            if E is not None:
                expected += E
            if D is not None:
                expected += D * (L - l if l > 0 else 1)  # the embeddings carry no second hook
        elif l in exits and l < L:
            expected += E / (L - l + 1) + D * (L - l) / (L - l + 1)
        elif l in exits:
            expected += E
        else:
            expected += D
        # Same operations as the full backward, regrouped: float64 rounding only.
        np.testing.assert_allclose(to_numpy(G[l]), to_numpy(expected), rtol=1e-12, atol=1e-14, err_msg=f"l={l}")


def test_gradient_equilibrium_closed_form_for_the_last_exit(device, rng):
    """With only the last exit's loss, GE scales the gradient at h_l by
    prod_{k=max(l,1)..L-1} (L-k)/(L-k+1) = 1/(L-max(l,1)+1): the embeddings' gradient by 1/L."""
    L = 3
    config = ref.tiny_config(num_hidden_layers=L, exit_start=1)
    model = RefCostEffBert(config, ref.random_numpy_state(config, seed=9), dtype=F64, device=device)
    ids, mask, types = make_batch(rng, config)
    r = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(2)).to(model.device)
    grads = {}
    for ge in (False, "exit_layers", "authors"):
        out = model(ids, mask, types, gradient_equilibrium=ge)
        loss = (out.logits[-1] * r).sum()
        grads[ge] = torch.autograd.grad(loss, out.hidden_states + (model.embeddings.word_embeddings.weight,)
                                        + (model.encoder.layer[0].output.dense.weight,))
    for l in range(L + 1):
        factor = 1.0 / (L - max(l, 1) + 1)
        np.testing.assert_allclose(to_numpy(grads["exit_layers"][l]), factor * to_numpy(grads[False][l]),
                                   rtol=1e-13, atol=1e-16)  # one extra multiplication per layer
        # authors: h_l (l >= 1) sits after the first hook; (L-l) and 1/(L-l) cancel above it
        factor = 1.0 / L if l == 0 else 1.0
        np.testing.assert_allclose(to_numpy(grads["authors"][l]), factor * to_numpy(grads[False][l]),
                                   rtol=1e-13, atol=1e-16)
    for rule in ("exit_layers", "authors"):  # parameters see the same factors under both rules
        np.testing.assert_allclose(to_numpy(grads[rule][-2]), to_numpy(grads[False][-2]) / L, rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(to_numpy(grads[rule][-1]), to_numpy(grads[False][-1]) / L, rtol=1e-13, atol=1e-16)


# --------------------------------------------------------------------------- (c) losses
def test_basic_losses_against_hand_formulas():
    gen = torch.Generator().manual_seed(3)
    B, C, T, d = 3, 4, 5, 6
    z = torch.randn(B, C, dtype=F64, generator=gen)
    t = torch.randn(B, C, dtype=F64, generator=gen)
    y = torch.tensor([2, 0, 3])
    zl, tl = z.tolist(), t.tolist()

    ce = sum(-np_log_softmax_row(zl[b])[y[b]] for b in range(B)) / B
    assert abs(ref.cross_entropy(z, y).item() - ce) < 1e-14  # a few roundings on O(1) values

    yr = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    assert abs(ref.mse(z[:, :1], yr).item() - sum((zl[b][0] - yr[b].item()) ** 2 for b in range(B)) / B) < 1e-14

    Tmp = 2.0
    sce = 0.0
    for b in range(B):
        p_t = [math.exp(v) for v in np_log_softmax_row([v / Tmp for v in tl[b]])]
        log_p_s = np_log_softmax_row([v / Tmp for v in zl[b]])
        sce += -sum(p * q for p, q in zip(p_t, log_p_s))
    assert abs(ref.soft_cross_entropy(z, t, Tmp).item() - sce / B) < 1e-14

    hs = torch.randn(B, T, d, dtype=F64, generator=gen)
    ht = torch.randn(B, T, d, dtype=F64, generator=gen)
    m = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=F64)
    expected = 0.0
    for b in range(B):
        n_b = m[b].sum().item()
        expected += sum(m[b, i].item() * sum((hs[b, i, j] - ht[b, i, j]).item() ** 2 for j in range(d)) / d
                        for i in range(T)) / n_b
    assert abs(ref.hidden_mse(hs, ht, m).item() - expected / B) < 1e-14

    ps = torch.softmax(torch.randn(B, 2, T, T, dtype=F64, generator=gen), -1)  # 2 student heads
    pt = torch.softmax(torch.randn(B, 3, T, T, dtype=F64, generator=gen), -1)  # 3 teacher heads
    expected = 0.0
    for b in range(B):
        n_b = m[b].sum().item()
        s = 0.0
        for q in range(T):
            for k in range(T):
                a_s = sum(ps[b, h, q, k].item() for h in range(2)) / 2
                a_t = sum(pt[b, h, q, k].item() for h in range(3)) / 3
                s += m[b, q].item() * m[b, k].item() * (a_s - a_t) ** 2
        expected += s / n_b
    assert abs(ref.attention_mse(ps, pt, m).item() - expected / B) < 1e-15  # values O(1e-2)


def test_soft_cross_entropy_has_no_nan_at_zero_probability():
    z = torch.tensor([[0.3, -0.2, 1.0]], dtype=F64, requires_grad=True)
    t = torch.tensor([[0.0, -1e5, 2.0]], dtype=F64)  # softmax(t)[1] underflows to exactly 0
    loss = ref.soft_cross_entropy(z, t)
    (g,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_loss_errors_name_the_problem():
    z = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="labels outside"):
        ref.cross_entropy(z, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="z \\(B, 1\\)"):
        ref.mse(z, torch.zeros(2))
    with pytest.raises(ValueError, match="same \\(B, C\\) shape"):
        ref.soft_cross_entropy(z, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        ref.soft_cross_entropy(z, z, 0.0)
    with pytest.raises(ValueError, match="no non-padding token"):
        ref.hidden_mse(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.tensor([[1.0, 1, 0], [0, 0, 0]]))


def _fake_out(gen, L, exit_layers, B=2, T=4, d=3, C=3, heads=2):
    """An output-like object with random hidden states, logits and attention maps."""
    return SimpleNamespace(
        hidden_states=tuple(torch.randn(B, T, d, dtype=F64, generator=gen) for _ in range(L + 1)),
        logits=tuple(torch.randn(B, C, dtype=F64, generator=gen) for _ in exit_layers),
        exit_layers=tuple(exit_layers),
        attentions=tuple(torch.softmax(torch.randn(B, heads, T, T, dtype=F64, generator=gen), -1) for _ in range(L)))


def _np_sce(z, t, T=1.0):
    return sum(-sum(math.exp(a) * b for a, b in zip(np_log_softmax_row([v / T for v in t[i]]),
                                                    np_log_softmax_row([v / T for v in z[i]])))
               for i in range(len(z))) / len(z)


def _np_ce(z, y):
    return sum(-np_log_softmax_row(z[i])[y[i]] for i in range(len(z))) / len(z)


def _np_hidden(hs, ht, m):
    hs, ht, m = to_numpy(hs), to_numpy(ht), to_numpy(m)
    return float(np.mean([(m[b] * ((hs[b] - ht[b]) ** 2).mean(-1)).sum() / m[b].sum() for b in range(len(m))]))


def test_stage_losses_compose_as_documented():
    """Student: 2 layers, exits at 1, 2. Teachers: 4 layers, one exit (layer 4) or exits at 1..4.
    Layer mapping l -> 2l; multi-exit teacher: exit l teaches exit l; one exit: t_4 teaches all."""
    gen = torch.Generator().manual_seed(4)
    s = _fake_out(gen, 2, (1, 2))
    t_one = _fake_out(gen, 4, (4,))
    t_multi = _fake_out(gen, 4, (1, 2, 3, 4))
    m = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=F64)
    y = torch.tensor([2, 1])
    Tmp = 1.5
    zs = [z.tolist() for z in s.logits]

    hidden = sum(_np_hidden(s.hidden_states[l], t_one.hidden_states[2 * l], m) for l in range(3))
    hard = sum(_np_ce(z, y.tolist()) for z in zs)
    pred_one = sum(_np_sce(z, t_one.logits[0].tolist(), Tmp) for z in zs)
    pred_multi = sum(_np_sce(z, t_multi.logits[l - 1].tolist(), Tmp) for z, l in zip(zs, (1, 2)))
    hidden_multi = sum(_np_hidden(s.hidden_states[l], t_multi.hidden_states[2 * l], m) for l in range(3))

    def loss(stage, teacher, **kw):
        return ref.stage_loss(stage, s, y, m, teacher, temperature=Tmp, **kw).item()

    tol = 1e-13  # sums of a few O(1) terms computed in a different order
    assert abs(loss("hidden", t_one) - hidden) < tol
    assert abs(loss("hard", None) - hard) < tol
    assert abs(loss("hard", None, final_only=True) - _np_ce(zs[-1], y.tolist())) < tol
    assert abs(loss("pred", t_one) - (pred_one + hidden)) < tol
    assert abs(loss("pred", t_multi) - (pred_multi + hidden_multi)) < tol
    assert abs(loss("pred_ta", t_one) - (pred_one + hard) / 2) < tol
    assert abs(loss("importance", t_multi) - (0.9 * pred_multi + 0.1 * hard + hidden_multi)) < tol

    value, parts = ref.stage_loss("importance", s, y, m, t_one, temperature=Tmp, use_attention=True,
                                  return_components=True)
    assert set(parts) == {"hard", "pred", "hidden", "attention"}
    att = sum(ref.attention_mse(s.attentions[l - 1], t_one.attentions[2 * l - 1], m) for l in (1, 2)).item()
    assert abs(parts["attention"].item() - att) < tol
    assert abs(value.item() - (0.9 * pred_one + 0.1 * hard + hidden + att)) < tol

    # regression: hard = MSE to the label, prediction distillation = MSE to the teacher's logit
    sr = _fake_out(gen, 2, (1, 2), C=1)
    tr = _fake_out(gen, 2, (2,), C=1)
    yr = torch.tensor([0.3, -0.7], dtype=F64)
    expected = sum(float(np.mean((to_numpy(z)[:, 0] - to_numpy(tr.logits[0])[:, 0]) ** 2)) for z in sr.logits)
    expected += sum(float(np.mean((to_numpy(z)[:, 0] - to_numpy(yr)) ** 2)) for z in sr.logits)
    assert abs(ref.stage_loss("pred_ta", sr, yr, m, tr, regression=True).item() - expected / 2) < tol


def test_stage_loss_errors():
    gen = torch.Generator().manual_seed(5)
    s = _fake_out(gen, 3, (1, 2, 3))
    m = torch.ones(2, 4, dtype=F64)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="unknown stage"):
        ref.stage_loss("distill", s, y, m, s)
    with pytest.raises(ValueError, match="needs teacher"):
        ref.stage_loss("pred", s, y, m)
    with pytest.raises(ValueError, match="not a whole number"):
        ref.stage_loss("hidden", s, y, m, _fake_out(gen, 4, (4,)))
    with pytest.raises(ValueError, match="no exit at layer 1"):
        ref.stage_loss("pred", s, y, m, _fake_out(gen, 3, (2, 3)))


# --------------------------------------------------------------------------- Taylor importance
def test_taylor_importance_aggregates_as_documented(device, rng):
    config = ref.tiny_config(heads_per_layer=[4, 3, 2], intermediate_per_layer=[24, 12, 6])
    model = RefCostEffBert(config, ref.random_numpy_state(config, seed=10), dtype=F64, device=device)
    teacher_config = ref.tiny_config()
    teacher = RefCostEffBert(teacher_config, ref.random_numpy_state(teacher_config, seed=11), dtype=F64, device=device)
    batches, teacher_outs = [], []
    for n in range(2):
        ids, mask, types = make_batch(rng, config)
        batches.append(dict(input_ids=ids, attention_mask=mask, token_type_ids=types,
                            labels=rng.integers(0, 3, size=3)))
        with torch.no_grad():
            teacher_outs.append(teacher(ids, mask, types))

    result = ref.taylor_importance(model, batches, teacher_outs, temperature=2.0)

    # per-weight scores: |w * sum_batches |grad||, grads recomputed batch by batch
    params = dict(model.named_parameters())
    acc = {n: 0.0 for n in params}
    for batch, t_out in zip(batches, teacher_outs):
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = ref.stage_loss("importance", out, batch["labels"], batch["attention_mask"], t_out, temperature=2.0)
        grads = torch.autograd.grad(loss, list(params.values()))
        for n, g in zip(params, grads):
            acc[n] = acc[n] + np.abs(to_numpy(g))
    for n, p in params.items():
        np.testing.assert_allclose(to_numpy(result["weight_scores"][n]), np.abs(to_numpy(p) * acc[n]),
                                   rtol=1e-13, atol=0, err_msg=n)  # same graph, same values

    for i in range(3):
        s = {k: to_numpy(v) for k, v in result["weight_scores"].items() if k.startswith(f"encoder.layer.{i}.")}
        s_out = s[f"encoder.layer.{i}.attention.output.dense.weight"]  # (d, A_i)
        heads = [sum(s_out[row, h * 4 + c] for row in range(16) for c in range(4)) for h in range(config["heads_per_layer"][i])]
        np.testing.assert_allclose(to_numpy(result["head_scores"][i]), heads, rtol=1e-12)  # summation order
        s_in = s[f"encoder.layer.{i}.intermediate.dense.weight"]  # (F_i, d)
        s_o = s[f"encoder.layer.{i}.output.dense.weight"]  # (d, F_i)
        neurons = [s_in[j].sum() + s_o[:, j].sum() for j in range(config["intermediate_per_layer"][i])]
        np.testing.assert_allclose(to_numpy(result["neuron_scores"][i]), neurons, rtol=1e-12)
        assert np.all(to_numpy(result["head_scores"][i]) > 0)

    # the last-exit-only ablation scores differently, and its loss is documented
    last = ref.taylor_importance(model, batches, teacher_outs, temperature=2.0, last_exit_only=True)
    assert not np.allclose(to_numpy(last["head_scores"][0]), to_numpy(result["head_scores"][0]))
    out = model(batches[0]["input_ids"], batches[0]["attention_mask"], batches[0]["token_type_ids"])
    y, m = batches[0]["labels"], batches[0]["attention_mask"]
    expected = (0.9 * ref.soft_cross_entropy(out.logits[-1], teacher_outs[0].logits[-1], 2.0)
                + 0.1 * ref.cross_entropy(out.logits[-1], torch.as_tensor(y))
                + ref.hidden_loss(out, teacher_outs[0], torch.as_tensor(m)))
    got = ref.importance_loss(out, y, m, teacher_outs[0], 2.0, last_exit_only=True)
    assert abs(got.item() - expected.item()) < 1e-14
