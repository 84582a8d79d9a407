"""npcosteff.threads: the thread-pool settings applied on import, and the user's choice kept."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from npcosteff.threads import OPENBLAS_TIMEOUT

PROBE = """
import json, os
import npcosteff, numba, numpy as np
from npcosteff import kernels
kernels.gelu(np.linspace(-3, 3, 4096, dtype=np.float32).reshape(64, 64))   # a parallel loop runs
print(json.dumps({"timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"), "layer": numba.threading_layer()}))
"""


def probe(code=PROBE, *args, **env_changes):
    """The JSON that `code` (run with `args`) prints last in a fresh interpreter, with neither of
    npcosteff's two thread settings in its environment unless `env_changes` gives them."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "NUMBA_THREADING_LAYER")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_sets_sleeping_pools():
    pytest.importorskip("numba")
    assert probe() == {"timeout": "4", "layer": "workqueue"}


def test_the_users_settings_win():
    pytest.importorskip("numba")
    assert probe(OPENBLAS_THREAD_TIMEOUT="12", NUMBA_THREADING_LAYER="omp") == {"timeout": "12", "layer": "omp"}


ORDER = """
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if sys.argv[1] == "numpy first":
        import numpy
        numpy.ones((256, 256), numpy.float32) @ numpy.ones((256, 256), numpy.float32)   # OpenBLAS's threads run
    import npcosteff
import numpy as np
from npcosteff.threads import openblas_thread_timeout
x = np.ones((256, 256), np.float32)
print(json.dumps({"timeouts": openblas_thread_timeout(), "product": float((x @ x)[0, 0]),
                  "warned": [str(w.message) for w in caught if "OPENBLAS_THREAD_TIMEOUT" in str(w.message)]}))
"""


@pytest.mark.parametrize("order", ["numpy first", "npcosteff first"])
def test_either_import_order_gets_sleeping_openblas_threads(order):
    # NumPy imported first has started OpenBLAS with its default wait; npcosteff makes it read the
    # setting again and restarts its idle threads, silently. Every OpenBLAS then waits 2^4 cycles,
    # and products still come out right (the threads start again on the next call).
    got = probe(ORDER, order)
    assert got["warned"] == [], got
    assert got["timeouts"] and set(got["timeouts"]) == {int(OPENBLAS_TIMEOUT)}, got
    assert got["product"] == 256.0


def test_the_users_timeout_wins_in_either_order():
    for order in ("numpy first", "npcosteff first"):
        got = probe(ORDER, order, OPENBLAS_THREAD_TIMEOUT="12")
        assert set(got["timeouts"]) == {12} and got["warned"] == [], (order, got)


def test_no_warning_for_a_single_threaded_openblas():
    assert probe(ORDER, "numpy first", OPENBLAS_NUM_THREADS="1")["warned"] == []


def test_an_openblas_that_cannot_be_restarted_is_named(monkeypatch):
    # A BLAS build without the functions the restart uses: npcosteff says so instead of running
    # slower in silence.
    from npcosteff import threads

    import threadpoolctl

    monkeypatch.setattr(threads, "_restart_openblas_threads", lambda: False)
    monkeypatch.setattr(threadpoolctl, "threadpool_info",       # an OpenBLAS with idle threads, on any machine
                        lambda: [{"internal_api": "openblas", "num_threads": 2}])
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "numpy", np)
    with pytest.warns(RuntimeWarning, match="could not be told to let idle threads sleep"):
        threads.configure()


KERNELS = """
import sys
import numpy as np
from npcosteff import kernels
x = np.random.default_rng(0).standard_normal((257, 1536)).astype(np.float32)   # (N, F), uneven rows
mask = np.zeros((1, 1, 1, 1536), np.float32)
y, _, _, _ = kernels.add_layer_norm(x, x, np.ones(1536, np.float32), np.zeros(1536, np.float32), 1e-12)
np.savez(sys.argv[1], gelu=kernels.gelu(x), softmax=kernels.softmax(x.reshape(1, 1, 257, 1536), mask), ln=y)
"""


def test_results_do_not_depend_on_the_threading_layer(tmp_path):
    # The loops split their rows the same way under any layer: the same bits from omp and workqueue.
    pytest.importorskip("numba")
    results = {}
    for layer in ("omp", "workqueue"):
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
        env["NUMBA_THREADING_LAYER"] = layer
        path = tmp_path / f"{layer}.npz"
        r = subprocess.run([sys.executable, "-c", KERNELS, str(path)], capture_output=True, text=True, env=env,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        results[layer] = np.load(path)
    for name in ("gelu", "softmax", "ln"):
        np.testing.assert_array_equal(results["omp"][name], results["workqueue"][name], err_msg=name)


def test_the_package_exports_every_public_name():
    # The thread setup runs before the package's other imports; every name of __all__ is still there.
    import npcosteff

    missing = [name for name in npcosteff.__all__ if not hasattr(npcosteff, name)]
    assert missing == []


def _last_line(code):
    """The last line `code` prints in a fresh interpreter, Numba's threading layer left to npcosteff."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_warns_when_numba_threads_started_before_import():
    # numba.set_num_threads starts Numba's default (OpenMP) layer; npcosteff can no longer pick
    # its own, so it says so instead of running slower in silence.
    pytest.importorskip("numba")
    code = ("import warnings, numba\nnumba.set_num_threads(1)\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import npcosteff\n"
            "print([str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)])\n")
    messages = _last_line(code)
    assert "threading layer before npcosteff was imported" in messages, messages


def test_no_warning_in_the_usual_order():
    pytest.importorskip("numba")
    code = ("import warnings\nwith warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import npcosteff, numba\n"
            "numba.set_num_threads(1)\n"
            "print(sum(issubclass(w.category, RuntimeWarning) for w in caught))\n")
    assert _last_line(code) == "0"
