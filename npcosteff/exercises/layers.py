"""The checks of the layers' exercises: FLOPs of a layer (notebook 1), the softmax's and
attention's backward (notebook 2), and any backward by finite differences."""

from __future__ import annotations

import math

import numpy as np

from ..config import CostEffConfig
from ..flops import layer_flops
from ..kernels import reference
from .compare import call, call_number, call_returning, compare, name_of, passed, probabilities


# --------------------------------------------------------------------------- FLOPs


def check_flops(fn, seed: int = 0) -> bool:
    """Check ``fn(n, d, A, F) -> FLOPs``: the matrix-product FLOPs of one encoder layer.

    n tokens, hidden size d, attention width A = H * d_h, FFN width F; a multiply-add counts
    2 FLOPs and only the matrix products count (docs/method.md, 8). Compared with
    ``flops.layer_flops(config, i, n)["total"]`` for full and slender layers.
    """
    rng = np.random.default_rng(seed)
    name = name_of(fn)
    cases = [(128, 768, 12, 64, 3072), (24, 384, 12, 32, 1536), (24, 384, 2, 32, 128)]
    cases.append(tuple(int(v) for v in (rng.integers(1, 200), 64, rng.integers(1, 9), 8, rng.integers(1, 300))))
    for n, d, H, dh, F in cases:
        config = CostEffConfig(vocab_size=10, hidden_size=d, num_hidden_layers=1, num_attention_heads=max(H, d // dh),
                               intermediate_size=max(F, 1), attention_head_size=dh, heads_per_layer=[H],
                               intermediate_per_layer=[F])
        parts = layer_flops(config, 0, n)
        expected = parts["total"]
        ok, got_value = call_number(fn, "a number of FLOPs", n, d, H * dh, F)
        if not ok:
            return False
        if got_value != expected:
            detail = ", ".join(f"{k} {v:,}" for k, v in parts.items() if k != "total")
            raise AssertionError(
                f"{name}: {got_value:,.0f} FLOPs for n={n}, d={d}, A={H * dh}, F={F}; expected {expected:,} "
                f"({got_value / expected:.3f} of it). The parts: {detail}. "
                "A multiply-add is 2 FLOPs; attention has Q, K, V and the output dense, plus Q K^T and P V.")
    return passed(name, f"equals flops.layer_flops on {len(cases)} layers, full and slender")


# --------------------------------------------------------------------------- softmax


def check_softmax_backward(fn, seed: int = 0) -> bool:
    """Check ``fn(dP, P) -> dS``, the softmax backward over the last axis.

    Compared with ``kernels.reference.softmax_backward`` on probabilities of several shapes
    (with masked keys, whose probability is 0) and a random upstream gradient dP.
    """
    rng = np.random.default_rng(seed)
    name = name_of(fn)
    shapes = [(3, 5), (2, 3, 4, 4), (2, 4, 6, 6)]
    for shape in shapes:
        P, _ = probabilities(rng, shape)
        dP = rng.standard_normal(shape)
        ok, dS = call(fn, dP.copy(), P.copy())
        if not ok:
            return False
        compare(name, "dS", dS, reference.softmax_backward(dP, P), 1e-10, f" for P of shape {shape}")
    return passed(name, f"equals kernels.reference.softmax_backward on shapes {shapes}")


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
    name = name_of(fn)
    for (B, H, T, dh), by_fd in (((1, 2, 3, 2), True), ((2, 3, 5, 4), False)):
        Q, K, V = (rng.standard_normal((B, H, T, dh)) for _ in range(3))
        lengths = rng.integers(max(1, T - 2), T + 1, size=B)
        mask = np.where(np.arange(T)[None, :] < lengths[:, None], 0.0, np.finfo(np.float64).min)[:, None, None, :]
        O, P = _attention_forward(Q, K, V, mask)
        dO = rng.standard_normal(O.shape)
        ok, out = call_returning(fn, 3, "three arrays (dQ, dK, dV)", dO.copy(), Q.copy(), K.copy(), V.copy(), P.copy())
        if not ok:
            return False
        where = f" for Q, K, V of shape {(B, H, T, dh)}"
        if by_fd:
            inputs = {"Q": Q, "K": K, "V": V}
            loss = lambda: float(np.sum(_attention_forward(inputs["Q"], inputs["K"], inputs["V"], mask)[0] * dO))
            expected = [finite_difference_gradient(loss, inputs[k]) for k in ("Q", "K", "V")]
            rtol, where = 1e-6, where + " (against finite differences)"
        else:
            expected, rtol = _attention_grads(dO, Q, K, V, P), 1e-10
        for what, got, exp in zip(("dQ", "dK", "dV"), out, expected):
            compare(name, what, got, exp, rtol, where)
    return passed(name, "dQ, dK, dV equal finite differences and the library's softmax backward chain")


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
    label = name or name_of(backward)
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
        compare(label, f"d{k}", g, finite_difference_gradient(loss, arrays[k], h), rtol,
                 f" (against finite differences, {k} of shape {arrays[k].shape})")
    verb = "equals" if len(grads) == 1 else "equal"
    return passed(label, f"{', '.join('d' + k for k in grads)} {verb} central finite differences")
