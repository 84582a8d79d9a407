"""The head-to-columns map every module uses, and the one vocabulary of gradient equilibrium."""

import numpy as np
import pytest

from npcosteff.equilibrium import EQUILIBRIUM_SETTINGS, equilibrium_rule
from npcosteff.heads import head_columns, head_span, merge_heads, per_head, split_heads


def test_head_columns_and_spans_name_each_heads_own_columns():
    d_h = 3
    np.testing.assert_array_equal(head_columns([2, 0], d_h), [6, 7, 8, 0, 1, 2])   # head by head, in order
    x = np.arange(4 * d_h)                                                           # 4 heads' columns
    assert list(x[head_span(1, 3, d_h)]) == list(x[head_columns([1, 2], d_h)])
    np.testing.assert_array_equal(per_head(np.arange(12.0), 4), [3.0, 12.0, 21.0, 30.0])


def test_split_then_merge_heads_is_the_identity_and_splits_by_columns():
    rng = np.random.default_rng(0)
    B, T, H, d_h = 2, 5, 3, 4
    x2 = rng.standard_normal((B * T, H * d_h))
    heads = split_heads(x2, B, T, H)                                                 # (B, H, T, d_h)
    assert heads.shape == (B, H, T, d_h)
    np.testing.assert_array_equal(heads[1, 2, 4], x2[1 * T + 4, head_columns([2], d_h)])
    np.testing.assert_array_equal(merge_heads(heads), x2)


def test_equilibrium_speaks_one_vocabulary():
    assert EQUILIBRIUM_SETTINGS == ("authors", "exit_layers", "off")
    assert equilibrium_rule(None, True, 6) == "authors" and equilibrium_rule(None, False, 6) is None
    assert equilibrium_rule("exit_layers", False, 6) == "exit_layers"
    assert equilibrium_rule("off", True, 6) is None
    assert equilibrium_rule("authors", True, 1) is None          # one exit: nothing to balance
    for wrong in (True, False, "on", "Authors"):
        with pytest.raises(ValueError, match="gradient_equilibrium must be one of"):
            equilibrium_rule(wrong, True, 6)
