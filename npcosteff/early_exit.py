"""Early exit: each sample leaves at the first exit confident enough (docs/method.md, 7).

Criteria:

* ``entropy`` (COST-EFF): leave at exit l when the entropy ``-sum p log p`` of its softmax is
  below the threshold tau_l (one tau, or one per exit). tau = 0 never exits early.
* ``max_prob``: leave when the largest probability exceeds the threshold (1 never exits early).
* ``patience`` (PABEE): leave when the prediction has stayed the same over `patience`
  consecutive exits after the first (for regression: within `regression_tolerance`).

Samples leave one by one inside a batch: after every exit the finished samples are dropped
and the remaining batch is cut to its longest remaining sequence, so the deeper layers run on
fewer, shorter rows. Predictions and exit layers are the same as with batch size 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .losses import entropy as exit_entropy

CRITERIA = ("entropy", "max_prob", "patience")


@dataclass
class EarlyExitResult:
    """Per-sample outcome of an early-exit pass over N samples."""
    logits: np.ndarray            # (N, C) logits of the exit each sample left at
    exit_layers: np.ndarray       # (N,) 1-based layer of that exit
    n_tokens: np.ndarray          # (N,) non-padding tokens of each sample
    num_layers: int               # L of the model
    per_exit_entropy: dict = field(default_factory=dict)   # layer -> (N,) entropies where computed (nan elsewhere)

    @property
    def expected_speedup(self) -> float:
        """L * N / sum(exit layers), docs/method.md, 7."""
        return self.num_layers * len(self.exit_layers) / float(self.exit_layers.sum())

    def exit_histogram(self) -> np.ndarray:
        """(L,) number of samples that left at each layer 1..L."""
        return np.bincount(self.exit_layers, minlength=self.num_layers + 1)[1:]


def _validate(model, criterion, threshold, patience, exit_start):
    c = model.config
    if c.num_labels == 0:
        raise ValueError("early exit needs a model with exits (num_labels > 0)")
    if criterion not in CRITERIA:
        raise ValueError(f"unknown early-exit criterion {criterion!r}; choose one of {CRITERIA}")
    exit_start = c.exit_start if exit_start is None else int(exit_start)
    if not c.exit_start <= exit_start <= c.num_hidden_layers:
        raise ValueError(f"exit_start {exit_start} is outside {c.exit_start}..{c.num_hidden_layers}: "
                         f"the model has exits at layers {c.exit_start}..{c.num_hidden_layers}")
    exits = [i + 1 for i in c.exit_layers if i + 1 >= exit_start]
    if criterion == "patience":
        if patience is None or int(patience) != patience or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience}")
        return exits, exit_start, None
    if c.is_regression:
        raise ValueError(f"criterion {criterion!r} needs class probabilities; regression tasks use 'patience'")
    tau = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(exits),)) \
        if np.ndim(threshold) == 0 else np.asarray(threshold, dtype=np.float64)
    if tau.shape != (len(exits),):
        raise ValueError(f"{len(tau)} thresholds given for {len(exits)} exits (layers {exits})")
    if np.any(tau < 0) or not np.all(np.isfinite(tau)):
        raise ValueError(f"thresholds must be finite and >= 0, got {tau.tolist()}")
    return exits, exit_start, dict(zip(exits, tau))


def early_exit_forward(model, input_ids, attention_mask=None, token_type_ids=None, *, criterion="entropy",
                       threshold=0.0, patience=None, exit_start=None, regression_tolerance=0.1,
                       shrink_tokens=True) -> EarlyExitResult:
    """Run one batch with per-sample early exit. input_ids, attention_mask, token_type_ids (B, T)."""
    exits, exit_start, tau = _validate(model, criterion, threshold, patience, exit_start)
    input_ids, attention_mask, token_type_ids, _ = model.check_inputs(input_ids, attention_mask,
                                                                       token_type_ids, None)
    c = model.config
    B = input_ids.shape[0]
    if np.any(attention_mask[:, 1:] > attention_mask[:, :-1]):
        raise ValueError("early exit expects right padding (attention_mask of 1s then 0s per row)")
    lengths = attention_mask.sum(axis=1).astype(np.int64)                    # (B,)
    C = c.num_labels
    out_logits = np.zeros((B, C), model.dtype)
    out_layers = np.zeros(B, np.int64)
    entropies = {}

    active = np.arange(B)                                                    # rows still running
    h, _, _ = model.embed(input_ids, token_type_ids)                         # (B, T, d)
    mask = attention_mask
    additive = model.additive_mask(mask)                                     # (B, 1, 1, T)
    prev_pred = None                                                         # patience bookkeeping
    streak = np.zeros(B, np.int64)
    for i in range(c.num_hidden_layers):
        h, _, _ = model.run_layer(i, h, additive, inference=True)            # (b, t, d)
        layer = i + 1
        if layer not in exits:
            continue
        z, _ = model.run_exit(i, h, mask)                                    # (b, C)
        last = layer == c.num_hidden_layers
        if criterion == "entropy":
            ent = exit_entropy(z)                                            # (b,)
            e_all = np.full(B, np.nan)
            e_all[active] = ent
            entropies[layer] = e_all
            leave = ent < tau[layer]
        elif criterion == "max_prob":
            zs = z - z.max(axis=1, keepdims=True)
            p_max = 1.0 / np.exp(zs).sum(axis=1)                             # the top class has zs = 0
            leave = p_max > tau[layer]
        else:
            pred = z[:, 0] if c.is_regression else z.argmax(axis=1)
            if prev_pred is not None:
                same = (np.abs(pred - prev_pred) < regression_tolerance) if c.is_regression else pred == prev_pred
                streak = np.where(same, streak + 1, 0)
            leave = streak >= patience
            prev_pred = pred
        if last:
            leave = np.ones(len(active), bool)
        if leave.any():
            out_logits[active[leave]] = z[leave]
            out_layers[active[leave]] = layer
            keep = ~leave
            active = active[keep]
            if active.size == 0:
                break
            h, mask = h[keep], mask[keep]
            if criterion == "patience":
                streak, prev_pred = streak[keep], prev_pred[keep]
            if shrink_tokens:                                                # cut trailing padding
                t = int(lengths[active].max())
                h, mask = h[:, :t], mask[:, :t]
            h = np.ascontiguousarray(h)
            additive = model.additive_mask(mask)
    return EarlyExitResult(out_logits, out_layers, lengths, c.num_hidden_layers, entropies)


def early_exit_predict(model, batches, **kw) -> EarlyExitResult:
    """Early exit over an iterable of batches (dicts with input_ids, attention_mask,
    token_type_ids); results are concatenated in order."""
    parts = [early_exit_forward(model, b["input_ids"], b.get("attention_mask"), b.get("token_type_ids"), **kw)
             for b in batches]
    if not parts:
        raise ValueError("no batches to run")
    layers = sorted({k for p in parts for k in p.per_exit_entropy})
    ent = {k: np.concatenate([p.per_exit_entropy.get(k, np.full(len(p.exit_layers), np.nan)) for p in parts])
           for k in layers}
    return EarlyExitResult(np.concatenate([p.logits for p in parts]),
                           np.concatenate([p.exit_layers for p in parts]),
                           np.concatenate([p.n_tokens for p in parts]), parts[0].num_layers, ent)
