"""Taylor importance (docs/method.md, 4) against the torch reference, float64: every per-weight score
``|w * sum_batches |grad||``, every head score and every FFN-neuron score, from the losses of
all exits and from the last exit only, on a slender student (uneven heads and FFN widths, a
factorized word embedding) with padding in the batches."""

import numpy as np
import pytest
import torch

from npcosteff.importance import taylor_importance

from .helpers import assert_close_by_name, make_pair, odd_batch, odd_config
from .reference import taylor_importance as ref_taylor_importance
from .reference import to_numpy

# Both sides compute the same float64 gradients along different but equally exact paths
# (hand-written backward vs autograd): differences are a few hundred ulps of the largest
# score. 1e-10 relative leaves a wide margin and still catches any wrong term or factor.
RTOL = 1e-10


def _case(regression: bool, device):
    """A slender student and a multi-exit TA teacher, each as an (npcosteff, reference) pair."""
    task = dict(num_labels=1, problem_type="regression") if regression else dict(num_labels=3)
    student_config = odd_config(heads_per_layer=[4, 2, 3], intermediate_per_layer=[80, 33, 57],
                                embedding_rank=10, **task)
    student, ref_student = make_pair(student_config, torch.float64, device, seed=2)
    teacher, ref_teacher = make_pair(odd_config(**task), torch.float64, device, seed=11)
    return student, ref_student, teacher, ref_teacher


def _batches(regression: bool, n=2):
    rng = np.random.default_rng(5)
    batches = []
    for k in range(n):
        ids, mask, tt = odd_batch(rng, lengths=(11, 7, 3, 9) if k == 0 else (4, 11, 6, 8))
        labels = rng.normal(2.5, 1.0, len(ids)) if regression else rng.integers(0, 3, len(ids))
        batches.append(dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels))
    return batches


# The importance rules: the default is the authors' (gradient equilibrium on, the hidden term a
# plain MSE over padded tokens, the last-exit ablation without a hard term); "plain" is the
# plain gradient of the training losses. The reference builds the authors' rule literally
# (two gradient_rescale hooks per layer, zero-padding and torch.nn.MSELoss).
PAD_TO = 16   # longer than every test batch (11 tokens)
RULES = {
    "authors": (dict(), dict(gradient_equilibrium="authors", hidden_pad_to=PAD_TO, last_exit_hard=False)),
    "plain": (dict(gradient_equilibrium="off", hidden_pad_to=None, last_exit_hard=True),
              dict(gradient_equilibrium=False, hidden_pad_to=None, last_exit_hard=True)),
}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("regression", [False, True], ids=["classification", "regression"])
@pytest.mark.parametrize("last_exit_only", [False, True], ids=["all_exits", "last_exit_only"])
def test_importance_matches_autograd(device, last_exit_only, regression, rule):
    student, ref_student, teacher, ref_teacher = _case(regression, device)
    batches = _batches(regression)
    temperature = 1.0 if regression else 2.0       # regression distills with MSE: no temperature
    ours_kw, ref_kw = RULES[rule]
    if rule == "authors":
        ours_kw = dict(hidden_pad_to=PAD_TO)      # every other option at its default
    if last_exit_only:
        ref_kw = {**ref_kw, "gradient_equilibrium": False}   # the ablation runs outside multi-exit mode

    ours = taylor_importance(student, batches, teacher, last_exit_only=last_exit_only,
                             temperature=temperature, progress=False, **ours_kw)
    with torch.no_grad():
        teacher_outs = [ref_teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in batches]
    ref = ref_taylor_importance(ref_student, batches, teacher_outs, temperature=temperature,
                                regression=regression, last_exit_only=last_exit_only, **ref_kw)

    ref_scores = {n: to_numpy(s) for n, s in ref["weight_scores"].items()}
    assert sorted(ref_scores) == sorted(ours.weights)
    assert_close_by_name(ours.weights, ref_scores, student.param_names, RTOL, what="importance score")
    for i in range(student.config.num_hidden_layers):
        # Sums of non-negative scores, far from zero: elementwise relative tolerance.
        np.testing.assert_allclose(ours.heads[i], to_numpy(ref["head_scores"][i]), rtol=RTOL, err_msg=f"heads {i}")
        np.testing.assert_allclose(ours.neurons[i], to_numpy(ref["neuron_scores"][i]), rtol=RTOL,
                                   err_msg=f"neurons {i}")
    # The switch matters where it should: with the last exit alone no loss reaches exit 1.
    exit_score = ours.weights["exits.0.classifier.weight"]
    assert (np.abs(exit_score).max() == 0) == last_exit_only


def test_importance_rules_rank_differently(device):
    """The authors' rule and the plain one must give different scores (neither is a no-op)."""
    student, _, teacher, _ = _case(False, device)
    batches = _batches(False)
    a = taylor_importance(student, batches, teacher, progress=False, hidden_pad_to=PAD_TO)
    b = taylor_importance(student, batches, teacher, progress=False, **RULES["plain"][0])
    for i in range(student.config.num_hidden_layers):
        assert np.abs(a.heads[i] - b.heads[i]).max() > 1e-3 * np.abs(b.heads[i]).max(), f"layer {i}"
