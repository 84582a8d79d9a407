"""Parameter and FLOPs counters against shape tables, hand formulas, torch and the MiniLM checkpoint."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForSequenceClassification, BertModel

from npcosteff.config import CostEffConfig
from npcosteff.flops import (
    GELU_FLOPS_PER_ELEMENT, LAYER_NORM_FLOPS_PER_ELEMENT, SOFTMAX_FLOPS_PER_SCORE,
    count_parameters, count_parameters_of, embedding_flops, exit_flops, flops_per_exit,
    layer_flops, model_flops)
from npcosteff.pretrained import default_model_dir

SMALL = dict(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
             intermediate_size=24, max_position_embeddings=20, type_vocab_size=2)

CONFIGS = {
    "full": CostEffConfig(**SMALL),
    "full_exits": CostEffConfig(**SMALL, num_labels=2),
    # uneven per-layer widths, factorized embedding, exits from layer 2, dense poolers
    "slender": CostEffConfig(**SMALL, heads_per_layer=[4, 1, 3], intermediate_per_layer=[24, 5, 11],
                             embedding_rank=6, num_labels=3, exit_start=2, pooler="dense"),
    # head size set apart from d / H (inner attention width 2 * 10 = 20 > d = 16), regression
    "wide_heads": CostEffConfig(**SMALL, attention_head_size=10, heads_per_layer=[2, 3, 1],
                                intermediate_per_layer=[7, 24, 1], num_labels=1,
                                problem_type="regression", pooler="mean"),
}


def shape_table(cfg, include_exits=True):
    """The parameter names and shapes of docs/architecture.md, written out for the test."""
    V, d, r = cfg.vocab_size, cfg.hidden_size, cfg.embedding_rank
    t = {}
    if r is None:
        t["embeddings.word_embeddings.weight"] = (V, d)
    else:
        t["embeddings.word_embeddings.weight"] = (V, r)
        t["embeddings.word_embeddings.projection"] = (r, d)
    t["embeddings.position_embeddings.weight"] = (cfg.max_position_embeddings, d)
    t["embeddings.token_type_embeddings.weight"] = (cfg.type_vocab_size, d)
    t["embeddings.LayerNorm.weight"] = (d,)
    t["embeddings.LayerNorm.bias"] = (d,)
    for i in range(cfg.num_hidden_layers):
        A = cfg.heads_per_layer[i] * cfg.attention_head_size
        Fi = cfg.intermediate_per_layer[i]
        p = f"encoder.layer.{i}."
        for m in ("query", "key", "value"):
            t[p + f"attention.self.{m}.weight"] = (A, d)
            t[p + f"attention.self.{m}.bias"] = (A,)
        t[p + "attention.output.dense.weight"] = (d, A)
        t[p + "attention.output.dense.bias"] = (d,)
        t[p + "attention.output.LayerNorm.weight"] = (d,)
        t[p + "attention.output.LayerNorm.bias"] = (d,)
        t[p + "intermediate.dense.weight"] = (Fi, d)
        t[p + "intermediate.dense.bias"] = (Fi,)
        t[p + "output.dense.weight"] = (d, Fi)
        t[p + "output.dense.bias"] = (d,)
        t[p + "output.LayerNorm.weight"] = (d,)
        t[p + "output.LayerNorm.bias"] = (d,)
    if include_exits and cfg.num_labels > 0:
        for i in range(cfg.exit_start - 1, cfg.num_hidden_layers):
            if cfg.pooler == "dense":
                t[f"exits.{i}.pooler.dense.weight"] = (d, d)
                t[f"exits.{i}.pooler.dense.bias"] = (d,)
            t[f"exits.{i}.classifier.weight"] = (cfg.num_labels, d)
            t[f"exits.{i}.classifier.bias"] = (cfg.num_labels,)
    return t


def size_of(table, keep):
    return sum(math.prod(s) for name, s in table.items() if keep(name))


@pytest.mark.parametrize("key", list(CONFIGS))
@pytest.mark.parametrize("include_exits", [True, False])
def test_parameter_count_matches_shape_table(key, include_exits):
    cfg = CONFIGS[key]
    table = shape_table(cfg, include_exits)
    arrays = {name: np.empty(shape, dtype=np.float32) for name, shape in table.items()}
    counts = count_parameters(cfg, include_exits=include_exits)
    assert counts["total"] == count_parameters_of(arrays) == size_of(table, lambda n: True)
    assert counts["embeddings_total"] == size_of(table, lambda n: n.startswith("embeddings."))
    assert counts["embeddings"]["projection"] == size_of(table, lambda n: n.endswith(".projection"))
    assert counts["exits_total"] == size_of(table, lambda n: n.startswith("exits."))
    assert [e["layer"] for e in counts["exits"]] == (
        sorted({int(n.split(".")[1]) for n in table if n.startswith("exits.")}))
    for i, layer in enumerate(counts["layers"]):
        p = f"encoder.layer.{i}."
        assert layer["total"] == size_of(table, lambda n: n.startswith(p))
        assert layer["layernorm"] == size_of(table, lambda n: n.startswith(p) and "LayerNorm" in n)
        assert layer["attention"] == size_of(
            table, lambda n: n.startswith(p + "attention.") and "LayerNorm" not in n)
        assert layer["ffn"] == size_of(
            table, lambda n: n.startswith(p) and (".intermediate." in n or ".output.dense" in n)
            and ".attention." not in n)
    assert counts["layers_total"] == size_of(table, lambda n: n.startswith("encoder."))


def test_parameter_count_of_minilm_checkpoint():
    folder = default_model_dir()
    cfg = CostEffConfig.from_json(folder)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.intermediate_size, cfg.max_position_embeddings, cfg.type_vocab_size) == (
        30522, 384, 6, 12, 1536, 512, 2)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    skipped = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    assert skipped <= set(tensors)
    weights = {k: v for k, v in tensors.items() if k not in skipped}
    assert count_parameters(cfg, include_exits=False)["total"] == count_parameters_of(weights)


def test_parameter_count_matches_transformers_models():
    hf = dict(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=24, max_position_embeddings=20, type_vocab_size=2)
    encoder = BertModel(BertConfig(**hf), add_pooling_layer=False)
    assert count_parameters(CostEffConfig(**hf))["total"] == encoder.num_parameters()
    # a classifier with BERT's dense pooler = our model with one dense-pooler exit at the top
    classifier = BertForSequenceClassification(BertConfig(**hf, num_labels=3))
    cfg = CostEffConfig(**hf, num_labels=3, exit_start=3, pooler="dense")
    assert count_parameters(cfg)["total"] == classifier.num_parameters()


def hand_layer_flops(cfg, i, n):
    """Each matrix product of layer i listed with its shapes; (m, k) x (k, p) costs 2 m k p."""
    d, dh = cfg.hidden_size, cfg.attention_head_size
    H, Fi = cfg.heads_per_layer[i], cfg.intermediate_per_layer[i]
    mm = lambda m, k, p: 2 * m * k * p
    A = H * dh
    products = [mm(n, d, A)] * 3                        # query, key, value
    products += [H * mm(n, dh, n), H * mm(n, n, dh)]    # per head: Q K^T and probs V
    products += [mm(n, A, d)]                           # attention output dense
    products += [mm(n, d, Fi), mm(n, Fi, d)]            # intermediate, output dense
    return sum(products)


def hand_model_flops(cfg, n, stop):
    d, C = cfg.hidden_size, cfg.num_labels
    total = 0 if cfg.embedding_rank is None else 2 * n * cfg.embedding_rank * d   # (n, r) x (r, d)
    total += sum(hand_layer_flops(cfg, i, n) for i in range(stop))
    # classifier (1, d) x (d, C), dense pooler (1, d) x (d, d)
    per_exit = 2 * d * C + (2 * d * d if cfg.pooler == "dense" else 0)
    n_exits = 0 if C == 0 else max(0, stop - (cfg.exit_start - 1))
    return total + n_exits * per_exit


@pytest.mark.parametrize("key", list(CONFIGS))
@pytest.mark.parametrize("n", [1, 7])
def test_flops_match_hand_formulas(key, n):
    cfg = CONFIGS[key]
    d = cfg.hidden_size
    for i in range(cfg.num_hidden_layers):
        f = layer_flops(cfg, i, n)
        assert f["total"] == hand_layer_flops(cfg, i, n)
        assert f["total"] == sum(v for k, v in f.items() if k != "total")
        A, Fi = cfg.heads_per_layer[i] * cfg.attention_head_size, cfg.intermediate_per_layer[i]
        assert f["qkv"] + f["attention_output"] == 4 * 2 * n * d * A       # docs/method.md, 8: the groups
        assert f["attention_scores"] + f["attention_context"] == 2 * 2 * n * n * A
        assert f["ffn_intermediate"] + f["ffn_output"] == 2 * 2 * n * d * Fi
    assert embedding_flops(cfg, n) == (0 if cfg.embedding_rank is None
                                       else 2 * n * cfg.embedding_rank * cfg.hidden_size)
    d, C = cfg.hidden_size, cfg.num_labels
    pooler = 2 * d * d if cfg.pooler == "dense" else 0          # (1, d) x (d, d)
    assert exit_flops(cfg) == (0 if C == 0 else pooler + 2 * d * C)   # (1, d) x (d, C)
    L = cfg.num_hidden_layers
    assert model_flops(cfg, n) == hand_model_flops(cfg, n, L)
    assert flops_per_exit(cfg, n) == [hand_model_flops(cfg, n, i + 1) for i in cfg.exit_layers]
    assert len(flops_per_exit(cfg, n)) == len(cfg.exit_layers)
    if cfg.num_labels == 0:   # a plain encoder may stop anywhere
        assert [model_flops(cfg, n, k) for k in range(1, L + 1)] == [
            hand_model_flops(cfg, n, k) for k in range(1, L + 1)]


def test_slender_flops_worked_example():
    # "slender", n = 5, d = 16, d_h = 4: layer 1 (0-based) has 1 head (A = 4) and F = 5
    cfg, n = CONFIGS["slender"], 5
    assert layer_flops(cfg, 1, n)["total"] == 4 * 2 * 5 * 16 * 4 + 2 * 2 * 5 * 5 * 4 + 2 * 2 * 5 * 16 * 5
    # exits after layers 2 and 3 (1-based), each a dense pooler and a 3-way classifier
    assert exit_flops(cfg) == 2 * 16 * 16 + 2 * 16 * 3
    # leaving at layer 2 evaluates exit 2 only; the full model evaluates exits 2 and 3
    emb = 2 * 5 * 6 * 16
    layers = [layer_flops(cfg, i, n)["total"] for i in range(3)]
    assert model_flops(cfg, n, exit_layer=2) == emb + layers[0] + layers[1] + exit_flops(cfg)
    assert model_flops(cfg, n) == emb + sum(layers) + 2 * exit_flops(cfg)
    assert model_flops(cfg, n, intermediate_exits=False) == emb + sum(layers) + exit_flops(cfg)


def torch_forward_flops(cfg, n, stop=None):
    """FLOPs that torch's counter sees in a plain torch forward of the slender multi-exit BERT."""
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    d, dh, L = cfg.hidden_size, cfg.attention_head_size, cfg.num_hidden_layers
    stop = L if stop is None else stop
    ids = torch.randint(0, cfg.vocab_size, (1, n), generator=gen)
    with FlopCounterMode(display=False) as counter:
        if cfg.embedding_rank is None:
            x = rand(cfg.vocab_size, d)[ids]                                  # (1, n, d)
        else:
            x = rand(cfg.vocab_size, cfg.embedding_rank)[ids] @ rand(cfg.embedding_rank, d)
        x = F.layer_norm(x + rand(n, d) + rand(1, d), (d,))
        for i in range(stop):
            H, Fi = cfg.heads_per_layer[i], cfg.intermediate_per_layer[i]
            A = H * dh
            heads = lambda t: t.view(1, n, H, dh).transpose(1, 2)             # (1, H, n, d_h)
            q, k, v = (heads(F.linear(x, rand(A, d), rand(A))) for _ in range(3))
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)   # (1, H, n, n)
            context = (probs @ v).transpose(1, 2).reshape(1, n, A)
            x = F.layer_norm(x + F.linear(context, rand(d, A), rand(d)), (d,))
            h = F.gelu(F.linear(x, rand(Fi, d), rand(Fi)))                    # (1, n, F_i)
            x = F.layer_norm(x + F.linear(h, rand(d, Fi), rand(d)), (d,))
            if i in cfg.exit_layers:
                pooled = x[:, 0]                                              # (1, d)
                if cfg.pooler == "dense":
                    pooled = F.linear(pooled, rand(d, d), rand(d))
                F.linear(torch.tanh(pooled), rand(cfg.num_labels, d), rand(cfg.num_labels))
    return counter.get_total_flops()


@pytest.mark.parametrize("key", ["full_exits", "slender", "wide_heads"])
def test_flops_match_torch_flop_counter(key):
    cfg, n = CONFIGS[key], 9
    assert model_flops(cfg, n) == torch_forward_flops(cfg, n)
    for i in cfg.exit_layers:
        assert model_flops(cfg, n, exit_layer=i + 1) == torch_forward_flops(cfg, n, stop=i + 1)


def test_flops_of_transformers_bert_model():
    hf = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=24, max_position_embeddings=20, attn_implementation="eager")
    model = BertModel(hf, add_pooling_layer=False).eval()
    ids = torch.randint(0, 50, (1, 11), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids)
    cfg = CostEffConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=24, max_position_embeddings=20)
    assert model_flops(cfg, 11) == counter.get_total_flops()


def test_elementwise_flops_are_reported_apart():
    cfg, n = CONFIGS["slender"], 6
    plain = layer_flops(cfg, 2, n)
    with_elementwise = layer_flops(cfg, 2, n, elementwise=True)
    assert "elementwise" not in plain
    assert {k: v for k, v in with_elementwise.items() if k != "elementwise"} == plain
    e = with_elementwise["elementwise"]
    assert e["softmax"] == SOFTMAX_FLOPS_PER_SCORE * 3 * n * n        # 3 heads, n x n scores each
    assert e["gelu"] == GELU_FLOPS_PER_ELEMENT * n * 11               # F = 11
    assert e["layer_norm"] == LAYER_NORM_FLOPS_PER_ELEMENT * 2 * n * 16
    assert e["total"] == e["softmax"] + e["gelu"] + e["layer_norm"]


def test_flops_errors():
    cfg = CONFIGS["slender"]
    with pytest.raises(ValueError, match=r"layer index 3 is outside 0..2"):
        layer_flops(cfg, 3, 4)
    with pytest.raises(ValueError, match="n_tokens must be >= 1, got 0"):
        layer_flops(cfg, 0, 0)
    with pytest.raises(TypeError, match="n_tokens must be an integer"):
        model_flops(cfg, 3.5)
    with pytest.raises(ValueError, match=r"layer 1 has no exit: exits are after layers 2..3"):
        model_flops(cfg, 4, exit_layer=1)
    with pytest.raises(ValueError, match=r"exit_layer 4 is outside 1..3"):
        model_flops(cfg, 4, exit_layer=4)
    with pytest.raises(ValueError, match="exit_layer must be >= 1"):
        model_flops(cfg, 4, exit_layer=0)
    with pytest.raises(ValueError, match="n_tokens"):
        embedding_flops(cfg, -1)
