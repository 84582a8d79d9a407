"""`CostEffModel`: a (slender, multi-exit) BERT with a hand-written backward pass.

    h_0 = Embeddings(input_ids)                        (B, T, d)
    h_l = Layer_l(h_{l-1}),  l = 1..L                  (B, T, d)   Layer = attention block + FFN block
    z_l = Exit_l(h_l),       l = exit_start..L         (B, C)

The model owns one ordered dictionary of parameters (``param_names`` gives the order, which
drives loading, saving, the optimizer and the parity tests) and one of gradients of the same
names. ``backward`` adds into the gradients (``+=``); ``zero_grad`` clears them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from .config import CostEffConfig
from .equilibrium import equilibrium_rule
from .flops import layer_flops
from .kernels.lanes_layer import layer_forward_in_lanes
from .nn.attention import AttentionCache, attention_backward, attention_forward
from .nn.dropout import Dropout
from .nn.embeddings import (EmbeddingsCache, WordCache, embeddings_backward, embeddings_forward,
                            word_embeddings_backward, word_embeddings_forward)
from .nn.exits import ExitCache, exit_backward, exit_forward
from .nn.ffn import FFNCache, ffn_backward, ffn_forward
from .nn.prefixed import Prefixed
from .parameters import init_params, param_shapes
from . import weights as W


def _no_dropout(site, shape):
    """The dropout hook of evaluation: no mask anywhere."""
    return None


class LayerCache(NamedTuple):
    """The caches of one encoder layer's two blocks."""

    attention: AttentionCache
    ffn: FFNCache


class ForwardCache(NamedTuple):
    """Everything ``CostEffModel.backward`` needs from a forward pass (``return_cache=True``)."""

    word: Optional[WordCache]            # None when the forward got inputs_embeds
    embeddings: EmbeddingsCache
    layers: list[LayerCache]              # layers 0..L-1
    exits: dict[int, ExitCache]           # 0-based layer -> the cache of its exit
    L: int                                # layers run (max_layer)
    exit_layers: tuple                    # 1-based layers whose exits ran
    gradient_equilibrium: Optional[str]   # the rule in force: None | "authors" | "exit_layers"


@dataclass
class ModelOutput:
    """What a forward pass returns. Shapes: hidden_states L+1 x (B, T, d); logits one (B, C)
    per exit, shallowest first; attentions L x (B, H_l, T, T) when asked for."""
    hidden_states: tuple
    logits: tuple
    exit_layers: tuple
    attentions: Optional[tuple] = None
    cache: Optional[ForwardCache] = None

    @property
    def last_hidden_state(self):
        return self.hidden_states[-1]


class CostEffModel:
    """A slender multi-exit BERT in NumPy (see the module docstring and docs/architecture.md)."""

    def __init__(self, config: CostEffConfig, params: Optional[dict] = None, dtype=np.float32, seed=0):
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        shapes = param_shapes(config)
        self.param_names = list(shapes)
        if params is None:
            params = init_params(config, self.dtype, seed)
        W.check_state(params, shapes)
        self.params = {n: np.ascontiguousarray(params[n], dtype=self.dtype) for n in self.param_names}
        self.grads = None
        self.zero_grad()

    # ------------------------------------------------------------------ housekeeping
    def zero_grad(self):
        """Set every gradient buffer to zero (allocating them the first time)."""
        if self.grads is None:
            self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        else:
            for g in self.grads.values():
                g.fill(0.0)

    def num_parameters(self, include_exits=True) -> int:
        return int(sum(p.size for n, p in self.params.items() if include_exits or not n.startswith("exits.")))

    def astype(self, dtype) -> "CostEffModel":
        return CostEffModel(self.config, self.params, dtype=dtype)

    def copy(self) -> "CostEffModel":
        return CostEffModel(self.config, {n: p.copy() for n, p in self.params.items()}, dtype=self.dtype)

    def state_dict(self) -> dict:
        return dict(self.params)

    # ------------------------------------------------------------------ input checks
    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None, inputs_embeds=None):
        """Validate a batch and fill in the defaults; every entry point (forward, early exit) calls it.

        Returns ``(input_ids, attention_mask, token_type_ids, inputs_embeds)`` as arrays: a
        missing attention_mask is all ones, missing token_type_ids all zeros. Raises a
        ValueError/TypeError that names the problem: out-of-range ids, a mask other than 0/1,
        a row with no real token, shapes that disagree, a sequence longer than the positions.
        """
        c = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            input_ids = np.asarray(input_ids)
            if input_ids.ndim != 2:
                raise ValueError(f"input_ids must be (batch, tokens), got shape {input_ids.shape}")
            if not np.issubdtype(input_ids.dtype, np.integer):
                raise TypeError(f"input_ids must be integers, got {input_ids.dtype}")
            if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= c.vocab_size):
                bad = input_ids.max() if input_ids.max() >= c.vocab_size else input_ids.min()
                raise ValueError(f"token id {int(bad)} is out of range for vocab_size {c.vocab_size}")
            shape = input_ids.shape
        else:
            inputs_embeds = np.asarray(inputs_embeds, dtype=self.dtype)
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[2] != c.hidden_size:
                raise ValueError(f"inputs_embeds must be (batch, tokens, {c.hidden_size}), "
                                 f"got shape {inputs_embeds.shape}")
            shape = inputs_embeds.shape[:2]
        if shape[1] > c.max_position_embeddings:
            raise ValueError(f"sequence length {shape[1]} is longer than max_position_embeddings "
                             f"{c.max_position_embeddings}")
        if shape[1] == 0 or shape[0] == 0:
            raise ValueError(f"empty batch: shape {shape}")
        if attention_mask is None:
            attention_mask = np.ones(shape, np.int64)
        attention_mask = np.asarray(attention_mask)
        if attention_mask.shape != shape:
            raise ValueError(f"attention_mask has shape {attention_mask.shape}, input has {shape}")
        valid = np.isin(attention_mask, (0, 1))
        if not valid.all():   # a 2 would turn the additive mask into +max: attention on padding
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token), got "
                             f"{np.unique(attention_mask[~valid])[:5].tolist()}")
        empty = np.flatnonzero(~attention_mask.any(axis=1))
        if empty.size:
            raise ValueError(f"attention_mask rows {empty.tolist()} have no real token (all padding)")
        if token_type_ids is None:
            token_type_ids = np.zeros(shape, np.int64)
        token_type_ids = np.asarray(token_type_ids)
        if not np.issubdtype(token_type_ids.dtype, np.integer):
            raise TypeError(f"token_type_ids must be integers, got {token_type_ids.dtype}")
        if token_type_ids.shape != shape:
            raise ValueError(f"token_type_ids has shape {token_type_ids.shape}, input has {shape}")
        if token_type_ids.size and (token_type_ids.min() < 0 or token_type_ids.max() >= c.type_vocab_size):
            raise ValueError(f"token_type_ids must lie in 0..{c.type_vocab_size - 1}")
        return input_ids, attention_mask, token_type_ids, inputs_embeds

    def _layer_masks(self, mask, kind):
        """Normalize a head or FFN mask to a list of L arrays (or Nones)."""
        L = self.config.num_hidden_layers
        widths = self.config.heads_per_layer if kind == "head_mask" else self.config.intermediate_per_layer
        if mask is None:
            return [None] * L
        if isinstance(mask, np.ndarray) and mask.ndim == 2:
            mask = list(mask)
        if len(mask) != L:
            raise ValueError(f"{kind} has {len(mask)} entries for {L} layers")
        out = []
        for i, m in enumerate(mask):
            if m is None:
                out.append(None)
                continue
            m = np.asarray(m, dtype=self.dtype)
            if m.shape != (widths[i],):
                raise ValueError(f"{kind} for layer {i} has shape {m.shape}, the layer has width ({widths[i]},)")
            out.append(m)
        return out

    # ------------------------------------------------------------------ forward
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, **kw):
        return self.forward(input_ids, attention_mask, token_type_ids, **kw)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, *, inputs_embeds=None,
                head_mask=None, ffn_mask=None, training=False, dropout=None, output_attentions=False,
                gradient_equilibrium=None, return_cache=False, max_layer=None, inference=None) -> ModelOutput:
        """Run the model; see docs/architecture.md for every argument.

        input_ids (B, T) int, attention_mask (B, T) 0/1, token_type_ids (B, T). `dropout` is a
        dropout source (``npcosteff.nn.dropout.Dropout``/``ReplayDropout``); with
        ``training=True`` and no source, masks are drawn with the config's probabilities from a
        fresh generator. `max_layer` (1-based) stops after that layer (early exit).
        `inference` selects the inference kernels (float32 GELU and softmax,
        npcosteff/kernels/inference.py); None: exactly when nothing can backpropagate
        (``training=False`` and no cache). ``inference=False`` keeps the correctly rounded
        kernels, as a teacher's targets in training do.
        """
        c = self.config
        input_ids, attention_mask, token_type_ids, inputs_embeds = self.check_inputs(
            input_ids, attention_mask, token_type_ids, inputs_embeds)
        head_masks = self._layer_masks(head_mask, "head_mask")
        ffn_masks = self._layer_masks(ffn_mask, "ffn_mask")
        if training and dropout is None:
            dropout = Dropout(np.random.default_rng(), c.hidden_dropout_prob, c.attention_probs_dropout_prob)
        if not training:
            dropout = None
        drop = (lambda site, shape: dropout.mask(site, shape, self.dtype)) if dropout is not None else \
            _no_dropout
        equilibrium = equilibrium_rule(gradient_equilibrium, training, len(c.exit_layers))
        if max_layer is not None and (not float(max_layer).is_integer()):
            raise ValueError(f"max_layer must be a whole layer number, got {max_layer}")
        L = c.num_hidden_layers if max_layer is None else int(max_layer)
        if not 1 <= L <= c.num_hidden_layers:
            raise ValueError(f"max_layer {max_layer} is outside 1..{c.num_hidden_layers}")

        additive_mask = self.additive_mask(attention_mask)                        # (B, 1, 1, T)
        h, word_cache, emb_cache = self.embed(input_ids, token_type_ids, inputs_embeds, drop)   # (B, T, d)
        hidden_states, logits, attentions, layer_caches, exit_caches = [h], [], [], [], {}
        exit_layers = []
        # Without a cache nothing will backpropagate: the layers may take the inference kernels.
        if inference is None:
            inference = not training and not return_cache
        elif inference and (training or return_cache):
            raise ValueError("inference=True runs the inference kernels, which have no backward: "
                             "it needs training=False and return_cache=False")
        for i in range(L):
            h, probs, layer_cache = self.run_layer(i, h, additive_mask, head_masks[i], ffn_masks[i], drop,
                                                   inference=inference)
            hidden_states.append(h)
            if output_attentions:
                attentions.append(probs)
            if return_cache:                       # inference keeps no caches alive
                layer_caches.append(layer_cache)
            if i in c.exit_layers:
                z, exit_cache = self.run_exit(i, h, attention_mask, drop)        # (B, C)
                if return_cache:
                    exit_caches[i] = exit_cache
                logits.append(z)
                exit_layers.append(i + 1)
        cache = None
        if return_cache:
            cache = ForwardCache(word_cache, emb_cache, layer_caches, exit_caches, L, tuple(exit_layers),
                                 equilibrium)
        return ModelOutput(tuple(hidden_states), tuple(logits), tuple(exit_layers),
                           tuple(attentions) if output_attentions else None, cache)

    # ------------------------------------------------------------------ forward, one step at a time
    # `forward` is these three steps in a loop; early exit (npcosteff.early_exit) calls them
    # directly so that it can drop finished samples between layers.
    def additive_mask(self, attention_mask):
        """attention_mask (B, T) 0/1 -> (B, 1, 1, T): 0 on real tokens, the most negative float on padding."""
        B, T = attention_mask.shape
        m = (1.0 - attention_mask.astype(self.dtype)) * np.finfo(self.dtype).min
        return m.reshape(B, 1, 1, T)

    def embed(self, input_ids, token_type_ids, inputs_embeds=None, drop=_no_dropout):
        """input_ids (B, T) or inputs_embeds (B, T, d) -> h_0 (B, T, d), word cache, embeddings cache."""
        c = self.config
        emb_p = Prefixed(self.params, "embeddings.")
        word_cache = None
        if inputs_embeds is None:
            inputs_embeds, word_cache = word_embeddings_forward(input_ids, emb_p)   # (B, T, d)
        B, T, d = inputs_embeds.shape
        h, emb_cache = embeddings_forward(inputs_embeds, token_type_ids, emb_p, c.layer_norm_eps,
                                          drop("embeddings", (B, T, d)))
        return h, word_cache, emb_cache

    def run_layer(self, i, h, additive_mask, head_mask=None, ffn_mask=None, drop=_no_dropout, inference=False):
        """Layer i (0-based): h (B, T, d) -> (h' (B, T, d), attention probs (B, H_i, T, T), cache).

        ``inference=True``: no backward will follow; GELU and the softmax take the inference
        kernels (float32 arithmetic for float32 models, npcosteff/kernels/inference.py) and
        the cache is None.
        """
        c = self.config
        B, T, d = h.shape
        H = c.heads_per_layer[i]
        attention_p = Prefixed(self.params, f"encoder.layer.{i}.attention.")
        ffn_p = Prefixed(self.params, f"encoder.layer.{i}.")
        probs_dropout = drop(f"layer.{i}.attention.probs", (B, H, T, T))
        attention_dropout = drop(f"layer.{i}.attention.output", (B, T, d))
        output_dropout = drop(f"layer.{i}.output", (B, T, d))
        if inference and probs_dropout is None and attention_dropout is None and output_dropout is None:
            # The speed path: the whole layer shared out over the cores when it has the work for
            # it (npcosteff/kernels/lanes_layer.py); None: it takes the plain pair below.
            shared = layer_forward_in_lanes(h, attention_p, ffn_p, H, c.attention_head_size, additive_mask,
                                            c.layer_norm_eps, head_mask=head_mask, ffn_mask=ffn_mask,
                                            flops=B * layer_flops(c, i, T)["total"])
            if shared is not None:
                return (*shared, None)
        a, probs, a_cache = attention_forward(h, attention_p, H, c.attention_head_size, additive_mask,
                                              c.layer_norm_eps, head_mask=head_mask, probs_dropout=probs_dropout,
                                              output_dropout=attention_dropout, inference=inference)
        h, f_cache = ffn_forward(a, ffn_p, c.layer_norm_eps, ffn_mask=ffn_mask, output_dropout=output_dropout,
                                 inference=inference)
        return h, probs, None if inference else LayerCache(a_cache, f_cache)

    def run_exit(self, i, h, attention_mask, drop=_no_dropout):
        """The exit after layer i (0-based): h (B, T, d) -> logits (B, C), cache."""
        B, T, d = h.shape
        return exit_forward(h, attention_mask, Prefixed(self.params, f"exits.{i}."), self.config.pooler,
                            drop(f"exit.{i}", (B, d)))

    # ------------------------------------------------------------------ backward
    def backward(self, cache, grad_hidden_states=None, grad_logits=None, grad_attentions=None):
        """Backpropagate upstream gradients; adds into ``self.grads``.

        grad_hidden_states: L+1 arrays (B, T, d) or Nones; grad_logits: one (B, C) per exit or
        Nones; grad_attentions: L arrays (B, H_l, T, T) or Nones. Returns the gradient of
        inputs_embeds (B, T, d), or None when no gradient reached the embeddings.
        """
        if cache is None:
            raise ValueError("backward needs the cache of a forward pass run with return_cache=True")
        c, P, G = self.config, self.params, self.grads
        L, exit_layers = cache.L, cache.exit_layers
        n_total = c.num_hidden_layers
        ghs = list(grad_hidden_states) if grad_hidden_states is not None else [None] * (L + 1)
        gz = list(grad_logits) if grad_logits is not None else [None] * len(exit_layers)
        ga = list(grad_attentions) if grad_attentions is not None else [None] * L
        if len(ghs) != L + 1 or len(gz) != len(exit_layers) or len(ga) != L:
            raise ValueError(f"expected {L + 1} hidden-state, {len(exit_layers)} logit and {L} attention "
                             f"gradients, got {len(ghs)}, {len(gz)} and {len(ga)}")
        # Upstream gradients take the model's dtype (a float64 loss must not promote a float32 pass).
        as_dtype = lambda g: None if g is None else np.asarray(g, dtype=self.dtype)
        ghs, gz, ga = [as_dtype(g) for g in ghs], [as_dtype(g) for g in gz], [as_dtype(g) for g in ga]
        B, T, d = _hidden_shape(cache, 0)
        for name, grads, shapes in (("grad_hidden_states", ghs, [(B, T, d)] * (L + 1)),
                                    ("grad_logits", gz, [(B, c.num_labels)] * len(exit_layers)),
                                    ("grad_attentions", ga, [(B, c.heads_per_layer[i], T, T) for i in range(L)])):
            for k, (g, shape) in enumerate(zip(grads, shapes)):
                if g is not None and np.shape(g) != shape:   # no silent broadcasting or reshaping
                    raise ValueError(f"{name}[{k}] has shape {np.shape(g)}, expected {shape}")
        exit_index = {layer - 1: k for k, layer in enumerate(exit_layers)}
        rule = cache.gradient_equilibrium               # None | "authors" | "exit_layers"
        g_deeper = None                                    # gradient reaching h_{i+1} from layer i+2
        for i in reversed(range(L)):
            l = i + 1                                      # 1-based layer number (docs/method.md, 2)
            g_exit = None
            if i in exit_index and gz[exit_index[i]] is not None:
                g_exit = exit_backward(gz[exit_index[i]], cache.exits[i], Prefixed(G, f"exits.{i}."))
            g_hid = ghs[l]                                 # a loss on h_l itself (hidden distillation)
            if l < n_total and (rule == "authors" or (rule == "exit_layers" and i in exit_index)):
                # Gradient equilibrium: the raw gradient of h_l is
                #   authors:     (g_exit + g_hid + (L-l) g_deeper) / (L-l+1)   at every layer l < L
                #   exit_layers: (g_exit + (L-l) g_deeper) / (L-l+1) + g_hid  at layers with an exit
                k = n_total - l
                g_exit = _scale(g_exit, 1.0 / (k + 1))
                g_deeper = _scale(g_deeper, k / (k + 1))
                if rule == "authors":
                    g_hid = _scale(g_hid, 1.0 / (k + 1))
            g = _add(_add(g_exit, g_deeper), g_hid)        # (B, T, d) or None
            if g is None and ga[i] is None:
                g_deeper = None                            # nothing upstream: no gradient below either
                continue
            if g is None:
                g = np.zeros(_hidden_shape(cache, i), self.dtype)   # only attention distillation reaches here
            a_cache, f_cache = cache.layers[i]
            lp = Prefixed(G, f"encoder.layer.{i}.")
            da = ffn_backward(g, f_cache, Prefixed(P, f"encoder.layer.{i}."), lp)
            g_deeper = attention_backward(da, a_cache, Prefixed(P, f"encoder.layer.{i}.attention."),
                                          Prefixed(G, f"encoder.layer.{i}.attention."), dprobs_extra=ga[i])
        g = _add(g_deeper, ghs[0])
        if g is None:
            return None
        emb_p, emb_g = Prefixed(P, "embeddings."), Prefixed(G, "embeddings.")
        d_inputs_embeds = embeddings_backward(g, cache.embeddings, emb_p, emb_g)
        if cache.word is not None:
            word_embeddings_backward(d_inputs_embeds, cache.word, emb_p, emb_g)
        return d_inputs_embeds

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, folder, tokenizer_file=None, extra_files=None):
        """Write config.json and model.safetensors (and a copy of tokenizer.json) atomically.

        The one writer of model folders: checkpoints add their own files through
        `extra_files` (name -> ``write(path)``), written into the same atomic folder, so a
        crash never leaves a half-written folder (``weights.save_folder``).
        """
        import shutil

        files = {
            "config.json": lambda p: W.write_text(p, self.config.to_json_string()),
            "model.safetensors": lambda p: W.write_safetensors(p, self.params, self.param_names,
                                                               metadata={"format": "pt"}),
        }
        if tokenizer_file is not None:
            files["tokenizer.json"] = lambda p: shutil.copyfile(tokenizer_file, p)
        files.update(extra_files or {})
        return W.save_folder(folder, files)

    @classmethod
    def from_pretrained(cls, path=None, dtype=np.float32, seed=0, **config_overrides) -> "CostEffModel":
        """Load a Hugging Face BERT folder (None: the packaged MiniLM).

        `config_overrides` set COST-EFF fields (e.g. ``num_labels=2``); exits that the
        checkpoint lacks are freshly initialized, every other tensor must be present.
        """
        from .pretrained import resolve_model_dir

        folder = resolve_model_dir(path)
        config = CostEffConfig.from_json(folder, **config_overrides)
        shapes = param_shapes(config)
        state = W.normalize_names(W.read_safetensors(os.path.join(folder, "model.safetensors")), shapes)
        _, missing_exits = W.check_state(state, shapes, allow_missing=("exits.",))
        params = {n: state[n] for n in shapes if n in state}
        params.update(init_params(config, dtype, seed, names=set(missing_exits)))
        if config.pooler == "dense":
            # A dense exit pooler the checkpoint lacks starts from BERT's own pretrained pooler,
            # when it has one (as BertForSequenceClassification and the authors' exits do).
            for name in missing_exits:
                source = "pooler." + name.split(".pooler.", 1)[1] if ".pooler." in name else None
                if source in state and tuple(state[source].shape) == tuple(shapes[name]):
                    params[name] = state[source]
        model = cls(config, params, dtype=dtype)
        model.source_dir = folder
        return model


def _scale(a, s):
    """a * s where None means zero."""
    return None if a is None else a * s


def _add(a, b):
    """a + b where None means zero (no copy when one side is None)."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _hidden_shape(cache, i):
    """(B, T, d) of layer i's output, read from its FFN cache."""
    return cache.layers[i].ffn.shape
