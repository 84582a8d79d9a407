"""Time the Numba kernels against the NumPy reference at MiniLM training shapes.

Shapes (batch 32, sequence 128, MiniLM: d = 384, 12 heads, FFN 1536):
GELU (32, 128, 1536), softmax (32, 12, 128, 128) with a (32, 1, 1, 128) padding mask,
LayerNorm (32, 128, 384). Prints the best-of-``--repeat`` wall time of each kernel and the
ratio reference / fast (> 1 means the Numba kernel is faster).

    python benchmarks/bench_kernels.py [--dtype float32|float64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import npcosteff  # noqa: F401  (first: its thread settings, npcosteff/threads.py, precede Numba's first parallel loop)
import numba
import numpy as np

from npcosteff.kernels import fast, reference


def best_time(fn, repeat: int) -> float:
    """Best wall time over ``repeat`` calls, after one warm-up call (which also compiles)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    B, T, d, H, F = 32, 128, 384, 12, 1536

    x_ffn = rng.standard_normal((B, T, F)).astype(dtype)  # (B, T, F)
    dy_ffn = rng.standard_normal((B, T, F)).astype(dtype)
    scores = (3.0 * rng.standard_normal((B, H, T, T))).astype(dtype)  # (B, H, T, T)
    lengths = rng.integers(T // 4, T + 1, size=B)
    attention_mask = (np.arange(T)[None, :] < lengths[:, None]).astype(dtype)  # (B, T)
    additive_mask = ((1.0 - attention_mask) * np.finfo(dtype).min)[:, None, None, :]  # (B, 1, 1, T)
    dprobs = rng.standard_normal((B, H, T, T)).astype(dtype)
    x_ln = (rng.standard_normal((B, T, d)) + 0.5).astype(dtype)  # (B, T, d)
    res_ln = rng.standard_normal((B, T, d)).astype(dtype)
    dy_ln = rng.standard_normal((B, T, d)).astype(dtype)
    gamma = (1.0 + 0.1 * rng.standard_normal(d)).astype(dtype)  # (d,)
    beta = (0.1 * rng.standard_normal(d)).astype(dtype)
    eps = 1e-12
    probs = reference.softmax(scores, additive_mask)
    _, mean, rstd = reference.layer_norm(x_ln, gamma, beta, eps)

    cases = {
        "gelu (32,128,1536)": lambda k: k.gelu(x_ffn),
        "gelu_backward": lambda k: k.gelu_backward(dy_ffn, x_ffn),
        "softmax (32,12,128,128) masked": lambda k: k.softmax(scores, additive_mask),
        "softmax_backward": lambda k: k.softmax_backward(dprobs, probs),
        "layer_norm (32,128,384)": lambda k: k.layer_norm(x_ln, gamma, beta, eps),
        "layer_norm_backward": lambda k: k.layer_norm_backward(dy_ln, x_ln, gamma, mean, rstd),
        "add_layer_norm": lambda k: k.add_layer_norm(x_ln, res_ln, gamma, beta, eps),
        "dropout_mask p=0.1 (32,12,128,128)": lambda k: k.dropout_mask(
            np.random.default_rng(1), (B, H, T, T), 0.1, dtype
        ),
    }
    print(f"dtype {dtype}, Numba threads {numba.get_num_threads()}, best of {args.repeat}")
    print(f"{'kernel':38s} {'reference ms':>13s} {'fast ms':>9s} {'speedup':>8s}")
    for name, call in cases.items():
        t_ref = best_time(lambda: call(reference), args.repeat)
        t_fast = best_time(lambda: call(fast), args.repeat)
        print(f"{name:38s} {1e3 * t_ref:13.2f} {1e3 * t_fast:9.2f} {t_ref / t_fast:8.2f}")


if __name__ == "__main__":
    main()
