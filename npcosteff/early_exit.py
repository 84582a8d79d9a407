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

:class:`ExitRule` is the one place the criteria are written: live early exit here and its
offline replay on stored logits (`npcosteff.operating_point.simulate_exit`) both ask it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .losses import entropy as exit_entropy

CRITERIA = ("entropy", "max_prob", "patience")

# The sweep's default entropy thresholds: 0 never exits early; ln 2 = 0.69 is the largest
# entropy of two classes.
DEFAULT_ENTROPY_THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def default_thresholds(criterion: str) -> tuple:
    """The sweep's default thresholds for an early-exit criterion.

    entropy: ``DEFAULT_ENTROPY_THRESHOLDS``; max_prob: from 1 (never exits early) down to 0.5;
    patience: the number of consecutive exits that must agree (PABEE).
    """
    if criterion == "entropy":
        return tuple(DEFAULT_ENTROPY_THRESHOLDS)
    if criterion == "max_prob":
        return (1.0, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
    if criterion == "patience":
        return (1, 2, 3, 4, 5)
    raise ValueError(f"unknown early-exit criterion {criterion!r}; choose one of {CRITERIA}")


class ExitRule:
    """Which samples leave at an exit, exit after exit, for one pass over a batch.

    Call :meth:`leave` at each exit, shallowest first, with that exit's logits of the samples
    still running; after dropping the samples that left, call :meth:`keep` so that patience's
    running state follows the remaining rows (a replay that keeps every row need not).
    """

    def __init__(self, criterion="entropy", patience=None, regression=False, regression_tolerance=0.1):
        if criterion not in CRITERIA:
            raise ValueError(f"unknown early-exit criterion {criterion!r}; choose one of {CRITERIA}")
        self.criterion, self.patience = criterion, patience
        self.regression, self.regression_tolerance = regression, regression_tolerance
        self.entropy = None          # (b,) the last exit's entropies (entropy criterion)
        self._prev = None            # (b,) the previous exit's predictions (patience)
        self._streak = None          # (b,) consecutive agreeing exits so far (patience)

    def leave(self, z: np.ndarray, threshold=None) -> np.ndarray:
        """z (b, C): one exit's logits -> (b,) True where the sample leaves here.

        entropy: the entropy of softmax(z) is below `threshold`; max_prob: the largest
        probability is above it; patience: the prediction has agreed with the previous exits'
        `patience` times in a row (regression: within `regression_tolerance`)."""
        if self.criterion == "entropy":
            self.entropy = exit_entropy(z)                                   # (b,)
            return self.entropy < threshold
        if self.criterion == "max_prob":
            zs = z - z.max(axis=1, keepdims=True)
            return 1.0 / np.exp(zs).sum(axis=1) > threshold                  # the top class has zs = 0
        pred = z[:, 0] if self.regression else z.argmax(axis=1)              # (b,)
        if self._prev is None:
            self._streak = np.zeros(len(pred), np.int64)
        else:
            same = np.abs(pred - self._prev) < self.regression_tolerance if self.regression else pred == self._prev
            self._streak = np.where(same, self._streak + 1, 0)
        self._prev = pred
        return self._streak >= self.patience

    def keep(self, rows: np.ndarray) -> None:
        """Keep the running state of `rows` only (a boolean mask or indices of the samples left)."""
        if self._prev is not None:
            self._prev, self._streak = self._prev[rows], self._streak[rows]


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
    rule = ExitRule(criterion, patience, c.is_regression, regression_tolerance)
    for i in range(c.num_hidden_layers):
        h, _, _ = model.run_layer(i, h, additive, inference=True)            # (b, t, d)
        layer = i + 1
        if layer not in exits:
            continue
        z, _ = model.run_exit(i, h, mask)                                    # (b, C)
        last = layer == c.num_hidden_layers
        leave = rule.leave(z, None if tau is None else tau[layer])          # (b,)
        if criterion == "entropy":
            entropies[layer] = np.full(B, np.nan)
            entropies[layer][active] = rule.entropy
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
            rule.keep(keep)
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
