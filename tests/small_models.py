"""The small float32 model and batches shared by the tests of the inference speed paths
(tests/test_lanes.py, tests/test_packed.py)."""

import numpy as np

from npcosteff.config import CostEffConfig
from npcosteff.model import CostEffModel, param_shapes

VOCAB, D, MAX_POS = 50, 16, 12


def slender_model(heads=(4, 1, 2), neurons=(20, 9, 14)):
    """float32, 3 layers of 4, 1 and 2 heads by default (fewer heads than lanes in layer 2),
    random weights of scale 0.3 so that attention is far from uniform, a mean-pooled exit per layer."""
    config = CostEffConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=20, max_position_embeddings=MAX_POS, heads_per_layer=list(heads),
                           intermediate_per_layer=list(neurons), num_labels=3, exit_start=1, pooler="mean")
    rng = np.random.default_rng(0)
    params = {name: (1.0 if name.endswith("LayerNorm.weight") else 0.0) + 0.3 * rng.standard_normal(shape)
              for name, shape in param_shapes(config).items()}
    return CostEffModel(config, params, dtype=np.float32)


def batch(B, padded):
    """(input_ids, attention_mask, token_type_ids) of B samples of MAX_POS tokens; `padded`:
    every sample ends in padding and the first has only 5 real tokens."""
    rng = np.random.default_rng(B)
    ids = rng.integers(0, VOCAB, (B, MAX_POS))
    mask = np.ones((B, MAX_POS), np.int64)
    if padded:
        mask[:, MAX_POS - 3:] = 0                   # every sample padded: the masked softmax rows
        mask[0, 5:] = 0
    return ids, mask, np.zeros_like(ids)
