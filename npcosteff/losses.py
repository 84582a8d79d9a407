"""COST-EFF training losses (docs/method.md, 3 and 4), each with a hand-written backward.

Every loss is a pair::

    value, cache = xxx_loss(student_output, teacher_output_or_label, ...)
    grad = xxx_loss_backward(cache, dloss=1.0)

``value`` is a Python float, ``grad`` the gradient of ``dloss * value`` with respect to the
student's output (logits, hidden states or attention probabilities), in the student's
dtype. Teacher outputs and labels are constants. Probabilities are always taken from
:func:`log_softmax`, so a probability of exactly 0 never produces ``0 * log 0 = NaN``.

Definitions (b runs over the batch of size B, m is the attention mask (B, T) with 1 for a
real token and 0 for padding, n_b = sum_t m[b, t]):

* ``cross_entropy(z, y) = mean_b( -log_softmax(z)[b, y_b] )``
* ``mse(z, y) = mean_b( (z[b, 0] - y_b)^2 )``
* ``soft_cross_entropy(z, t, T) = mean_b( -sum_c softmax(t/T)[b, c] log_softmax(z/T)[b, c] )``
* ``hidden_mse(hs, ht, m) = mean_b( sum_t m[b, t] mean_j (hs - ht)[b, t, j]^2 / n_b )``
* ``attention_mse(ps, pt, m) = mean_b( sum_{q,k} m[b,q] m[b,k] (a_s - a_t)[b,q,k]^2 / n_b )``
  with head-averaged maps ``a = mean_h probs``.

:mod:`npcosteff.objectives` sums these over exits and layers and combines them as the
training stages of COST-EFF require (``hidden``, ``pred``, ``pred_ta``, ``hard``, ``importance``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = [
    "log_softmax",
    "entropy",
    "cross_entropy_loss",
    "cross_entropy_loss_backward",
    "mse_loss",
    "mse_loss_backward",
    "soft_cross_entropy_loss",
    "soft_cross_entropy_loss_backward",
    "hidden_mse_loss",
    "hidden_mse_loss_backward",
    "attention_mse_loss",
    "attention_mse_loss_backward",
]



# --------------------------------------------------------------------------- validation

def _float_array(x, name: str, ndim: int, layout: str) -> np.ndarray:
    """``x`` as a floating array with ``ndim`` dimensions, or a ValueError naming it."""
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (shape {x.shape})")
    return x


def _upstream(dloss) -> float:
    """The upstream gradient as a Python float (a weak scalar: keeps float32 as float32)."""
    if np.ndim(dloss) != 0:
        raise ValueError(f"dloss must be a scalar, got shape {np.shape(dloss)}")
    return float(dloss)


def check_temperature(temperature) -> float:
    if np.ndim(temperature) != 0 or not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_teacher_logits(t: np.ndarray, name: str) -> None:
    """Teacher logits may hold -inf (a probability of exactly 0) but no NaN or +inf, and
    every row needs one finite entry, otherwise softmax(t) is undefined."""
    if np.isnan(t).any() or np.isposinf(t).any():
        raise ValueError(f"{name} contains NaN or +inf")
    if not np.isfinite(t.max(axis=-1)).all():
        raise ValueError(f"{name} has a row with no finite entry (all -inf)")


def _mask_weights(attention_mask, batch: int, tokens: int, dtype, name: str) -> np.ndarray:
    """The attention mask (B, T) as 0/1 values of ``dtype``; all ones when None."""
    if attention_mask is None:
        return np.ones((batch, tokens), dtype=dtype)
    m = np.asarray(attention_mask)
    if m.shape != (batch, tokens):
        raise ValueError(
            f"attention_mask must have shape (B, T) = {(batch, tokens)} to match {name}, "
            f"got shape {m.shape}")
    if not ((m == 0) | (m == 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    m = m.astype(dtype)                                            # (B, T)
    empty = np.flatnonzero(m.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(
            f"attention_mask has no non-padding token in sample(s) {empty.tolist()}: "
            f"n_b = 0 cannot normalize the loss")
    return m


# --------------------------------------------------------------------------- softmax helpers

def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable ``log softmax(z)`` along ``axis``.

    The row maximum is subtracted first, so ``exp`` never overflows and the largest entry
    contributes ``exp(0) = 1`` to the normalizer (whose log is then finite). Entries equal to
    -inf give -inf (probability 0), not NaN, as long as the row has one finite entry.
    """
    z = np.asarray(z)
    shifted = z - np.max(z, axis=axis, keepdims=True)             # (..., C), max entry 0
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def entropy(z: np.ndarray) -> np.ndarray:
    """Entropy ``-sum_c p_c log p_c`` of ``p = softmax(z)`` for each row of z (B, C) -> (B,).

    Used by early exit (an exit answers when its entropy is below a threshold). Terms with
    ``p_c = 0`` contribute 0 (the limit of ``p log p``), never NaN.
    """
    z = _float_array(z, "z", 2, "(B, C)")
    logp = log_softmax(z)                                         # (B, C)
    p = np.exp(logp)                                              # (B, C)
    plogp = np.multiply(p, logp, out=np.zeros_like(p), where=p > 0)  # 0 where p = 0
    return -plogp.sum(axis=1)                                     # (B,)


# --------------------------------------------------------------------------- hard losses

def cross_entropy_loss(z: np.ndarray, y: np.ndarray):
    """Cross-entropy with integer labels: ``mean_b( -log_softmax(z)[b, y_b] )``.

    z (B, C) logits, y (B,) integer labels in 0..C-1. Returns ``(value, cache)``.
    """
    z = _float_array(z, "logits", 2, "(B, C)")
    batch, num_labels = z.shape
    y = np.asarray(y)
    if y.shape != (batch,):
        raise ValueError(
            f"labels must have shape (B,) = ({batch},) to match logits {z.shape}, "
            f"got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers for cross-entropy, got dtype {y.dtype}")
    if (y < 0).any() or (y >= num_labels).any():
        raise ValueError(
            f"labels must lie in 0..{num_labels - 1} (C = {num_labels}), "
            f"got values from {y.min()} to {y.max()}")
    logp = log_softmax(z)                                         # (B, C)
    nll = -logp[np.arange(batch), y]                              # (B,)
    return float(nll.mean()), (logp, y)


def cross_entropy_loss_backward(cache, dloss: float = 1.0) -> np.ndarray:
    """Gradient of ``dloss * cross_entropy`` w.r.t. the logits: ``(softmax(z) - onehot(y)) / B``."""
    logp, y = cache                                               # (B, C), (B,)
    batch = logp.shape[0]
    dz = np.exp(logp)                                             # (B, C) softmax(z), a new array
    dz[np.arange(batch), y] -= 1.0
    dz *= _upstream(dloss) / batch
    return dz


def mse_loss(z: np.ndarray, y: np.ndarray):
    """Regression loss ``mean_b( (z[b, 0] - y_b)^2 )``; z (B, 1), y (B,) float targets."""
    z = _float_array(z, "logits", 2, "(B, 1)")
    batch = z.shape[0]
    if z.shape[1] != 1:
        raise ValueError(f"logits must have shape (B, 1) for regression, got shape {z.shape}")
    y = np.asarray(y)
    if y.shape != (batch,):
        raise ValueError(
            f"targets must have shape (B,) = ({batch},) to match logits {z.shape}, "
            f"got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"targets must be numbers, got dtype {y.dtype}")
    diff = z[:, 0] - y.astype(z.dtype)                            # (B,)
    return float(np.mean(diff * diff)), (diff,)


def mse_loss_backward(cache, dloss: float = 1.0) -> np.ndarray:
    """Gradient of ``dloss * mse`` w.r.t. z (B, 1): ``2 (z[:, 0] - y) / B``."""
    (diff,) = cache                                               # (B,)
    batch = diff.shape[0]
    return (diff * (2.0 * _upstream(dloss) / batch))[:, None]     # (B, 1)


# --------------------------------------------------------------------------- prediction distillation

def soft_cross_entropy_loss(z: np.ndarray, t: np.ndarray, temperature: float = 1.0):
    """Prediction distillation ``mean_b( -sum_c softmax(t/T)[b,c] log_softmax(z/T)[b,c] )``.

    z (B, C) student logits, t (B, C) teacher logits (a constant; -inf entries allowed, they
    are probabilities of exactly 0), T the temperature. No ``T^2`` factor (docs/method.md, 3).
    """
    T = check_temperature(temperature)
    z = _float_array(z, "logits", 2, "(B, C)")
    t = np.asarray(t)
    if t.shape != z.shape:
        raise ValueError(
            f"teacher logits must have the student's shape {z.shape}, got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.floating):
        raise ValueError(f"teacher logits must be floating-point, got dtype {t.dtype}")
    _check_teacher_logits(t, "teacher logits")
    log_q = log_softmax(z / T)                                    # (B, C) student
    p = np.exp(log_softmax(t.astype(z.dtype) / T))                # (B, C) teacher, exact 0s kept
    per_sample = -(p * log_q).sum(axis=1)                         # (B,) log_q finite: 0 * x = 0
    return float(per_sample.mean()), (log_q, p, T)


def soft_cross_entropy_loss_backward(cache, dloss: float = 1.0) -> np.ndarray:
    """Gradient w.r.t. the student logits: ``(softmax(z/T) - softmax(t/T)) / (B T)``.

    Follows from ``d/dz_c -sum_k p_k log q_k = (q_c sum_k p_k - p_c) / T`` and ``sum_k p_k = 1``.
    """
    log_q, p, T = cache                                           # (B, C), (B, C), scalar
    batch = log_q.shape[0]
    return (np.exp(log_q) - p) * (_upstream(dloss) / (batch * T))  # (B, C)


# --------------------------------------------------------------------------- representation distillation

def hidden_mse_loss(hs: np.ndarray, ht: np.ndarray, attention_mask: Optional[np.ndarray] = None,
                    pad_to: Optional[int] = None):
    """Hidden-state distillation ``mean_b( sum_t m[b,t] mean_j (hs - ht)[b,t,j]^2 / n_b )``.

    hs (B, T, d) student hidden states, ht (B, T, d) the teacher's (a constant),
    attention_mask (B, T) of 0/1 (None: no padding). Each sample is normalized by its own
    number of tokens n_b, so padding neither adds error nor dilutes it.

    With ``pad_to`` (>= T) every sample is divided by ``pad_to`` instead of n_b: the plain
    mean squared error over a batch padded to ``pad_to`` tokens with padding zeroed, which is
    how the importance loss of the authors' code measures it (docs/method.md, 4).
    """
    hs = _float_array(hs, "student hidden states", 3, "(B, T, d)")
    ht = np.asarray(ht)
    if ht.shape != hs.shape:
        raise ValueError(
            f"teacher hidden states must have the student's shape (B, T, d) = {hs.shape}, "
            f"got shape {ht.shape}")
    batch, tokens, hidden = hs.shape
    m = _mask_weights(attention_mask, batch, tokens, hs.dtype, "hidden states")  # (B, T)
    if pad_to is None:
        token_weight = m / m.sum(axis=1, keepdims=True)           # (B, T) m[b, t] / n_b
    else:
        if pad_to < tokens:
            raise ValueError(f"pad_to {pad_to} is shorter than the batch's {tokens} tokens")
        token_weight = m / float(pad_to)                          # (B, T) m[b, t] / pad_to
    diff = hs - ht.astype(hs.dtype)                               # (B, T, d)
    per_token = np.mean(diff * diff, axis=2)                      # (B, T) mean over features j
    per_sample = np.sum(per_token * token_weight, axis=1)         # (B,)
    return float(per_sample.mean()), (diff, token_weight)


def hidden_mse_loss_backward(cache, dloss: float = 1.0) -> np.ndarray:
    """Gradient w.r.t. hs (B, T, d): ``2 (hs - ht) m[b,t] / (n_b d B)``."""
    diff, token_weight = cache                                    # (B, T, d), (B, T)
    batch, _, hidden = diff.shape
    scale = token_weight * (2.0 * _upstream(dloss) / (hidden * batch))  # (B, T)
    return diff * scale[:, :, None]                               # (B, T, d)


def attention_mse_loss(ps: np.ndarray, pt: np.ndarray, attention_mask: Optional[np.ndarray] = None):
    """Attention-map distillation on head-averaged maps ``a = mean_h probs``:
    ``mean_b( sum_{q,k} m[b,q] m[b,k] (a_s - a_t)[b,q,k]^2 / n_b )``.

    ps (B, H_s, T, T) student attention probabilities, pt (B, H_t, T, T) the teacher's (a
    constant); the head counts may differ because the maps are averaged over heads first.
    Query and key positions that are padding are left out.
    """
    ps = _float_array(ps, "student attentions", 4, "(B, H_s, T, T)")
    pt = np.asarray(pt)
    batch, heads, tokens, keys = ps.shape
    if tokens != keys:
        raise ValueError(f"student attentions must be square in (T, T), got shape {ps.shape}")
    if heads == 0:
        raise ValueError(f"student attentions have no heads (shape {ps.shape})")
    if pt.ndim != 4 or pt.shape[0] != batch or pt.shape[2:] != (tokens, tokens) or pt.shape[1] == 0:
        raise ValueError(
            f"teacher attentions must have shape (B, H_t, T, T) with (B, T) = {(batch, tokens)} "
            f"as the student's {ps.shape}, got shape {pt.shape}")
    m = _mask_weights(attention_mask, batch, tokens, ps.dtype, "attentions")  # (B, T)
    n = m.sum(axis=1)                                             # (B,) n_b
    pair_weight = m[:, :, None] * m[:, None, :] / n[:, None, None]  # (B, T, T) m_q m_k / n_b
    diff = ps.mean(axis=1) - pt.astype(ps.dtype).mean(axis=1)      # (B, T, T) a_s - a_t
    per_sample = np.sum(pair_weight * diff * diff, axis=(1, 2))   # (B,)
    return float(per_sample.mean()), (diff, pair_weight, heads)


def attention_mse_loss_backward(cache, dloss: float = 1.0) -> np.ndarray:
    """Gradient w.r.t. ps (B, H_s, T, T): every head receives ``2 w (a_s - a_t) / (H_s B)``,
    w = m_q m_k / n_b, because ``a_s`` is the mean of the H_s heads."""
    diff, pair_weight, heads = cache                              # (B, T, T), (B, T, T), H_s
    batch = diff.shape[0]
    per_map = pair_weight * diff * (2.0 * _upstream(dloss) / (heads * batch))  # (B, T, T)
    return np.repeat(per_map[:, None], heads, axis=1)             # (B, H_s, T, T), a fresh array
