"""Checks for the exercises of the tutorial notebooks.

Each ``check_*`` function calls a learner's function on random inputs (with a random upstream
gradient, never ones: with a gradient of ones a transposed or mis-summed result can still
pass), compares what it returns with the library's plain NumPy code or with central finite
differences, prints a one-line verdict and returns True. When something is wrong it raises
an AssertionError that says which output is wrong, how large the error is, where it is
largest and what shape was expected; when a learner's function still raises
NotImplementedError (the stub as handed out), the check says so and returns False, so that
the rest of the notebook still runs.

    check_softmax_backward(fn)    fn(dP, P) -> dS
    check_attention_backward(fn)  fn(dO, Q, K, V, P) -> (dQ, dK, dV)
    check_entropy_exit(fn)        fn(logits, tau) -> exit layers (N,), 1-based
    check_head_scores(fn)         fn(W_O, grads, num_heads) -> (H,)
    check_flops(fn)               fn(n, d, A, F) -> FLOPs of one layer
    check_gradient(forward, backward, inputs)   any backward, by finite differences

Everything is computed in float64, so the tolerances only have to absorb rounding.
"""

from __future__ import annotations

import math

import numpy as np

from .config import CostEffConfig
from .early_exit import early_exit_forward
from .flops import layer_flops
from .importance import head_scores as _library_head_scores
from .kernels import reference
from .losses import entropy as _entropy

__all__ = ["check_softmax_backward", "check_attention_backward", "check_entropy_exit",
           "check_head_scores", "check_flops", "check_gradient", "finite_difference_gradient"]


# --------------------------------------------------------------------------- comparing


def _name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _call(fn, *args):
    """fn(*args), or None when it still raises NotImplementedError (a stub not yet written)."""
    try:
        return True, fn(*args)
    except NotImplementedError as e:
        print(f"{_name(fn)}: not written yet ({e or 'NotImplementedError'}); nothing checked")
        return False, None


def _hint(got: np.ndarray, expected: np.ndarray, rtol: float) -> str:
    """A guess at the mistake when `got` is a simple transform of `expected`."""
    scale = np.abs(expected).max()
    if scale == 0:
        return ""
    close = lambda a: a.shape == expected.shape and np.abs(a - expected).max() <= rtol * scale * 10
    if close(-got):
        return " The sign is flipped."
    if got.ndim >= 2 and got.shape[-1] == got.shape[-2] and close(np.swapaxes(got, -1, -2)):
        return " It looks transposed."
    flat_e, flat_g = expected.ravel(), got.ravel()
    k = int(np.argmax(np.abs(flat_e)))
    ratio = flat_g[k] / flat_e[k]
    if np.isfinite(ratio) and abs(ratio - 1) > 1e-3 and abs(ratio) > 1e-12 and close(got / ratio):
        return f" It is {ratio:.4g} times the right answer (a missing or extra constant factor?)."
    return ""


def _compare(fn_name: str, what: str, got, expected: np.ndarray, rtol: float, where: str = "") -> None:
    """Raise an AssertionError naming `what` unless `got` equals `expected` to rtol (relative to max |expected|)."""
    expected = np.asarray(expected, dtype=np.float64)
    if got is None:
        raise AssertionError(f"{fn_name} returned None for {what}; expected an array of shape {expected.shape}{where}")
    got_arr = np.asarray(got)
    if got_arr.shape != expected.shape:
        raise AssertionError(f"{fn_name}: {what} has shape {got_arr.shape}, expected {expected.shape}{where}")
    if not np.issubdtype(got_arr.dtype, np.number):
        raise AssertionError(f"{fn_name}: {what} has dtype {got_arr.dtype}, expected numbers")
    got_arr = got_arr.astype(np.float64)
    if not np.all(np.isfinite(got_arr)):
        raise AssertionError(f"{fn_name}: {what} holds NaN or inf at {np.argwhere(~np.isfinite(got_arr))[0].tolist()}{where}")
    err = np.abs(got_arr - expected)
    scale = max(float(np.abs(expected).max()), 1e-300)
    if err.max() > rtol * scale:
        idx = np.unravel_index(int(np.argmax(err)), err.shape)
        raise AssertionError(
            f"{fn_name}: {what} is wrong{where}: max |error| {err.max():.3e} "
            f"({err.max() / scale:.1e} of its largest entry {scale:.3e}; tolerance {rtol:.0e}) "
            f"at index {tuple(int(i) for i in idx)}: got {got_arr[idx]:.6g}, expected {expected[idx]:.6g}."
            + _hint(got_arr, expected, rtol))


def _passed(fn_name: str, message: str) -> bool:
    print(f"{fn_name}: passed ({message})")
    return True


def _probabilities(rng, shape, masked_keys=True):
    """Softmax rows of random scores, with the last keys of some rows masked (probability 0)."""
    scores = 2.0 * rng.standard_normal(shape)
    mask = None
    if masked_keys and len(shape) >= 2:
        lengths = rng.integers(1, shape[-1] + 1, size=shape[:-2] + (1,) if len(shape) > 2 else (1,))
        keep = np.arange(shape[-1]) < lengths[..., None]                 # (..., 1, n)
        mask = np.where(keep, 0.0, np.finfo(np.float64).min)
        mask = np.broadcast_to(mask, shape[:-2] + (1, shape[-1])) if len(shape) > 2 else mask.reshape(1, -1)
    return reference.softmax(scores, mask), mask


# --------------------------------------------------------------------------- softmax


def check_softmax_backward(fn, seed: int = 0) -> bool:
    """Check ``fn(dP, P) -> dS``, the softmax backward over the last axis.

    Compared with ``kernels.reference.softmax_backward`` on probabilities of several shapes
    (with masked keys, whose probability is 0) and a random upstream gradient dP.
    """
    rng = np.random.default_rng(seed)
    name = _name(fn)
    shapes = [(3, 5), (2, 3, 4, 4), (2, 4, 6, 6)]
    for shape in shapes:
        P, _ = _probabilities(rng, shape)
        dP = rng.standard_normal(shape)
        ok, dS = _call(fn, dP.copy(), P.copy())
        if not ok:
            return False
        _compare(name, "dS", dS, reference.softmax_backward(dP, P), 1e-10, f" for P of shape {shape}")
    return _passed(name, f"equals kernels.reference.softmax_backward on shapes {shapes}")


# --------------------------------------------------------------------------- attention


def _attention_grads(dO, Q, K, V, P):
    """The attention backward built from the library's softmax backward (float64)."""
    dh = Q.shape[-1]
    dV = np.swapaxes(P, -1, -2) @ dO                                   # (..., T, d_h)
    dP = dO @ np.swapaxes(V, -1, -2)                                   # (..., T, T)
    dS = reference.softmax_backward(dP, P)                             # (..., T, T)
    dQ = dS @ K / math.sqrt(dh)                                        # (..., T, d_h)
    dK = np.swapaxes(dS, -1, -2) @ Q / math.sqrt(dh)                   # (..., T, d_h)
    return dQ, dK, dV


def _attention_forward(Q, K, V, mask):
    P = reference.softmax(Q @ np.swapaxes(K, -1, -2) / math.sqrt(Q.shape[-1]), mask)
    return P @ V, P


def check_attention_backward(fn, seed: int = 0) -> bool:
    """Check ``fn(dO, Q, K, V, P) -> (dQ, dK, dV)`` for ``O = P V``, ``P = softmax(Q K^T / sqrt(d_h) + M)``.

    Q, K, V: (B, H, T, d_h); P: (B, H, T, T) with padding keys masked; dO: a random upstream
    gradient (B, H, T, d_h). Compared with central finite differences of ``sum(O * dO)`` on a
    small problem, then with the chain of library kernels on a larger one.
    """
    rng = np.random.default_rng(seed)
    name = _name(fn)
    for (B, H, T, dh), by_fd in (((1, 2, 3, 2), True), ((2, 3, 5, 4), False)):
        Q, K, V = (rng.standard_normal((B, H, T, dh)) for _ in range(3))
        lengths = rng.integers(max(1, T - 2), T + 1, size=B)
        mask = np.where(np.arange(T)[None, :] < lengths[:, None], 0.0, np.finfo(np.float64).min)[:, None, None, :]
        O, P = _attention_forward(Q, K, V, mask)
        dO = rng.standard_normal(O.shape)
        ok, out = _call(fn, dO.copy(), Q.copy(), K.copy(), V.copy(), P.copy())
        if not ok:
            return False
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise AssertionError(f"{name} must return three arrays (dQ, dK, dV), got {type(out).__name__}"
                                 + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
        where = f" for Q, K, V of shape {(B, H, T, dh)}"
        if by_fd:
            inputs = {"Q": Q, "K": K, "V": V}
            loss = lambda: float(np.sum(_attention_forward(inputs["Q"], inputs["K"], inputs["V"], mask)[0] * dO))
            expected = [finite_difference_gradient(loss, inputs[k]) for k in ("Q", "K", "V")]
            rtol, where = 1e-6, where + " (against finite differences)"
        else:
            expected, rtol = _attention_grads(dO, Q, K, V, P), 1e-10
        for what, got, exp in zip(("dQ", "dK", "dV"), out, expected):
            _compare(name, what, got, exp, rtol, where)
    return _passed(name, "dQ, dK, dV equal finite differences and the library's softmax backward chain")


# --------------------------------------------------------------------------- early exit


def _tiny_exit_model(seed):
    """A small random multi-exit BERT in float64 (4 layers, exits after every layer)."""
    from .model import CostEffModel

    config = CostEffConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=16, num_labels=3, exit_start=1,
                           pooler="mean")
    model = CostEffModel(config, dtype=np.float64, seed=seed)
    for k in config.exit_layers:                       # exits of different confidence
        model.params[f"exits.{k}.classifier.weight"] *= 20.0 * (k + 1)
    return model


def check_entropy_exit(fn, seed: int = 0) -> bool:
    """Check ``fn(logits, tau) -> exit_layers`` (N,): COST-EFF's entropy exit rule.

    ``logits`` is a list of (N, C) arrays, one per exit, shallowest first (exit k after layer
    k); a sample leaves at the first exit whose entropy ``-sum p log p`` of ``p = softmax(z)``
    is below tau, and at the last one otherwise. The answers are the 1-based layers, compared
    with ``early_exit_forward`` of the library on a small random model, for several tau.
    """
    rng = np.random.default_rng(seed)
    name = _name(fn)
    model = _tiny_exit_model(seed)
    N, T = 24, 8
    ids = rng.integers(1, model.config.vocab_size, size=(N, T))
    lengths = rng.integers(2, T + 1, size=N)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    types = np.zeros_like(ids)
    logits = [np.asarray(z) for z in model(ids, mask, types).logits]
    ent = np.stack([_entropy(z) for z in logits])                       # (L, N)
    log_c = math.log(model.config.num_labels)
    # thresholds: never (0), always at exit 1 (above log C), and the quartiles of the entropies
    # moved off any sample's entropy, so that rounding cannot decide a comparison.
    candidates = [0.0, log_c + 0.1] + list(np.quantile(ent, [0.25, 0.5, 0.75]))
    taus = []
    for tau in candidates:
        gap = np.abs(ent - tau).min()
        if gap < 1e-6:
            tau = tau + 1e-4
        taus.append(float(tau))
    for tau in taus:
        expected = early_exit_forward(model, ids, mask, types, threshold=tau).exit_layers
        ok, got = _call(fn, [z.copy() for z in logits], tau)
        if not ok:
            return False
        got_arr = np.asarray(got)
        if got_arr.shape != expected.shape:
            raise AssertionError(f"{name}: the exit layers have shape {got_arr.shape}, expected {expected.shape} "
                                 f"(one 1-based layer per sample)")
        wrong = np.flatnonzero(got_arr != expected)
        if wrong.size:
            i = int(wrong[0])
            per_exit = ", ".join(f"{e:.3f}" for e in ent[:, i])
            hint = ""
            if np.all(got_arr + 1 == expected) or np.all(got_arr == expected - 1):
                hint = " The layers look 0-based: exit k (0-based) is layer k + 1."
            raise AssertionError(
                f"{name}: wrong exit for {wrong.size} of {N} samples at tau = {tau:.4f}; sample {i} should "
                f"leave at layer {int(expected[i])}, got {got_arr[i]} (its entropies per exit: {per_exit})." + hint)
    return _passed(name, f"the same exit layers as early_exit_forward for tau in {[round(t, 3) for t in taus]}")


# --------------------------------------------------------------------------- Taylor importance


class _HeadConfig:
    """The three fields of a config that `importance.head_scores` reads."""

    def __init__(self, num_heads, head_size):
        self.num_hidden_layers = 1
        self.heads_per_layer = [num_heads]
        self.attention_head_size = head_size


def check_head_scores(fn, seed: int = 0) -> bool:
    """Check ``fn(W_O, grads, num_heads) -> (H,)``: the Taylor score of each attention head.

    W_O is an attention output weight (d, A), A = H * d_h (head h owns columns h*d_h..(h+1)*d_h-1);
    grads (n_batches, d, A) the gradients of the loss with respect to W_O, one per batch. The
    score of a weight is ``|w * sum_batches |grad||`` and a head's score the sum over its
    columns and all rows; compared with ``importance.head_scores`` of the library.
    """
    rng = np.random.default_rng(seed)
    name = _name(fn)
    for d, H, dh, n_batches in ((8, 4, 2, 3), (12, 3, 4, 5)):
        W = rng.standard_normal((d, H * dh))
        grads = rng.standard_normal((n_batches, d, H * dh))             # both signs: sum |g| != |sum g|
        weight_scores = {"encoder.layer.0.attention.output.dense.weight": np.abs(W * np.abs(grads).sum(axis=0))}
        expected = _library_head_scores(weight_scores, _HeadConfig(H, dh))[0]
        ok, got = _call(fn, W.copy(), grads.copy(), H)
        if not ok:
            return False
        _compare(name, "the score vector", got, expected, 1e-10,
                 f" for W_O of shape {(d, H * dh)} ({H} heads of d_h = {dh}) and {n_batches} batches")
    return _passed(name, "equals importance.head_scores")


# --------------------------------------------------------------------------- FLOPs


def check_flops(fn, seed: int = 0) -> bool:
    """Check ``fn(n, d, A, F) -> FLOPs``: the matrix-product FLOPs of one encoder layer.

    n tokens, hidden size d, attention width A = H * d_h, FFN width F; a multiply-add counts
    2 FLOPs and only the matrix products count (docs/method.md, 8). Compared with
    ``flops.layer_flops(config, i, n)["total"]`` for full and slender layers.
    """
    rng = np.random.default_rng(seed)
    name = _name(fn)
    cases = [(128, 768, 12, 64, 3072), (24, 384, 12, 32, 1536), (24, 384, 2, 32, 128)]
    cases.append(tuple(int(v) for v in (rng.integers(1, 200), 64, rng.integers(1, 9), 8, rng.integers(1, 300))))
    for n, d, H, dh, F in cases:
        config = CostEffConfig(vocab_size=10, hidden_size=d, num_hidden_layers=1, num_attention_heads=max(H, d // dh),
                               intermediate_size=max(F, 1), attention_head_size=dh, heads_per_layer=[H],
                               intermediate_per_layer=[F])
        parts = layer_flops(config, 0, n)
        expected = parts["total"]
        ok, got = _call(fn, n, d, H * dh, F)
        if not ok:
            return False
        try:
            got_value = float(got)
        except (TypeError, ValueError):
            raise AssertionError(f"{name} must return a number of FLOPs, got {type(got).__name__}") from None
        if got_value != expected:
            detail = ", ".join(f"{k} {v:,}" for k, v in parts.items() if k != "total")
            raise AssertionError(
                f"{name}: {got_value:,.0f} FLOPs for n={n}, d={d}, A={H * dh}, F={F}; expected {expected:,} "
                f"({got_value / expected:.3f} of it). The parts: {detail}. "
                "A multiply-add is 2 FLOPs; attention has Q, K, V and the output dense, plus Q K^T and P V.")
    return _passed(name, f"equals flops.layer_flops on {len(cases)} layers, full and slender")


# --------------------------------------------------------------------------- any gradient


def finite_difference_gradient(loss, array: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences ``(loss() - loss()) / 2h`` for every entry of `array`, perturbed in place.

    `loss` is a function of no arguments that reads `array`; `array` is restored afterwards.
    """
    grad = np.zeros(array.shape, dtype=np.float64)
    for idx in np.ndindex(array.shape):
        keep = array[idx]
        array[idx] = keep + h
        up = loss()
        array[idx] = keep - h
        down = loss()
        array[idx] = keep
        grad[idx] = (up - down) / (2.0 * h)
    return grad


def check_gradient(forward, backward, inputs: dict, *, seed: int = 0, h: float = 1e-6, rtol: float = 1e-6,
                   name: str | None = None) -> bool:
    """Check a hand-written backward against central finite differences.

    forward(**inputs) -> an array (or a scalar, e.g. a loss); backward(dout, **inputs) -> a
    dict {input name: gradient}, or a tuple in the order of `inputs`, for the inputs to check
    (a dict may leave some out, e.g. integer labels). The scalar differentiated is
    ``sum(forward(**inputs) * dout)`` with a random dout of the output's shape. `inputs` are
    float64 arrays (copied, never changed); others (labels, flags) are passed through.
    """
    rng = np.random.default_rng(seed)
    label = name or _name(backward)
    arrays = {k: (np.array(v, dtype=np.float64) if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)
                  else v) for k, v in inputs.items()}
    out = np.asarray(forward(**arrays), dtype=np.float64)
    dout = rng.standard_normal(out.shape)
    try:
        grads = backward(dout if out.ndim else float(dout), **{k: (v.copy() if isinstance(v, np.ndarray) else v)
                                                                for k, v in arrays.items()})
    except NotImplementedError as e:
        print(f"{label}: not written yet ({e or 'NotImplementedError'}); nothing checked")
        return False
    float_names = [k for k, v in arrays.items() if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)]
    if isinstance(grads, dict):
        unknown = set(grads) - set(float_names)
        if unknown:
            raise AssertionError(f"{label} returned gradients for {sorted(unknown)}, which are not float inputs "
                                 f"(the inputs are {float_names})")
    else:
        grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
        if len(grads) != len(float_names):
            raise AssertionError(f"{label} returned {len(grads)} gradients, expected {len(float_names)} "
                                 f"(for {float_names}, in that order)")
        grads = dict(zip(float_names, grads))
    loss = lambda: float(np.sum(np.asarray(forward(**arrays), dtype=np.float64) * dout))
    for k, g in grads.items():
        _compare(label, f"d{k}", g, finite_difference_gradient(loss, arrays[k], h), rtol,
                 f" (against finite differences, {k} of shape {arrays[k].shape})")
    verb = "equals" if len(grads) == 1 else "equal"
    return _passed(label, f"{', '.join('d' + k for k in grads)} {verb} central finite differences")
