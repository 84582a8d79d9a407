"""How a learner's function is called and compared: the verdict lines and the error
messages every check shares."""

from __future__ import annotations

import numpy as np

from ..kernels import reference


def name_of(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def call(fn, *args):
    """fn(*args), or None when it still raises NotImplementedError (a stub not yet written)."""
    try:
        return True, fn(*args)
    except NotImplementedError as e:
        print(f"{name_of(fn)}: not written yet ({e or 'NotImplementedError'}); nothing checked")
        return False, None


def hint(got: np.ndarray, expected: np.ndarray, rtol: float) -> str:
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


def compare(fn_name: str, what: str, got, expected: np.ndarray, rtol: float, where: str = "") -> None:
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
            + hint(got_arr, expected, rtol))


def as_float_array(got) -> np.ndarray:
    """`got` as a float64 array, or an empty one when it is not numbers (for guessing a mistake)."""
    try:
        return np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return np.empty(0)


def passed(fn_name: str, message: str) -> bool:
    print(f"{fn_name}: passed ({message})")
    return True


def probabilities(rng, shape, masked_keys=True):
    """Softmax rows of random scores, with the last keys of some rows masked (probability 0)."""
    scores = 2.0 * rng.standard_normal(shape)
    mask = None
    if masked_keys and len(shape) >= 2:
        lengths = rng.integers(1, shape[-1] + 1, size=shape[:-2] + (1,) if len(shape) > 2 else (1,))
        keep = np.arange(shape[-1]) < lengths[..., None]                 # (..., 1, n)
        mask = np.where(keep, 0.0, np.finfo(np.float64).min)
        mask = np.broadcast_to(mask, shape[:-2] + (1, shape[-1])) if len(shape) > 2 else mask.reshape(1, -1)
    return reference.softmax(scores, mask), mask


def call_returning(fn, count: int, what: str, *args):
    """`call(fn, *args)`, and a check that it returned `count` things (`what` names them in
    the message, e.g. ``"two things (loss, dz)"``)."""
    ok, out = call(fn, *args)
    if ok and (not isinstance(out, (tuple, list)) or len(out) != count):
        raise AssertionError(f"{name_of(fn)} must return {what}, got {type(out).__name__}"
                             + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    return ok, out


def call_number(fn, what: str, *args):
    """`call(fn, *args)` for a function that returns one number: (ok, the number as a float);
    anything else is an AssertionError that says what was expected (`what`)."""
    ok, out = call(fn, *args)
    if not ok:
        return False, None
    try:
        return True, float(out)
    except (TypeError, ValueError):
        raise AssertionError(f"{name_of(fn)} must return {what}, got {type(out).__name__}") from None
