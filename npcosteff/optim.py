"""AdamW, the linear warmup/decay learning-rate schedule and gradient-norm clipping.

Everything here works on plain dictionaries ``name -> numpy array`` (the model's
``params`` and ``grads``) and reproduces the PyTorch / Hugging Face recipe that the
COST-EFF scripts use (docs/method.md, 6):

* :class:`AdamW` is ``torch.optim.AdamW`` (decoupled weight decay, bias-corrected moments)
  with two parameter groups: weight decay on matrices, none on biases and LayerNorm weights
  (:func:`no_decay`);
* :class:`LinearSchedule` is ``transformers.get_linear_schedule_with_warmup``;
* :func:`clip_grad_norm` is ``torch.nn.utils.clip_grad_norm_`` (global L2 norm).

A training step therefore reads::

    total_norm = clip_grad_norm(model.grads, max_norm=1.0)
    optimizer.step(model.grads, lr=schedule.lr_at(step))   # step = 0, 1, 2, ...
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import numpy as np

from . import kernels

__all__ = ["no_decay", "AdamW", "LinearSchedule", "clip_grad_norm"]


def no_decay(name: str) -> bool:
    """True for parameters that get no weight decay: biases and LayerNorm weights.

    This is the ``no_decay = ["bias", "LayerNorm.weight"]`` rule of the Hugging Face
    ``run_glue`` scripts that COST-EFF builds on.
    """
    return name.endswith(".bias") or "LayerNorm" in name


def _check_lr(lr) -> float:
    lr = float(lr)
    if not (math.isfinite(lr) and lr >= 0.0):
        raise ValueError(f"learning rate must be a finite number >= 0, got {lr}")
    return lr


def _check_scale(name: str, scale) -> float:
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"the learning-rate scale of {name!r} must be a finite number > 0, got {scale}")
    return scale


class AdamW:
    """``torch.optim.AdamW`` on a dictionary of NumPy arrays, updated in place.

    For every parameter ``p`` with gradient ``g``, at its ``t``-th step (t = 1, 2, ...)
    and learning rate ``lr``::

        p  *= 1 - lr * weight_decay                 # decoupled decay (0 for no_decay names)
        m   = beta1 * m + (1 - beta1) * g           # as torch: m.lerp_(g, 1 - beta1)
        v   = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v) / sqrt(1 - beta2**t) + eps  # eps after the bias correction
        p  -= lr / (1 - beta1**t) * m / denom

    which is ``torch.optim.adam._single_tensor_adam`` with ``decoupled_weight_decay=True``.

    Parameters
    ----------
    params : dict name -> float ndarray
        The arrays to update. The optimizer keeps the dictionary (not the arrays), so a
        parameter array that the owner replaces by one of the same shape is picked up.
    lr : float
        Default learning rate of :meth:`step` (a schedule usually passes its own).
    betas, eps, weight_decay :
        As in torch.
    no_decay : callable name -> bool
        Names for which ``weight_decay`` is 0 (default :func:`no_decay`).
    names : list of str, optional
        The ordered parameter names the optimizer manages; default ``list(params)``.
    lr_scale : callable name -> float, optional
        A factor on the learning rate per parameter (default 1 for all), e.g. a larger rate
        for the exits' classifiers than for the encoder they sit on.

    A parameter whose gradient is absent from the ``grads`` passed to :meth:`step` (or is
    ``None``) is skipped and its step count is not advanced, like a torch parameter whose
    ``.grad`` is ``None``.

    After pruning changes parameter shapes, call :meth:`rebuild` with the new dictionary:
    it starts a fresh optimizer state, as the COST-EFF scripts re-create their optimizer.
    """

    def __init__(self, params: dict, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, no_decay: Callable[[str], bool] = no_decay,
                 names: Optional[Iterable[str]] = None, lr_scale: Optional[Callable[[str], float]] = None):
        self.lr = _check_lr(lr)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for k, beta in enumerate(betas):
            if not 0.0 <= float(beta) < 1.0:
                raise ValueError(f"betas[{k}] = {beta} is outside [0, 1)")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        if not (math.isfinite(self.eps) and self.eps >= 0.0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        self.weight_decay = float(weight_decay)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0.0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
        self.no_decay = no_decay
        self.lr_scale = lr_scale
        self.rebuild(params, names)

    # ------------------------------------------------------------------ state
    def rebuild(self, params: dict, names: Optional[Iterable[str]] = None) -> None:
        """Point the optimizer at ``params`` and start from a fresh state.

        Use it after pruning has sliced the parameters (new shapes): moments and step
        counts are reset to zero; lr, betas, eps and weight decay are kept.
        """
        names = list(params) if names is None else list(names)
        if len(set(names)) != len(names):
            raise ValueError("names contains duplicates")
        for name in names:
            if name not in params:
                raise KeyError(f"names lists {name!r}, which is not in params")
            p = params[name]
            if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.floating):
                raise TypeError(f"parameter {name!r} must be a floating-point ndarray, "
                                f"got {type(p).__name__} {getattr(p, 'dtype', '')}")
        self.params = params
        self.names = names
        self.decay = {name: 0.0 if self.no_decay(name) else self.weight_decay for name in names}
        self.scale = {name: 1.0 if self.lr_scale is None else _check_scale(name, self.lr_scale(name))
                      for name in names}                     # each parameter's lr = lr * scale
        self.step_count = {name: 0 for name in names}       # per parameter, as torch's state["step"]
        self.exp_avg = {name: np.zeros_like(params[name]) for name in names}      # m
        self.exp_avg_sq = {name: np.zeros_like(params[name]) for name in names}   # v
        self.num_steps = 0                                   # calls of step(), for resuming a schedule
        self._scratch = {}                                   # dtype -> flat work buffer

    def state_dict(self) -> dict:
        """Copies of the step counts and moments by name, and the number of steps taken."""
        return {
            "num_steps": self.num_steps,
            "step": dict(self.step_count),
            "exp_avg": {name: m.copy() for name, m in self.exp_avg.items()},
            "exp_avg_sq": {name: v.copy() for name, v in self.exp_avg_sq.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (same names and shapes as the current parameters)."""
        for key in ("num_steps", "step", "exp_avg", "exp_avg_sq"):
            if key not in state:
                raise KeyError(f"optimizer state has no {key!r}")
        for key in ("step", "exp_avg", "exp_avg_sq"):
            missing = [n for n in self.names if n not in state[key]]
            extra = [n for n in state[key] if n not in self.step_count]
            if missing or extra:
                raise KeyError(f"optimizer state {key!r} does not match the parameters: "
                               f"missing {missing[:5]}, unknown {extra[:5]}")
        for name in self.names:
            shape = self.params[name].shape
            for key in ("exp_avg", "exp_avg_sq"):
                got = np.shape(state[key][name])
                if got != shape:
                    raise ValueError(f"optimizer state {key}[{name!r}] has shape {got}, "
                                     f"the parameter has shape {shape}")
        self.num_steps = int(state["num_steps"])
        for name in self.names:
            dtype = self.params[name].dtype
            self.step_count[name] = int(state["step"][name])
            self.exp_avg[name] = np.array(state["exp_avg"][name], dtype=dtype, copy=True)
            self.exp_avg_sq[name] = np.array(state["exp_avg_sq"][name], dtype=dtype, copy=True)

    # ------------------------------------------------------------------ update
    def _work(self, dtype, shape) -> np.ndarray:
        """A reusable buffer of ``shape``: the one temporary the update needs."""
        size = math.prod(shape)
        buf = self._scratch.get(dtype)
        if buf is None or buf.size < size:
            buf = self._scratch[dtype] = np.empty(size, dtype=dtype)
        return buf[:size].reshape(shape)

    def _check_grads(self, grads: dict) -> None:
        for name, g in grads.items():
            if name not in self.step_count:
                where = "params" if name not in self.params else "the optimizer's names"
                raise KeyError(f"gradient for {name!r}, which is not in {where}")
            if g is None:
                continue
            p = self.params[name]
            if np.shape(g) != p.shape:
                raise ValueError(f"gradient for {name!r} has shape {np.shape(g)}, "
                                 f"the parameter has shape {p.shape}")
            if self.exp_avg[name].shape != p.shape:
                raise ValueError(f"parameter {name!r} changed shape from {self.exp_avg[name].shape} "
                                 f"to {p.shape}: call rebuild() after pruning")

    def step(self, grads: dict, lr: Optional[float] = None) -> None:
        """One AdamW update of every parameter that has a gradient in ``grads``, in place."""
        lr = self.lr if lr is None else _check_lr(lr)
        self._check_grads(grads)   # all checks first: a bad gradient changes nothing
        beta1, beta2 = self.betas
        for name in self.names:
            g = grads.get(name)
            if g is None:
                continue
            p, m, v = self.params[name], self.exp_avg[name], self.exp_avg_sq[name]
            self.step_count[name] += 1
            t = self.step_count[name]
            # The arithmetic, in torch's order, is npcosteff.kernels.reference.adamw_update; the
            # fast kernels do it in one compiled pass over p, g, m and v, with the same bits.
            kernels.adamw_update(p, g, m, v, lr=lr * self.scale[name], weight_decay=self.decay[name],
                                 beta1=beta1, beta2=beta2,
                                 eps=self.eps, step=t, work=self._work(p.dtype, p.shape))
        self.num_steps += 1


class LinearSchedule:
    """Linear warmup from 0 to ``base_lr``, then linear decay to 0 at ``total_steps``.

    ``lr_at(step)`` is ``base_lr * factor(step)`` with the factor of
    ``transformers.get_linear_schedule_with_warmup`` (a ``LambdaLR``)::

        factor(k) = k / max(1, warmup_steps)                                   if k < warmup_steps
                  = max(0, (total_steps - k) / max(1, total_steps - warmup_steps))   otherwise

    The learning rate of optimizer step k (0-based) is ``lr_at(k)``. For a restart (the
    slenderization schedule raises the learning rate after each prune, docs/method.md, 5), set
    ``base_lr`` (and the step counts) to new values and count steps from 0 again.
    """

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int):
        self.base_lr = base_lr
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if self.total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {total_steps}")

    @classmethod
    def from_ratio(cls, base_lr: float, total_steps: int, warmup_ratio: float = 0.1) -> "LinearSchedule":
        """Warmup over ``ceil(warmup_ratio * total_steps)`` steps, as Hugging Face's ``warmup_ratio``."""
        if not 0.0 <= warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio {warmup_ratio} is outside [0, 1]")
        return cls(base_lr, math.ceil(total_steps * warmup_ratio), total_steps)

    @property
    def base_lr(self) -> float:
        return self._base_lr

    @base_lr.setter
    def base_lr(self, value: float) -> None:
        self._base_lr = _check_lr(value)

    def factor(self, step: int) -> float:
        """The multiplier of ``base_lr`` at ``step`` (0-based)."""
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return float(step) / float(max(1, self.warmup_steps))
        return max(0.0, float(self.total_steps - step)
                   / float(max(1, self.total_steps - self.warmup_steps)))

    def lr_at(self, step: int) -> float:
        """Learning rate of the optimizer step numbered ``step`` (0-based)."""
        return self.base_lr * self.factor(step)


def clip_grad_norm(grads: dict, max_norm: float, names: Optional[Iterable[str]] = None,
                   error_if_nonfinite: bool = False) -> float:
    """Scale gradients in place so that their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: ``total_norm`` is the L2 norm of all gradients
    seen as one vector; every gradient is multiplied by
    ``min(1, max_norm / (total_norm + 1e-6))`` (so only when it is < 1 does anything change).
    ``names`` picks the gradients (default: all); ``None`` entries are skipped. A non-finite
    total norm raises ``FloatingPointError`` when ``error_if_nonfinite``; otherwise, as in
    torch, the gradients are scaled by the resulting NaN or 0 coefficient.

    Returns the total norm before clipping.
    """
    max_norm = float(max_norm)
    if not max_norm > 0.0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    if names is None:
        names = list(grads)
    else:
        names = list(names)
        unknown = [n for n in names if n not in grads]
        if unknown:
            raise KeyError(f"no gradient named {unknown[0]!r}")
    arrays = [grads[n] for n in names if grads[n] is not None]
    if not arrays:
        return 0.0
    # The norm of the per-tensor norms, as torch (same value as one flat norm, up to rounding).
    norms = np.array([np.linalg.norm(np.ravel(g)) for g in arrays], dtype=np.float64)
    total_norm = float(np.linalg.norm(norms))
    if error_if_nonfinite and not math.isfinite(total_norm):
        raise FloatingPointError(f"the total gradient norm is {total_norm}, it cannot be clipped")
    clip_coef = max_norm / (total_norm + 1e-6)
    if not clip_coef >= 1.0:                 # written so that a NaN coefficient propagates, as torch.clamp

        for g in arrays:
            g *= clip_coef
    return total_norm
