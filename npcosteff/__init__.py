"""npcosteff: COST-EFF (slenderized multi-exit BERT) in NumPy and Numba.

    >>> import npcosteff
    >>> tok = npcosteff.Tokenizer.from_pretrained()          # the packaged MiniLM's WordPiece
    >>> model = npcosteff.from_pretrained()                   # the packaged MiniLM, float32
    >>> out = model(**tok(["a gripping, funny film"], max_length=32))
    >>> [h.shape for h in out.hidden_states]                  # L+1 arrays (batch, tokens, d)
"""

from __future__ import annotations

from .threads import configure as _configure_threads

_configure_threads()          # before NumPy and Numba start their thread pools (see threads.py)

import numpy as np  # noqa: E402

from .config import ConfigError, CostEffConfig  # noqa: E402
from .model import CostEffModel, ModelOutput, param_shapes  # noqa: E402
from .weights import CheckpointError  # noqa: E402

__version__ = "0.1.0"


def from_pretrained(path=None, dtype=np.float32, **config_overrides) -> CostEffModel:
    """Load a BERT checkpoint folder (config.json + model.safetensors) as a `CostEffModel`.

    `path=None` loads the packaged MiniLM (6 layers, d=384). `config_overrides` set COST-EFF
    fields, e.g. ``num_labels=2, exit_start=1`` to attach fresh exits to a plain encoder.
    """
    return CostEffModel.from_pretrained(path, dtype=dtype, **config_overrides)


def __getattr__(name):
    # The tokenizer pulls in `tokenizers`; import it only when asked for.
    if name == "Tokenizer":
        from .tokenizer import Tokenizer
        return Tokenizer
    raise AttributeError(f"module 'npcosteff' has no attribute {name!r}")


__all__ = ["CostEffConfig", "CostEffModel", "ModelOutput", "ConfigError", "CheckpointError",
           "Tokenizer", "from_pretrained", "param_shapes"]
