"""An independent PyTorch reference of the COST-EFF model, its losses and its importance scores.

This file is the yardstick for the parity tests: the NumPy library is checked against it, so
it is written from the written definitions only (``docs/architecture.md`` and ``docs/method.md``),
with plain ``torch.nn`` modules and autograd for every gradient. It never imports the library
it checks.

Contents

* :func:`pick_device` -- where the reference runs (``NPCOSTEFF_TORCH_DEVICE`` overrides);
* :func:`param_shapes`, :func:`random_numpy_state`, :func:`tiny_config` -- the parameter table
  of ``docs/architecture.md`` as code, and small random models for tests;
* :class:`RefCostEffBert` -- the slender multi-exit BERT (embeddings, L layers of
  self-attention + FFN with per-layer widths, exits, gradient equilibrium, injected dropout);
* losses: :func:`cross_entropy`, :func:`mse`, :func:`soft_cross_entropy`, :func:`hidden_mse`,
  :func:`attention_mse` and their sums over exits and layers, :func:`stage_loss`;
* :func:`taylor_importance` -- first-order Taylor scores of weights, heads and FFN neurons.

Symbols: B batch, T tokens, d hidden size, L layers, H_i heads of layer i, d_h head size,
A_i = H_i * d_h, F_i FFN width of layer i, V vocabulary, r embedding rank, C labels.
Layer numbers l are 1-based (docs/method.md), layer indices i = l - 1 are 0-based (parameter names).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

POOLERS = ("cls_tanh", "mean", "dense")
STAGES = ("hidden", "pred", "pred_ta", "hard", "importance")

# Checkpoint keys that a Hugging Face BERT carries but this model does not use (skipped on load).
_UNUSED_KEY_PREFIXES = ("embeddings.position_ids", "pooler.", "cls.")


# --------------------------------------------------------------------------- device, numpy
def pick_device() -> torch.device:
    """``cuda`` when available, else ``cpu``; the env var ``NPCOSTEFF_TORCH_DEVICE`` overrides."""
    name = os.environ.get("NPCOSTEFF_TORCH_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_numpy(t) -> np.ndarray:
    """A tensor (any device, with or without grad) as a NumPy array; arrays pass through."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


# --------------------------------------------------------------------------- config
def _config_dict(config) -> dict:
    """A plain dict from a dict or any object with ``to_dict()``, with the widths filled in."""
    c = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    L = c["num_hidden_layers"]
    if c.get("attention_head_size") is None:
        c["attention_head_size"] = c["hidden_size"] // c["num_attention_heads"]
    if c.get("heads_per_layer") is None:
        c["heads_per_layer"] = [c["num_attention_heads"]] * L
    if c.get("intermediate_per_layer") is None:
        c["intermediate_per_layer"] = [c["intermediate_size"]] * L
    c.setdefault("embedding_rank", None)
    c.setdefault("num_labels", 0)
    c.setdefault("exit_start", 1)
    c.setdefault("pooler", "cls_tanh")
    c.setdefault("problem_type", "single_label_classification")
    c.setdefault("layer_norm_eps", 1e-12)
    if len(c["heads_per_layer"]) != L or len(c["intermediate_per_layer"]) != L:
        raise ValueError(f"heads_per_layer and intermediate_per_layer need {L} entries each")
    if c["pooler"] not in POOLERS:
        raise ValueError(f"pooler {c['pooler']!r} is not one of {POOLERS}")
    if not 1 <= c["exit_start"] <= L:
        raise ValueError(f"exit_start {c['exit_start']} is outside 1..{L}")
    return c


def exit_indices(config) -> list:
    """0-based indices of the layers with an exit: ``i >= exit_start - 1``; none when num_labels == 0."""
    c = _config_dict(config)
    if c["num_labels"] == 0:
        return []
    return list(range(c["exit_start"] - 1, c["num_hidden_layers"]))


def tiny_config(**overrides) -> dict:
    """A small config dict (d=16, L=3, 4 heads of size 4, FFN 24) for fast tests."""
    c = dict(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=24, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        max_position_embeddings=32, type_vocab_size=2, layer_norm_eps=1e-12,
        heads_per_layer=None, intermediate_per_layer=None, attention_head_size=None,
        embedding_rank=None, num_labels=3, exit_start=1, pooler="cls_tanh",
        problem_type="single_label_classification",
    )
    c.update(overrides)
    return _config_dict(c)


def param_shapes(config) -> "OrderedDict[str, tuple]":
    """Name -> shape of every parameter, in the order of the table in docs/architecture.md."""
    c = _config_dict(config)
    d, r, dh = c["hidden_size"], c["embedding_rank"], c["attention_head_size"]
    shapes = OrderedDict()
    if r is None:
        shapes["embeddings.word_embeddings.weight"] = (c["vocab_size"], d)
    else:
        shapes["embeddings.word_embeddings.weight"] = (c["vocab_size"], r)
        shapes["embeddings.word_embeddings.projection"] = (r, d)
    shapes["embeddings.position_embeddings.weight"] = (c["max_position_embeddings"], d)
    shapes["embeddings.token_type_embeddings.weight"] = (c["type_vocab_size"], d)
    shapes["embeddings.LayerNorm.weight"] = (d,)
    shapes["embeddings.LayerNorm.bias"] = (d,)
    for i in range(c["num_hidden_layers"]):
        A, Fi = c["heads_per_layer"][i] * dh, c["intermediate_per_layer"][i]
        p = f"encoder.layer.{i}."
        for proj in ("query", "key", "value"):
            shapes[p + f"attention.self.{proj}.weight"] = (A, d)
            shapes[p + f"attention.self.{proj}.bias"] = (A,)
        shapes[p + "attention.output.dense.weight"] = (d, A)
        shapes[p + "attention.output.dense.bias"] = (d,)
        shapes[p + "attention.output.LayerNorm.weight"] = (d,)
        shapes[p + "attention.output.LayerNorm.bias"] = (d,)
        shapes[p + "intermediate.dense.weight"] = (Fi, d)
        shapes[p + "intermediate.dense.bias"] = (Fi,)
        shapes[p + "output.dense.weight"] = (d, Fi)
        shapes[p + "output.dense.bias"] = (d,)
        shapes[p + "output.LayerNorm.weight"] = (d,)
        shapes[p + "output.LayerNorm.bias"] = (d,)
    C = c["num_labels"]
    for i in exit_indices(c):
        if c["pooler"] == "dense":
            shapes[f"exits.{i}.pooler.dense.weight"] = (d, d)
            shapes[f"exits.{i}.pooler.dense.bias"] = (d,)
        shapes[f"exits.{i}.classifier.weight"] = (C, d)
        shapes[f"exits.{i}.classifier.bias"] = (C,)
    return shapes


def random_numpy_state(config, seed: int = 0, std: float = 0.1, dtype=np.float64) -> dict:
    """Random float parameters for `config`: weights and biases ~ N(0, std^2), LayerNorm gains
    ~ 1 + N(0, std^2). No zeros or symmetric values, so gradient tests see every path."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in param_shapes(config).items():
        x = rng.normal(0.0, std, size=shape)
        if "LayerNorm.weight" in name:
            x = 1.0 + x
        state[name] = x.astype(dtype)
    return state


# --------------------------------------------------------------------------- gradient equilibrium
class GradientEquilibrium(torch.autograd.Function):
    """Identity in forward; multiplies the incoming gradient by `scale` in backward (docs/method.md, 1)."""

    @staticmethod
    def forward(ctx, h, scale: float):  # h (B, T, d) -> (B, T, d)
        ctx.scale = float(scale)
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad_h):  # (B, T, d) -> (B, T, d), no gradient for `scale`
        return grad_h * ctx.scale, None


def gradient_equilibrium(h: torch.Tensor, scale: float) -> torch.Tensor:
    """``h`` unchanged, with its backward gradient scaled by ``scale``."""
    return GradientEquilibrium.apply(h, scale)


# The authors' construction, literally: one rescale right after layer l, by 1/(L-l+1), and one
# before layer l+1, by (L-l); the exit and the hidden state used for distillation are taken
# between the two. Written separately from GradientEquilibrium so that the two rules share no code.
class GradientRescaleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight: float):  # (B, T, d) -> (B, T, d)
        ctx.weight = float(weight)
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad):  # (B, T, d) -> (B, T, d)
        return ctx.weight * grad, None


gradient_rescale = GradientRescaleFunction.apply


# --------------------------------------------------------------------------- modules
def _apply_dropout(x: torch.Tensor, masks: Optional[dict], site: str) -> torch.Tensor:
    """``x * masks[site]`` when a mask for `site` is given; else x unchanged (no dropout there)."""
    if masks is None or site not in masks:
        return x
    m = masks[site]
    if tuple(m.shape) != tuple(x.shape):
        raise ValueError(f"dropout mask for {site!r} has shape {tuple(m.shape)}, expected {tuple(x.shape)}")
    return x * m


class WordEmbedding(nn.Module):
    """``E[ids]`` (V, d), or the factorized ``E[ids] @ P`` with E (V, r) and P (r, d)."""

    def __init__(self, vocab_size: int, hidden_size: int, rank: Optional[int], dtype, device):
        super().__init__()
        width = hidden_size if rank is None else rank
        self.weight = nn.Parameter(torch.zeros(vocab_size, width, dtype=dtype, device=device))
        if rank is not None:
            self.projection = nn.Parameter(torch.zeros(rank, hidden_size, dtype=dtype, device=device))
        else:
            self.projection = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) int -> (B, T, d)
        e = self.weight[input_ids]  # (B, T, d) or (B, T, r)
        if self.projection is not None:
            e = e @ self.projection  # (B, T, r) @ (r, d) -> (B, T, d)
        return e


class Embeddings(nn.Module):
    """word + position + token type, then LayerNorm, then dropout (site ``embeddings``)."""

    def __init__(self, c: dict, dtype, device):
        super().__init__()
        d = c["hidden_size"]
        kw = dict(dtype=dtype, device=device)
        self.word_embeddings = WordEmbedding(c["vocab_size"], d, c["embedding_rank"], dtype, device)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], d, **kw)
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], d, **kw)
        self.LayerNorm = nn.LayerNorm(d, eps=c["layer_norm_eps"], **kw)

    def forward(self, inputs_embeds, token_type_ids, dropout_masks=None):
        # inputs_embeds (B, T, d) word-embedding output; token_type_ids (B, T) -> (B, T, d)
        T = inputs_embeds.shape[1]
        positions = torch.arange(T, device=inputs_embeds.device)  # (T,)
        x = inputs_embeds + self.position_embeddings(positions)[None] + self.token_type_embeddings(token_type_ids)
        x = self.LayerNorm(x)  # (B, T, d)
        return _apply_dropout(x, dropout_masks, "embeddings")


class SelfAttention(nn.Module):
    """Q, K, V projections to the layer's inner width A_i = H_i * d_h."""

    def __init__(self, d: int, num_heads: int, head_size: int, dtype, device):
        super().__init__()
        A = num_heads * head_size
        self.num_heads, self.head_size = num_heads, head_size
        self.query = nn.Linear(d, A, dtype=dtype, device=device)
        self.key = nn.Linear(d, A, dtype=dtype, device=device)
        self.value = nn.Linear(d, A, dtype=dtype, device=device)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, A) -> (B, H, T, d_h)
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_size).transpose(1, 2)

    def forward(self, h, additive_mask, head_mask=None, dropout_masks=None, site=""):
        # h (B, T, d), additive_mask (B, 1, 1, T), head_mask (H,) -> context (B, T, A), probs (B, H, T, T)
        q = self.split_heads(self.query(h))  # (B, H, T, d_h)
        k = self.split_heads(self.key(h))  # (B, H, T, d_h)
        v = self.split_heads(self.value(h))  # (B, H, T, d_h)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + additive_mask  # (B, H, T, T)
        probs = torch.softmax(scores, dim=-1)  # (B, H, T, T), reported as the attention map
        weights = _apply_dropout(probs, dropout_masks, site)  # dropout first (Hugging Face order)
        if head_mask is not None:
            weights = weights * head_mask.view(1, -1, 1, 1)  # then the head mask
        context = weights @ v  # (B, H, T, d_h)
        B, H, T, dh = context.shape
        context = context.transpose(1, 2).reshape(B, T, H * dh)  # (B, T, A), heads side by side
        return context, probs


class SelfOutput(nn.Module):
    """dense (A_i -> d), dropout, residual, LayerNorm."""

    def __init__(self, d: int, A: int, eps: float, dtype, device):
        super().__init__()
        self.dense = nn.Linear(A, d, dtype=dtype, device=device)
        self.LayerNorm = nn.LayerNorm(d, eps=eps, dtype=dtype, device=device)

    def forward(self, context, residual, dropout_masks=None, site=""):  # (B, T, A), (B, T, d) -> (B, T, d)
        x = _apply_dropout(self.dense(context), dropout_masks, site)
        return self.LayerNorm(x + residual)


class Attention(nn.Module):
    """``self`` (Q, K, V and softmax) followed by ``output`` (dense, residual, LayerNorm)."""

    def __init__(self, d: int, num_heads: int, head_size: int, eps: float, dtype, device):
        super().__init__()
        self.self = SelfAttention(d, num_heads, head_size, dtype, device)
        self.output = SelfOutput(d, num_heads * head_size, eps, dtype, device)


class Intermediate(nn.Module):
    """dense (d -> F_i) then the erf GELU."""

    def __init__(self, d: int, F_i: int, dtype, device):
        super().__init__()
        self.dense = nn.Linear(d, F_i, dtype=dtype, device=device)

    def forward(self, h):  # (B, T, d) -> (B, T, F_i)
        return F.gelu(self.dense(h))  # approximate="none": the erf form


class Output(nn.Module):
    """dense (F_i -> d), dropout, residual, LayerNorm."""

    def __init__(self, d: int, F_i: int, eps: float, dtype, device):
        super().__init__()
        self.dense = nn.Linear(F_i, d, dtype=dtype, device=device)
        self.LayerNorm = nn.LayerNorm(d, eps=eps, dtype=dtype, device=device)

    def forward(self, a, residual, dropout_masks=None, site=""):  # (B, T, F_i), (B, T, d) -> (B, T, d)
        x = _apply_dropout(self.dense(a), dropout_masks, site)
        return self.LayerNorm(x + residual)


class Layer(nn.Module):
    """One BERT layer of index i with H_i heads and F_i FFN neurons."""

    def __init__(self, index: int, c: dict, dtype, device):
        super().__init__()
        d, eps = c["hidden_size"], c["layer_norm_eps"]
        H, dh, F_i = c["heads_per_layer"][index], c["attention_head_size"], c["intermediate_per_layer"][index]
        self.index = index
        self.attention = Attention(d, H, dh, eps, dtype, device)
        self.intermediate = Intermediate(d, F_i, dtype, device)
        self.output = Output(d, F_i, eps, dtype, device)

    def forward(self, h, additive_mask, head_mask=None, ffn_mask=None, dropout_masks=None):
        # h (B, T, d), additive_mask (B, 1, 1, T), head_mask (H_i,), ffn_mask (F_i,)
        # -> h_out (B, T, d), probs (B, H_i, T, T)
        i = self.index
        context, probs = self.attention.self(h, additive_mask, head_mask, dropout_masks,
                                             site=f"layer.{i}.attention.probs")
        h_attn = self.attention.output(context, h, dropout_masks, site=f"layer.{i}.attention.output")
        a = self.intermediate(h_attn)  # (B, T, F_i)
        if ffn_mask is not None:
            a = a * ffn_mask  # (B, T, F_i) * (F_i,): the mask acts after GELU
        h_out = self.output(a, h_attn, dropout_masks, site=f"layer.{i}.output")
        return h_out, probs


class Encoder(nn.Module):
    """The list ``layer`` of L layers (so that names read ``encoder.layer.{i}....``)."""

    def __init__(self, c: dict, dtype, device):
        super().__init__()
        self.layer = nn.ModuleList(Layer(i, c, dtype, device) for i in range(c["num_hidden_layers"]))


class Pooler(nn.Module):
    """``dense`` (d -> d) of the ``"dense"`` pooler; only built for that pooler."""

    def __init__(self, d: int, dtype, device):
        super().__init__()
        self.dense = nn.Linear(d, d, dtype=dtype, device=device)


class Exit(nn.Module):
    """Exit after layer i: ``classifier(dropout(pool(h_i)))``."""

    def __init__(self, index: int, c: dict, dtype, device):
        super().__init__()
        d = c["hidden_size"]
        self.index, self.pooler_kind = index, c["pooler"]
        if self.pooler_kind == "dense":
            self.pooler = Pooler(d, dtype, device)
        self.classifier = nn.Linear(d, c["num_labels"], dtype=dtype, device=device)

    def pool(self, h, attention_mask):  # h (B, T, d), attention_mask (B, T) -> (B, d)
        if self.pooler_kind == "cls_tanh":
            return torch.tanh(h[:, 0])
        if self.pooler_kind == "mean":
            m = attention_mask[:, :, None]  # (B, T, 1)
            return (h * m).sum(dim=1) / m.sum(dim=1)  # mean over non-padding tokens, no tanh
        return torch.tanh(self.pooler.dense(h[:, 0]))  # "dense": BERT's pooler

    def forward(self, h, attention_mask, dropout_masks=None):  # (B, T, d), (B, T) -> (B, C)
        pooled = _apply_dropout(self.pool(h, attention_mask), dropout_masks, f"exit.{self.index}")
        return self.classifier(pooled)


@dataclass
class RefOutput:
    """What :meth:`RefCostEffBert.forward` returns."""

    hidden_states: tuple  # L+1 tensors (B, T, d): embedding output, then each layer's output
    logits: tuple  # one (B, C) per exit, shallowest exit first
    exit_layers: tuple  # 1-based layer number of each exit
    attentions: Optional[tuple] = None  # L tensors (B, H_i, T, T) when output_attentions


class RefCostEffBert(nn.Module):
    """The slender multi-exit BERT of docs/method.md, 1 in plain PyTorch.

    ``RefCostEffBert(config, state=None, dtype=torch.float64, device=None)``: `config` is a
    dict with the keys of ``CostEffConfig.to_dict()`` (or an object with ``to_dict``); `state`
    maps the parameter names of docs/architecture.md to NumPy arrays (None: a seeded random
    state from :func:`random_numpy_state`). ``named_parameters()`` gives exactly those names.
    """

    def __init__(self, config, state: Optional[dict] = None, dtype=torch.float64, device=None, seed: int = 0):
        super().__init__()
        c = _config_dict(config)
        self.config = c
        self.dtype_ = dtype
        device = pick_device() if device is None else torch.device(device)
        self.num_layers = c["num_hidden_layers"]
        self.embeddings = Embeddings(c, dtype, device)
        self.encoder = Encoder(c, dtype, device)
        if exit_indices(c):
            self.exits = nn.ModuleDict({str(i): Exit(i, c, dtype, device) for i in exit_indices(c)})
        else:
            self.exits = None
        self.load_numpy_state(random_numpy_state(c, seed=seed) if state is None else state)

    @property
    def device(self) -> torch.device:
        return self.embeddings.LayerNorm.weight.device

    @property
    def exit_layers(self) -> tuple:
        """1-based layer numbers of the exits, shallowest first."""
        return tuple(i + 1 for i in exit_indices(self.config))

    # ----------------------------------------------------------------- state
    def load_numpy_state(self, state: dict, strict: bool = True) -> None:
        """Copy NumPy arrays into the parameters, checking names and shapes.

        A ``bert.`` prefix is stripped; keys of a Hugging Face checkpoint that this model does
        not use (``embeddings.position_ids``, ``pooler.*``, ``cls.*``) are skipped. With
        ``strict`` a missing parameter or any other unknown key is an error.
        """
        params = dict(self.named_parameters())
        given = {}
        for key, value in state.items():
            name = key[len("bert."):] if key.startswith("bert.") else key
            if name in params:
                given[name] = value
            elif name.startswith(_UNUSED_KEY_PREFIXES):
                continue
            elif strict:
                raise KeyError(f"unknown parameter {key!r} in the state (the model has no such parameter)")
        missing = [n for n in params if n not in given]
        if strict and missing:
            raise KeyError(f"the state lacks {len(missing)} parameter(s): {missing[:5]}")
        with torch.no_grad():
            for name, value in given.items():
                p = params[name]
                if tuple(np.shape(value)) != tuple(p.shape):
                    raise ValueError(f"{name}: state has shape {tuple(np.shape(value))}, "
                                     f"the model expects {tuple(p.shape)}")
                p.copy_(torch.as_tensor(np.asarray(value), dtype=p.dtype, device=p.device))

    def numpy_state(self) -> dict:
        """name -> NumPy array of every parameter."""
        return {n: to_numpy(p) for n, p in self.named_parameters()}

    # ----------------------------------------------------------------- forward
    def _tensor(self, x, dtype=None):
        """`x` (tensor or array) on the model's device, in `dtype` (default: the model's)."""
        return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x,
                               dtype=self.dtype_ if dtype is None else dtype, device=self.device)

    def _layer_masks(self, masks, widths, what):
        """A per-layer list of (width,) tensors or None, from a list or an (L, W) array."""
        if masks is None:
            return [None] * self.num_layers
        if len(masks) != self.num_layers:
            raise ValueError(f"{what} has {len(masks)} entries for {self.num_layers} layers")
        out = []
        for i, (m, w) in enumerate(zip(masks, widths)):
            if m is None:
                out.append(None)
                continue
            m = self._tensor(m)
            if tuple(m.shape) != (w,):
                raise ValueError(f"{what}[{i}] has shape {tuple(m.shape)}, layer {i} needs ({w},)")
            out.append(m)
        return out

    def _valid_sites(self) -> set:
        sites = {"embeddings"}
        for i in range(self.num_layers):
            sites |= {f"layer.{i}.attention.probs", f"layer.{i}.attention.output", f"layer.{i}.output"}
        sites |= {f"exit.{i}" for i in exit_indices(self.config)}
        return sites

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
                head_mask=None, ffn_mask=None, dropout_masks=None, gradient_equilibrium=False,
                output_attentions=False) -> RefOutput:
        """Run the model.

        input_ids (B, T) int, or inputs_embeds (B, T, d) used instead of the word embedding;
        attention_mask (B, T) of 0/1 (default all ones); token_type_ids (B, T) (default zeros);
        head_mask: L vectors (H_i,) or an (L, H) array; ffn_mask: L vectors (F_i,) (None
        entries: no mask in that layer); dropout_masks: dict site -> multiplier (0 or 1/(1-p)),
        a site absent from the dict gets no dropout; gradient_equilibrium: identity in the
        forward pass, a gradient rescale in the backward pass, applied only to a model with
        more than one exit: ``True``/``"authors"`` puts the authors' two ``gradient_rescale``
        hooks on every layer's output (hidden-state losses rescaled with the exit's);
        ``"exit_layers"`` rescales only the two branches of layers with an exit (hidden-state
        losses unscaled); ``False``: off.
        """
        c = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            input_ids = self._tensor(input_ids, torch.long)
            if input_ids.ndim != 2:
                raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
            if input_ids.min() < 0 or input_ids.max() >= c["vocab_size"]:
                raise ValueError(f"input_ids outside 0..{c['vocab_size'] - 1}")
            inputs_embeds = self.embeddings.word_embeddings(input_ids)  # (B, T, d)
        else:
            inputs_embeds = self._tensor(inputs_embeds)
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != c["hidden_size"]:
                raise ValueError(f"inputs_embeds must be (B, T, {c['hidden_size']}), got {tuple(inputs_embeds.shape)}")
        B, T, _ = inputs_embeds.shape
        if T > c["max_position_embeddings"]:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings {c['max_position_embeddings']}")
        attention_mask = torch.ones(B, T) if attention_mask is None else attention_mask
        attention_mask = self._tensor(attention_mask)  # (B, T) in the model's dtype
        if tuple(attention_mask.shape) != (B, T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, T)}")
        token_type_ids = torch.zeros(B, T) if token_type_ids is None else token_type_ids
        token_type_ids = self._tensor(token_type_ids, torch.long)
        if dropout_masks is not None:
            unknown = set(dropout_masks) - self._valid_sites()
            if unknown:
                raise KeyError(f"unknown dropout site(s) {sorted(unknown)}")
            dropout_masks = {k: self._tensor(v) for k, v in dropout_masks.items()}
        head_masks = self._layer_masks(head_mask, c["heads_per_layer"], "head_mask")
        ffn_masks = self._layer_masks(ffn_mask, c["intermediate_per_layer"], "ffn_mask")

        # Padding keys get the most negative finite number: exp underflows to exactly 0.
        additive_mask = ((1.0 - attention_mask) * torch.finfo(self.dtype_).min)[:, None, None, :]  # (B, 1, 1, T)

        h = self.embeddings(inputs_embeds, token_type_ids, dropout_masks)  # (B, T, d)
        hidden_states, logits, attentions = [h], [], []
        L = self.num_layers
        rule = {True: "authors", False: None}.get(gradient_equilibrium, gradient_equilibrium)
        if rule not in (None, "authors", "exit_layers"):
            raise ValueError(f"unknown gradient_equilibrium {gradient_equilibrium!r}")
        if self.exits is None or len(self.exits) < 2:
            rule = None  # one exit: nothing to balance (plain fine-tuning)
        x = h  # input of the next layer
        for i, layer in enumerate(self.encoder.layer):
            h, probs = layer(x, additive_mask, head_masks[i], ffn_masks[i], dropout_masks)  # (B, T, d)
            if rule == "authors":
                h = gradient_rescale(h, 1.0 / (L - i))  # rescale 1: 1/(L-l+1), l = i+1
            hidden_states.append(h)  # the distilled hidden state sits between the two rescales
            attentions.append(probs)
            x = h
            if rule == "authors" and i < L - 1:
                x = gradient_rescale(h, L - i - 1)  # rescale 2: (L-l), into layer l+1
            if self.exits is not None and str(i) in self.exits:
                exit_input = h
                l = i + 1  # 1-based layer number
                if rule == "exit_layers" and l < L:
                    # Two identity branches: exit gets 1/(L-l+1) of its gradient, deeper layers (L-l)/(L-l+1).
                    exit_input = GradientEquilibrium.apply(h, 1.0 / (L - l + 1))
                    x = GradientEquilibrium.apply(h, (L - l) / (L - l + 1))
                logits.append(self.exits[str(i)](exit_input, attention_mask, dropout_masks))  # (B, C)
        return RefOutput(hidden_states=tuple(hidden_states), logits=tuple(logits),
                         exit_layers=self.exit_layers,
                         attentions=tuple(attentions) if output_attentions else None)


# --------------------------------------------------------------------------- losses
def _n_tokens(mask: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B,)
    n = mask.sum(dim=1)
    if bool((n <= 0).any()):
        raise ValueError("a sample of the batch has no non-padding token (attention_mask row of zeros)")
    return n


def cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean_b(-log_softmax(z)[b, y_b])``; z (B, C), y (B,) int."""
    if z.ndim != 2 or y.shape != z.shape[:1]:
        raise ValueError(f"cross_entropy needs z (B, C) and y (B,), got {tuple(z.shape)} and {tuple(y.shape)}")
    y = y.to(device=z.device, dtype=torch.long)
    if bool((y < 0).any()) or bool((y >= z.shape[1]).any()):
        raise ValueError(f"labels outside 0..{z.shape[1] - 1}")
    log_p = torch.log_softmax(z, dim=-1)  # (B, C)
    return -log_p.gather(1, y[:, None])[:, 0].mean()


def mse(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean_b((z[b, 0] - y_b)^2)``; z (B, 1), y (B,) float (regression)."""
    if z.ndim != 2 or z.shape[1] != 1 or y.shape != z.shape[:1]:
        raise ValueError(f"mse needs z (B, 1) and y (B,), got {tuple(z.shape)} and {tuple(y.shape)}")
    return ((z[:, 0] - y.to(z)) ** 2).mean()


def soft_cross_entropy(z: torch.Tensor, t: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """``mean_b(-sum_c softmax(t/T)[b, c] * log_softmax(z/T)[b, c])``; teacher t is a constant."""
    if z.shape != t.shape or z.ndim != 2:
        raise ValueError(f"soft_cross_entropy needs z and t of the same (B, C) shape, got {tuple(z.shape)}, {tuple(t.shape)}")
    if T <= 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    p_teacher = torch.exp(torch.log_softmax(t.detach().to(z) / T, dim=-1))  # (B, C), no NaN at p = 0
    return -(p_teacher * torch.log_softmax(z / T, dim=-1)).sum(dim=-1).mean()


def hidden_mse(hs: torch.Tensor, ht: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean_b(sum_t m[b,t] * mean_j (hs - ht)[b,t,j]^2 / n_b)``; hs, ht (B, T, d), mask (B, T)."""
    if hs.shape != ht.shape or hs.ndim != 3 or tuple(mask.shape) != tuple(hs.shape[:2]):
        raise ValueError(f"hidden_mse needs hs, ht (B, T, d) and mask (B, T), got "
                         f"{tuple(hs.shape)}, {tuple(ht.shape)}, {tuple(mask.shape)}")
    m = mask.to(hs)
    per_token = ((hs - ht.detach().to(hs)) ** 2).mean(dim=-1)  # (B, T)
    return ((per_token * m).sum(dim=1) / _n_tokens(m)).mean()


def padded_hidden_mse(hs: torch.Tensor, ht: torch.Tensor, mask: torch.Tensor, pad_to: int) -> torch.Tensor:
    """The authors' importance hidden term, literally: both hidden states with padding zeroed,
    padded with zeros to ``pad_to`` tokens, then ``torch.nn.MSELoss()`` over (B, pad_to, d)."""
    B, T, d = hs.shape
    if pad_to < T:
        raise ValueError(f"pad_to {pad_to} < {T} tokens")
    m = mask.to(hs)[:, :, None]  # (B, T, 1)
    zeros = hs.new_zeros(B, pad_to - T, d)
    s = torch.cat([hs * m, zeros], dim=1)  # (B, pad_to, d)
    t = torch.cat([ht.detach().to(hs) * m, zeros], dim=1)
    return torch.nn.MSELoss()(s, t)


def attention_mse(ps: torch.Tensor, pt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Head-averaged maps a = mean_h probs (B, T, T);
    ``mean_b(sum_{q,k} m[b,q] m[b,k] (a_s - a_t)[b,q,k]^2 / n_b)``."""
    if ps.ndim != 4 or pt.ndim != 4 or ps.shape[0] != pt.shape[0] or ps.shape[2:] != pt.shape[2:]:
        raise ValueError(f"attention_mse needs ps (B, H_s, T, T) and pt (B, H_t, T, T), got "
                         f"{tuple(ps.shape)}, {tuple(pt.shape)}")
    m = mask.to(ps)  # (B, T)
    diff = ps.mean(dim=1) - pt.detach().to(ps).mean(dim=1)  # (B, T, T)
    pair_mask = m[:, :, None] * m[:, None, :]  # (B, T, T): both query and key are real tokens
    return ((pair_mask * diff ** 2).sum(dim=(1, 2)) / _n_tokens(m)).mean()


def _exit_layers_of(out) -> tuple:
    """1-based exit layers of an output; exits always fill the last len(logits) layers."""
    layers = getattr(out, "exit_layers", None)
    if layers is not None:
        return tuple(layers)
    L = len(out.hidden_states) - 1
    return tuple(range(L - len(out.logits) + 1, L + 1))


def hard_loss(student_out, labels, final_only: bool = False, regression: bool = False) -> torch.Tensor:
    """``sum over exits of cross_entropy(z_l, y)`` (``mse`` for regression); `final_only`: last exit alone."""
    zs = student_out.logits[-1:] if final_only else student_out.logits
    if len(zs) == 0:
        raise ValueError("the student has no exit: a hard loss needs logits")
    f = mse if regression else cross_entropy
    return sum(f(z, labels) for z in zs)


def prediction_loss(student_out, teacher_out, temperature: float = 1.0, regression: bool = False,
                    final_only: bool = False) -> torch.Tensor:
    """``sum over exits l of soft_cross_entropy(z_l, t_{k(l)}, T)`` (``mse(z_l, t_{k(l)}[:, 0])``
    for regression). k(l) is the teacher's last exit when it has one exit, else the teacher's
    exit at the same layer l. `final_only`: the student's last exit alone."""
    s_layers, t_layers = _exit_layers_of(student_out), _exit_layers_of(teacher_out)
    if len(t_layers) == 0 or len(s_layers) == 0:
        raise ValueError("prediction distillation needs exits in both student and teacher")
    pairs = list(zip(s_layers, student_out.logits))
    if final_only:
        pairs = pairs[-1:]
    total = 0.0
    for layer, z in pairs:
        if len(t_layers) == 1:
            t = teacher_out.logits[0]
        else:
            if layer not in t_layers:
                raise ValueError(f"the teacher has no exit at layer {layer} (its exits: {t_layers})")
            t = teacher_out.logits[t_layers.index(layer)]
        total = total + (mse(z, t[:, 0]) if regression else soft_cross_entropy(z, t, temperature))
    return total


def _teacher_layer(l: int, L_s: int, L_t: int) -> int:
    """l * L_t / L_s, which must be a whole number."""
    if (l * L_t) % L_s:
        raise ValueError(f"layer mapping l*L_t/L_s is not a whole number (l={l}, L_t={L_t}, L_s={L_s})")
    return l * L_t // L_s


def hidden_loss(student_out, teacher_out, attention_mask, pad_to=None) -> torch.Tensor:
    """``sum_{l=0..L_s} hidden_mse(h_l, g_{l*L_t/L_s}, m)`` over the L_s + 1 hidden states
    (with `pad_to`: :func:`padded_hidden_mse` instead)."""
    L_s, L_t = len(student_out.hidden_states) - 1, len(teacher_out.hidden_states) - 1
    mse_of = hidden_mse if pad_to is None else (lambda s, t, m: padded_hidden_mse(s, t, m, pad_to))
    return sum(mse_of(student_out.hidden_states[l], teacher_out.hidden_states[_teacher_layer(l, L_s, L_t)],
                      attention_mask) for l in range(L_s + 1))


def attention_loss(student_out, teacher_out, attention_mask) -> torch.Tensor:
    """``sum_{l=1..L_s} attention_mse(p_l, q_{l*L_t/L_s}, m)``; p_l = attentions[l - 1]."""
    if student_out.attentions is None or teacher_out.attentions is None:
        raise ValueError("attention distillation needs output_attentions=True for student and teacher")
    L_s, L_t = len(student_out.attentions), len(teacher_out.attentions)
    return sum(attention_mse(student_out.attentions[l - 1],
                             teacher_out.attentions[_teacher_layer(l, L_s, L_t) - 1], attention_mask)
               for l in range(1, L_s + 1))


def stage_loss(stage, student_out, labels, attention_mask, teacher_out=None, temperature=1.0,
               final_only=False, use_attention=False, regression=False, return_components=False,
               hidden_pad_to=None):
    """The training loss of a stage (docs/architecture.md, "Losses").

    * ``hidden``: hidden distillation;
    * ``pred``: prediction distillation + hidden distillation (the COST-EFF student);
    * ``pred_ta``: (prediction distillation + hard) / 2 (the TA);
    * ``hard``: hard loss (``final_only``: last exit alone);
    * ``importance``: 0.9 prediction + 0.1 hard + hidden (docs/method.md, 4).

    `final_only` restricts the hard loss (wherever it appears) to the last exit. With
    `use_attention`, attention distillation is added next to the hidden distillation (so in
    ``hidden``, ``pred`` and ``importance``). Returns the scalar loss, and with
    `return_components` also a dict of the unweighted components used ("hard", "pred",
    "hidden", "attention").
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    needs_teacher = stage in ("hidden", "pred", "pred_ta", "importance")
    if needs_teacher and teacher_out is None:
        raise ValueError(f"stage {stage!r} needs teacher outputs")
    mask = attention_mask if isinstance(attention_mask, torch.Tensor) else torch.as_tensor(np.asarray(attention_mask))
    mask = mask.to(student_out.hidden_states[0])
    if labels is not None and not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(np.asarray(labels))
    if labels is not None:
        labels = labels.to(mask.device)

    parts = {}
    if stage in ("hidden", "pred", "importance"):
        parts["hidden"] = hidden_loss(student_out, teacher_out, mask, hidden_pad_to)
        if use_attention:
            parts["attention"] = attention_loss(student_out, teacher_out, mask)
    if stage in ("pred", "pred_ta", "importance"):
        parts["pred"] = prediction_loss(student_out, teacher_out, temperature, regression)
    if stage in ("pred_ta", "hard", "importance"):
        if labels is None:
            raise ValueError(f"stage {stage!r} needs labels")
        parts["hard"] = hard_loss(student_out, labels, final_only, regression)

    representation = parts.get("hidden", 0.0) + parts.get("attention", 0.0)
    if stage == "hidden":
        loss = representation
    elif stage == "pred":
        loss = parts["pred"] + representation
    elif stage == "pred_ta":
        loss = (parts["pred"] + parts["hard"]) / 2
    elif stage == "hard":
        loss = parts["hard"]
    else:  # importance
        loss = 0.9 * parts["pred"] + 0.1 * parts["hard"] + representation
    return (loss, parts) if return_components else loss


# --------------------------------------------------------------------------- Taylor importance
def importance_loss(student_out, labels, attention_mask, teacher_out, temperature=1.0,
                    use_attention=False, regression=False, last_exit_only=False, hidden_pad_to=None,
                    last_exit_hard=True):
    """The loss whose gradients score the weights (docs/method.md, 4).

    All exits (default): ``stage_loss("importance", ...)`` = 0.9 prediction distillation over
    all exits + 0.1 hard loss over all exits + hidden distillation. With `last_exit_only`
    (the ablation of docs/method.md, 4): the same joint loss with the prediction distillation and the
    hard loss taken at the final exit only; the hidden distillation (all L+1 hidden states)
    is kept, because it belongs to no exit. With ``last_exit_hard=False`` the ablation is the
    authors': ``prediction(last exit) + hidden``, no hard term. `hidden_pad_to`: the hidden
    term as :func:`padded_hidden_mse`.
    """
    if not last_exit_only:
        return stage_loss("importance", student_out, labels, attention_mask, teacher_out, temperature,
                          use_attention=use_attention, regression=regression, hidden_pad_to=hidden_pad_to)
    mask = torch.as_tensor(attention_mask).to(student_out.hidden_states[0])
    labels = torch.as_tensor(labels).to(mask.device)
    pred = prediction_loss(student_out, teacher_out, temperature, regression, final_only=True)
    if last_exit_hard:
        pred = 0.9 * pred + 0.1 * hard_loss(student_out, labels, final_only=True, regression=regression)
    loss = pred + hidden_loss(student_out, teacher_out, mask, hidden_pad_to)
    if use_attention:
        loss = loss + attention_loss(student_out, teacher_out, mask)
    return loss


def taylor_importance(model: RefCostEffBert, batches, teacher_outs, temperature=1.0, use_attention=False,
                      regression=False, last_exit_only=False, gradient_equilibrium=False,
                      hidden_pad_to=None, last_exit_hard=True) -> dict:
    """First-order Taylor importance of weights, heads and FFN neurons (docs/method.md, 4).

    `batches`: iterable of dicts with ``input_ids``, ``attention_mask``, ``token_type_ids``
    (optional) and ``labels``; `teacher_outs`: one teacher output per batch (constants).
    For each batch, without dropout, the loss of :func:`importance_loss` is back-propagated
    and |grad| of every weight is accumulated; the score of a weight is
    ``|w * sum_batches |grad||``. Returns a dict:

    * ``"weight_scores"``: name -> score tensor, the shape of the parameter;
    * ``"head_scores"``: per layer i, (H_i,): the score of ``attention.output.dense.weight``
      (d, A_i) summed over its rows, then over each head's d_h columns;
    * ``"neuron_scores"``: per layer i, (F_i,): the row sum of ``intermediate.dense.weight``
      scores plus the column sum of ``output.dense.weight`` scores.
    """
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    n_batches = 0
    for batch, teacher_out in zip(batches, teacher_outs, strict=True):
        model.zero_grad(set_to_none=True)
        out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                    dropout_masks=None, gradient_equilibrium=gradient_equilibrium,
                    output_attentions=use_attention)
        loss = importance_loss(out, batch["labels"], batch["attention_mask"], teacher_out, temperature,
                               use_attention, regression, last_exit_only, hidden_pad_to, last_exit_hard)
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                acc[n] += p.grad.abs()
        n_batches += 1
    if n_batches == 0:
        raise ValueError("taylor_importance needs at least one batch")
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        scores = {n: (params[n] * acc[n]).abs() for n in params}
        dh = model.config["attention_head_size"]
        head_scores, neuron_scores = [], []
        for i in range(model.num_layers):
            p = f"encoder.layer.{i}."
            s_out = scores[p + "attention.output.dense.weight"]  # (d, A_i)
            per_column = s_out.sum(dim=0)  # (A_i,): summed over the output dimension
            head_scores.append(per_column.view(-1, dh).sum(dim=1))  # (H_i,): each head's d_h columns
            neuron_scores.append(scores[p + "intermediate.dense.weight"].sum(dim=1)  # (F_i,): row of (F_i, d)
                                 + scores[p + "output.dense.weight"].sum(dim=0))  # (F_i,): column of (d, F_i)
    return {"weight_scores": scores, "head_scores": head_scores, "neuron_scores": neuron_scores}
