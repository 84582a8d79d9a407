"""Shared helpers of the benchmarks: threads, BLAS, the machine's sgemm rate, timing, memory.

Every benchmark runs each side (npcosteff, PyTorch) in a child process of its own, so that
the two never share thread pools or memory, and prints the measurements side by side with
the thread count, the BLAS libraries and the load average of the machine. Children report
one JSON object on their last line of output (:func:`run_child`).

Timing: :func:`time_calls` takes the median of several runs (wall clock and process CPU
time). Memory: :func:`peak_rss_mb` is the high-water mark of the resident set
(``ru_maxrss``); a child reports it after imports (its baseline) and after the work.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

import npcosteff  # noqa: F401  (first: its thread-pool choices, npcosteff/threads.py, precede any pool's start)
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_PREFIX = "RESULT "                      # the child's JSON line starts with this


# ---------------------------------------------------------------------------- threads
# The thread-pool settings of npcosteff.threads as they were before npcosteff changed them:
# OpenBLAS's compiled-in wait of 2^28 cycles, and Numba's default (OpenMP) threading layer.
DEFAULT_POOLS = {"OPENBLAS_THREAD_TIMEOUT": "28", "NUMBA_THREADING_LAYER": "omp"}


def thread_env(threads: int) -> dict:
    """Environment for a child process limited to `threads` threads in every pool
    (OpenBLAS, MKL, OpenMP, Numba), so that both sides of a comparison get the same.

    npcosteff's own thread settings (``OPENBLAS_THREAD_TIMEOUT``, Numba's layer) are left to
    the child's ``import npcosteff``, as in a user's process (npcosteff/threads.py)."""
    from npcosteff.threads import timeout_set_here

    n = str(int(threads))
    env = dict(os.environ)
    if timeout_set_here():                     # npcosteff's own, from this process's import: not the user's
        env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = n
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def pools_summary(env: dict) -> str:
    """One line on the thread-pool settings a child runs with."""
    layer = env.get("NUMBA_THREADING_LAYER") or "workqueue (npcosteff's choice, see npcosteff/threads.py)"
    return (f"thread pools: OPENBLAS_THREAD_TIMEOUT={env.get('OPENBLAS_THREAD_TIMEOUT', '(unset: npcosteff sets 4)')}, "
            f"Numba threading layer {layer}")


def limit_threads(threads: int) -> None:
    """Limit this process's BLAS/OpenMP pools and Numba to `threads` (call after imports)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(threads))
    try:
        import numba

        numba.set_num_threads(int(threads))
    except ImportError:
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


def default_threads() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------- machine
def blas_summary() -> str:
    """One line per thread pool of this process (threadpoolctl): library, version, threads."""
    from threadpoolctl import threadpool_info

    lines = []
    for pool in threadpool_info():
        name = pool.get("internal_api", "?")
        extra = pool.get("architecture") or pool.get("threading_layer") or ""
        lines.append(f"{pool['user_api']}: {name} {pool.get('version') or ''} {extra} "
                     f"threads={pool['num_threads']} ({os.path.basename(pool['filepath'])})")
    return "\n".join(lines)


def machine_summary() -> str:
    """CPU model, core count, load average and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    import numba

    return (f"CPU: {cpu}, {os.cpu_count()} cores; load average (1/5/15 min): "
            f"{' '.join(f'{x:.2f}' for x in load)}\n"
            f"Python {platform.python_version()}, NumPy {np.__version__}, Numba {numba.__version__}")


def kernel_summary() -> str:
    """Which OpenBLAS kernel runs, and whether the environment chose it: ``OPENBLAS_CORETYPE``
    forces a kernel (a Haswell one runs AVX2 on an AVX-512 CPU at about half the sgemm rate),
    and a user's machine does not set it; benchmarks run with it unset
    (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks...``)."""
    from threadpoolctl import threadpool_info

    kernels = sorted({f"{os.path.basename(p['filepath'])}: {p.get('architecture') or '?'}"
                      for p in threadpool_info() if p.get("internal_api") == "openblas"})
    forced = {v: os.environ[v] for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ}
    line = "OpenBLAS kernel: " + ("; ".join(kernels) or "no OpenBLAS")
    if forced:
        line += (f"  ** FORCED by {forced}: not this CPU's native kernel; rerun with "
                 f"env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE **")
    else:
        line += " (the CPU's own, OPENBLAS_CORETYPE unset)"
    return line


def print_header(doc: str, threads: int, with_torch: bool = True) -> None:
    """What every side-by-side benchmark prints first: its title, the machine and its load, the
    thread count and BLAS pools with the OpenBLAS kernel that runs, and PyTorch's and ONNX
    Runtime's builds."""
    print(doc.splitlines()[0])
    print(machine_summary())
    print(f"threads per side: {threads}; NumPy BLAS pools:\n  " + blas_summary().replace("\n", "\n  "))
    print(kernel_summary())
    if with_torch:
        print(torch_summary())
        print(onnxruntime_summary())


def torch_summary() -> str:
    """PyTorch version and its math backends (one line), or why it is unavailable."""
    try:
        import torch
    except ImportError as e:
        return f"torch unavailable: {e}"
    mkl = "MKL" if torch.backends.mkl.is_available() else "no MKL"
    dnn = "oneDNN" if torch.backends.mkldnn.is_available() else "no oneDNN"
    return f"torch {torch.__version__} ({mkl}, {dnn}, parallel backend {torch.__config__.parallel_info().splitlines()[0]})"


def onnxruntime_summary() -> str:
    """ONNX Runtime's version (one line), or how to install it."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime not installed (pip install -e '.[bench]'): its side is skipped"
    return f"onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"


def have_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------- ONNX Runtime
def exported_model(num_labels: int = 2, seed: int = 0):
    """``transformers.BertForSequenceClassification`` of the packaged MiniLM in evaluation mode,
    its classifier drawn with torch seed `seed`: the model :func:`export_onnx` exports, and the
    reference its ONNX Runtime logits are checked against."""
    import torch
    from transformers import BertForSequenceClassification
    from transformers.utils import logging

    from npcosteff.pretrained import default_model_dir

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.manual_seed(seed)
    return BertForSequenceClassification.from_pretrained(default_model_dir(), num_labels=num_labels,
                                                         attn_implementation="eager").eval()


def export_onnx(path: str, num_labels: int = 2, seed: int = 0) -> str:
    """Export :func:`exported_model` to an ONNX file at `path`, batch and sequence length
    dynamic; returns `path`. The export is what a user deploying on ONNX Runtime does."""
    import warnings

    import torch

    model = exported_model(num_labels, seed)
    ids = torch.randint(1000, 30000, (2, 16))
    inputs = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")            # the tracer's notes on shapes it treats as constants
        torch.onnx.export(model, inputs, path, input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["logits"], dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                                                 "token_type_ids": axes, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return path


def reference_logits(model, ids, mask, types):
    """The logits of :func:`exported_model` computed by transformers itself (float32), to check
    ONNX Runtime's against."""
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     token_type_ids=torch.from_numpy(types)).logits.numpy()


def onnxruntime_session(path: str, threads: int):
    """An ONNX Runtime CPU session of the file at `path` with `threads` intra-op threads, every
    graph optimization on (its defaults otherwise, as a user gets them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def sgemm_rate(threads: int, n: int = 2048, repeat: int = 7) -> float:
    """The machine's float32 matrix-product rate in GFLOP/s: median over `repeat` products of
    two (n, n) matrices with NumPy's BLAS limited to `threads` threads."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    with threadpool_limits(int(threads)):
        np.matmul(a, b, out=out)                      # warm-up: thread pool start, page faults
        wall, _ = time_calls(lambda: np.matmul(a, b, out=out), repeat)
    return 2.0 * n ** 3 / wall / 1e9


# ---------------------------------------------------------------------------- timing, memory
def time_calls(fn, repeat: int, warmup: int = 0):
    """Median wall-clock and process-CPU seconds of `repeat` calls of fn() (after `warmup`)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def report(result: dict) -> None:
    """Print a child's result as the JSON line that :func:`run_child` reads."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(module: str, args: list, threads: int, env_extra: dict | None = None, timeout: float = 1800,
              checkout: str | None = None) -> dict:
    """Run ``python -m <module> <args>`` with `threads` threads; return the JSON it reported.

    `checkout`: run the module and npcosteff of another checkout of the repository (an
    earlier commit's ``git worktree``, say) instead of this one's. The child's other output is
    passed through only when it fails.
    """
    env = thread_env(threads)
    env.update(env_extra or {})
    root = REPO
    if checkout is not None:
        root = os.path.abspath(checkout)
        env["PYTHONPATH"] = root + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)
    results = [line[len(RESULT_PREFIX):] for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not results:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"child {module} {args} failed with exit code {proc.returncode}")
    return json.loads(results[-1])


def fmt_ms(seconds: float) -> str:
    return f"{1e3 * seconds:9.1f}"
