"""The analytic FLOPs of docs/method.md, 8, against a count of the matrix products the model really
executes. Every parameter is wrapped in an ndarray subclass whose `__array_ufunc__` sees each
`np.matmul` (the `@` operator) and adds 2 * (output elements) * (inner dimension) FLOPs."""

import numpy as np
import pytest

from npcosteff import kernels
from npcosteff.config import CostEffConfig
from npcosteff.flops import model_flops
from npcosteff.model import CostEffModel


class Counted(np.ndarray):
    """An ndarray that counts the FLOPs of every matmul it takes part in."""
    flops = 0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [np.asarray(x) if isinstance(x, Counted) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(o) if isinstance(o, Counted) else o for o in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        if ufunc is np.matmul and method == "__call__":
            a, b = plain[0], plain[1]
            Counted.flops += 2 * int(np.prod(result.shape)) * a.shape[-1]   # a multiply-add = 2 FLOPs
            assert a.shape[-1] == b.shape[-2]
        if isinstance(result, np.ndarray) and result.dtype.kind == "f":
            return result.view(Counted)                      # keep counting downstream products
        return result


@pytest.fixture
def reference_kernels():
    """The plain NumPy kernels accept any ndarray subclass (Numba's do not)."""
    previous = kernels.current()
    kernels.use("reference")
    yield
    kernels.use(previous)


CONFIGS = {
    "full": dict(heads_per_layer=None, intermediate_per_layer=None, embedding_rank=None),
    "slender": dict(heads_per_layer=[3, 1, 2], intermediate_per_layer=[40, 17, 9], embedding_rank=6),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("exit_layer", [None, 2])
def test_analytic_flops_equal_executed_products(reference_kernels, name, exit_layer):
    cfg = CostEffConfig(vocab_size=50, hidden_size=24, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=40, max_position_embeddings=32, num_labels=3, exit_start=1,
                        **CONFIGS[name])
    model = CostEffModel(cfg, dtype=np.float64, seed=0)
    for n in model.param_names:
        model.params[n] = model.params[n].view(Counted)
    n_tokens = 9
    ids = np.random.default_rng(0).integers(0, 50, (1, n_tokens))
    Counted.flops = 0
    model(ids, max_layer=exit_layer)
    assert Counted.flops > 0
    assert Counted.flops == model_flops(cfg, n_tokens, exit_layer)
