"""AdamW, the linear schedule and gradient clipping against torch / transformers."""

import copy

import numpy as np
import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from npcosteff.optim import AdamW, LinearSchedule, clip_grad_norm, no_decay

# Odd shapes and real names: two matrices and a classifier decay, the biases and the
# LayerNorm weights do not.
SHAPES = {
    "embeddings.word_embeddings.weight": (37, 11),
    "embeddings.LayerNorm.weight": (11,),
    "encoder.layer.0.attention.self.query.weight": (13, 11),
    "encoder.layer.0.attention.self.query.bias": (13,),
    "encoder.layer.0.output.LayerNorm.bias": (11,),
    "exits.0.classifier.weight": (3, 11),
}
# Written out by hand rather than with no_decay(), so the test checks the grouping too.
DECAY = {"embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
         "exits.0.classifier.weight"}


def make_params(rng, dtype=np.float64):
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}


def make_grads(rng, k, dtype=np.float64):
    """Fresh random gradients for step k: tiny on even steps (total norm ~0.3, below
    max_norm = 1) and large on odd steps (total norm ~30, clipped)."""
    scale = 0.01 if k % 2 == 0 else 1.0
    grads = {name: (scale * rng.standard_normal(shape)).astype(dtype) for name, shape in SHAPES.items()}
    if k == 7:   # one parameter without a gradient: skipped, as a torch parameter whose .grad is None
        grads["exits.0.classifier.weight"] = None
    return grads


def max_rel_diff(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def test_no_decay_rule():
    assert no_decay("encoder.layer.3.output.dense.bias")
    assert no_decay("embeddings.LayerNorm.weight")
    assert no_decay("encoder.layer.0.attention.output.LayerNorm.weight")
    assert not no_decay("encoder.layer.0.attention.self.query.weight")
    assert not no_decay("embeddings.word_embeddings.projection")
    assert {n for n in SHAPES if not no_decay(n)} == DECAY


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.98)])   # 0.3: torch's other lerp branch
def test_adamw_schedule_clipping_match_torch_float64(betas):
    rng = np.random.default_rng(0)
    params = make_params(rng)
    torch_params = {n: torch.nn.Parameter(torch.tensor(p)) for n, p in params.items()}
    base_lr, wd, eps, max_norm, warmup, total = 0.05, 0.1, 1e-6, 1.0, 3, 20

    groups = [{"params": [torch_params[n] for n in SHAPES if n in DECAY], "weight_decay": wd},
              {"params": [torch_params[n] for n in SHAPES if n not in DECAY], "weight_decay": 0.0}]
    t_opt = torch.optim.AdamW(groups, lr=base_lr, betas=betas, eps=eps, foreach=False)

    def lr_lambda(k):   # the linear warmup/decay factor, written independently of npcosteff
        if k < warmup:
            return k / warmup
        return max(0.0, (total - k) / (total - warmup))
    t_sched = torch.optim.lr_scheduler.LambdaLR(t_opt, lr_lambda)

    opt = AdamW(params, lr=base_lr, betas=betas, eps=eps, weight_decay=wd)
    sched = LinearSchedule(base_lr, warmup, total)
    clipped = []
    for k in range(total):
        grads = make_grads(rng, k)
        for n, p in torch_params.items():
            p.grad = None if grads[n] is None else torch.tensor(grads[n])
        t_norm = torch.nn.utils.clip_grad_norm_(list(torch_params.values()), max_norm).item()
        norm = clip_grad_norm(grads, max_norm)
        # 1e-12: the same sums in float64, only summation order may differ
        assert abs(norm - t_norm) <= 1e-12 * t_norm
        clipped.append(norm > max_norm)

        t_opt.step()
        t_sched.step()
        opt.step(grads, lr=sched.lr_at(k))
        for n in SHAPES:
            # 1e-12: torch fuses some multiply-adds (lerp, addcdiv), NumPy rounds each
            # operation; 20 steps of float64 leave ~1e-15 relative differences
            assert max_rel_diff(params[n], torch_params[n].detach().numpy()) <= 1e-12, (k, n)
            if grads[n] is not None:
                assert max_rel_diff(grads[n], torch_params[n].grad.numpy()) <= 1e-12, (k, n)
    assert any(clipped) and not all(clipped)      # both branches of the clipping ran
    assert opt.step_count["exits.0.classifier.weight"] == total - 1
    assert opt.step_count["embeddings.LayerNorm.weight"] == total
    assert opt.num_steps == total
    state = t_opt.state[torch_params["exits.0.classifier.weight"]]
    assert state["step"].item() == total - 1
    np.testing.assert_allclose(opt.exp_avg_sq["exits.0.classifier.weight"],
                               state["exp_avg_sq"].numpy(), rtol=1e-12, atol=0)  # as above


def test_adamw_matches_torch_float32():
    rng = np.random.default_rng(1)
    params = make_params(rng, np.float32)
    torch_params = {n: torch.nn.Parameter(torch.tensor(p)) for n, p in params.items()}
    t_opt = torch.optim.AdamW(
        [{"params": [torch_params[n] for n in SHAPES if n in DECAY], "weight_decay": 0.01},
         {"params": [torch_params[n] for n in SHAPES if n not in DECAY], "weight_decay": 0.0}],
        lr=1e-2, foreach=False)
    opt = AdamW(params, lr=1e-2)
    for k in range(5):
        grads = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
        for n, p in torch_params.items():
            p.grad = torch.tensor(grads[n])
        t_opt.step()
        opt.step(grads)
        for n in SHAPES:
            assert params[n].dtype == np.float32
            # float32 eps is 1.2e-7; torch's fused multiply-adds round differently from
            # NumPy's separate operations, a few ulps over 5 steps
            np.testing.assert_allclose(params[n], torch_params[n].detach().numpy(),
                                       rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("warmup,total", [(3, 20), (0, 10), (10, 10), (1, 1), (0, 0), (7, 5)])
def test_schedule_matches_transformers(warmup, total):
    base_lr = 3e-5
    t_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    hf = get_linear_schedule_with_warmup(t_opt, warmup, total)
    sched = LinearSchedule(base_lr, warmup, total)
    for k in range(total + 3):   # past the end too: the rate stays at 0
        # exact: both compute base_lr * (same float quotient)
        assert sched.lr_at(k) == hf.get_last_lr()[0], k
        t_opt.step()
        hf.step()


def test_schedule_restart_with_new_base_lr():
    sched = LinearSchedule(1e-5, 4, 12)
    lrs = [sched.lr_at(k) for k in range(12)]
    sched.base_lr = 1e-5 * 1.12 ** 2          # docs/method.md, 5: lr * (1 + lr_restore)^t after prune t
    t_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-5 * 1.12 ** 2)
    hf = get_linear_schedule_with_warmup(t_opt, 4, 12)
    for k in range(12):
        assert sched.lr_at(k) == hf.get_last_lr()[0]   # exact, as above
        assert sched.lr_at(k) > lrs[k] or lrs[k] == 0.0
        t_opt.step()
        hf.step()
    assert LinearSchedule.from_ratio(2e-5, 95, 0.1).warmup_steps == 10   # ceil(9.5)


def test_state_dict_round_trip_gives_identical_trajectory():
    rng = np.random.default_rng(2)
    params = make_params(rng)
    all_grads = [make_grads(rng, k) for k in range(12)]
    sched = LinearSchedule(0.05, 3, 12)
    opt = AdamW(params, lr=0.05)
    for k in range(6):
        opt.step(all_grads[k], lr=sched.lr_at(k))
    saved_params = copy.deepcopy(params)
    saved_state = opt.state_dict()
    for k in range(6, 12):
        opt.step(all_grads[k], lr=sched.lr_at(k))

    resumed = AdamW(saved_params, lr=0.05)
    resumed.load_state_dict(saved_state)
    assert resumed.num_steps == 6
    for k in range(resumed.num_steps, 12):
        resumed.step(all_grads[k], lr=sched.lr_at(k))
    for n in SHAPES:
        np.testing.assert_array_equal(saved_params[n], params[n])   # same operations, same bits
    # the saved state is a copy: stepping afterwards did not change it
    assert saved_state["step"]["embeddings.LayerNorm.weight"] == 6
    assert not np.array_equal(saved_state["exp_avg"]["embeddings.LayerNorm.weight"],
                              opt.exp_avg["embeddings.LayerNorm.weight"])


def test_load_state_dict_rejects_mismatched_state():
    rng = np.random.default_rng(3)
    opt = AdamW(make_params(rng), lr=0.01)
    state = opt.state_dict()
    bad = copy.deepcopy(state)
    bad["exp_avg"]["embeddings.LayerNorm.weight"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"\(5,\).*\(11,\)"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(state)
    del bad["exp_avg_sq"]["exits.0.classifier.weight"]
    with pytest.raises(KeyError, match="exits.0.classifier.weight"):
        opt.load_state_dict(bad)


def test_rebuild_after_pruning_starts_fresh():
    rng = np.random.default_rng(4)
    params = make_params(rng)
    opt = AdamW(params, lr=0.01)
    opt.step(make_grads(rng, 1))
    name = "encoder.layer.0.attention.self.query.weight"
    params[name] = params[name][:7].copy()                 # pruning keeps 7 of 13 rows
    params[name.replace("weight", "bias")] = params[name.replace("weight", "bias")][:7].copy()
    grads = {n: rng.standard_normal(p.shape) for n, p in params.items()}
    with pytest.raises(ValueError, match=r"changed shape from \(13, 11\) to \(7, 11\).*rebuild"):
        opt.step(grads)

    opt.rebuild(params)
    fresh_params = copy.deepcopy(params)
    fresh = AdamW(fresh_params, lr=0.01)
    opt.step(grads)
    fresh.step(grads)
    assert opt.step_count[name] == 1
    for n in params:
        np.testing.assert_array_equal(params[n], fresh_params[n])   # same operations, same bits


def test_optimizer_errors():
    rng = np.random.default_rng(5)
    params = make_params(rng)
    with pytest.raises(ValueError, match="learning rate"):
        AdamW(params, lr=-1e-3)
    with pytest.raises(ValueError, match=r"betas\[0\] = 1.0 is outside \[0, 1\)"):
        AdamW(params, lr=1e-3, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match=r"betas\[1\] = -0.1"):
        AdamW(params, lr=1e-3, betas=(0.9, -0.1))
    with pytest.raises(KeyError, match="nothing.weight"):
        AdamW(params, lr=1e-3, names=["nothing.weight"])
    with pytest.raises(TypeError, match="floating-point"):
        AdamW({"a.weight": np.zeros(3, dtype=np.int64)}, lr=1e-3)

    opt = AdamW(params, lr=1e-3)
    before = copy.deepcopy(params)
    grads = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
    with pytest.raises(ValueError, match="learning rate"):
        opt.step(grads, lr=-0.5)
    with pytest.raises(KeyError, match="encoder.layer.9.output.dense.bias"):
        opt.step({**grads, "encoder.layer.9.output.dense.bias": np.zeros(11)})
    with pytest.raises(ValueError, match=r"query.bias.*shape \(12,\).*shape \(13,\)"):
        opt.step({**grads, "encoder.layer.0.attention.self.query.bias": np.zeros(12)})
    for n in SHAPES:   # checks come before any update: a rejected step changes nothing
        np.testing.assert_array_equal(params[n], before[n])
    assert opt.num_steps == 0

    with pytest.raises(ValueError, match=r"learning-rate scale of 'embeddings.*must be a finite number > 0"):
        AdamW(params, lr=1e-3, lr_scale=lambda name: 0.0)

    part = AdamW(params, lr=1e-3, names=["embeddings.LayerNorm.weight"])
    with pytest.raises(KeyError, match="optimizer's names"):
        part.step(grads)

    with pytest.raises(ValueError, match="learning rate"):
        LinearSchedule(-1.0, 1, 10)
    sched = LinearSchedule(1.0, 1, 10)
    with pytest.raises(ValueError, match="learning rate"):
        sched.base_lr = -2.0
    with pytest.raises(ValueError, match="step must be >= 0"):
        sched.lr_at(-1)
    with pytest.raises(ValueError, match="warmup_steps"):
        LinearSchedule(1.0, -1, 10)


def test_clip_grad_norm_values_and_errors():
    rng = np.random.default_rng(6)
    grads = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
    flat = np.concatenate([g.ravel() for g in grads.values()])
    original = copy.deepcopy(grads)
    norm = clip_grad_norm(grads, max_norm=2.0)
    # 1e-12: one flat float64 sum against the norm of per-tensor norms
    assert abs(norm - np.linalg.norm(flat)) <= 1e-12 * norm
    new_flat = np.concatenate([g.ravel() for g in grads.values()])
    assert abs(np.linalg.norm(new_flat) - 2.0 * norm / (norm + 1e-6)) <= 1e-12
    np.testing.assert_allclose(new_flat, flat * 2.0 / (norm + 1e-6), rtol=1e-14, atol=0)  # one multiply

    small = copy.deepcopy(original)
    norm = clip_grad_norm(small, max_norm=1e3)    # below the threshold: untouched
    for n in SHAPES:
        np.testing.assert_array_equal(small[n], original[n])

    only = copy.deepcopy(original)
    name = "exits.0.classifier.weight"
    clip_grad_norm(only, max_norm=0.5, names=[name])
    assert abs(np.linalg.norm(only[name]) - 0.5) < 1e-6      # 1e-6: the +1e-6 of torch's rule
    np.testing.assert_array_equal(only["embeddings.LayerNorm.weight"],
                                  original["embeddings.LayerNorm.weight"])

    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip_grad_norm(grads, 0.0)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip_grad_norm(grads, -1.0)
    with pytest.raises(KeyError, match="missing.bias"):
        clip_grad_norm(grads, 1.0, names=["missing.bias"])
    bad = {"a.weight": np.array([1.0, np.inf])}
    with pytest.raises(FloatingPointError, match="inf"):
        clip_grad_norm(bad, 1.0, error_if_nonfinite=True)


def test_lr_scale_is_a_learning_rate_per_parameter():
    # With lr_scale, each parameter moves exactly as under a plain AdamW at lr * its scale.
    rng = np.random.default_rng(11)
    params = make_params(rng)
    grads = [{n: rng.standard_normal(s) for n, s in SHAPES.items()} for _ in range(3)]
    scaled = copy.deepcopy(params)
    opt = AdamW(scaled, lr=1e-2, lr_scale=lambda name: 3.0 if "LayerNorm" in name else 1.0)
    plain = {k: copy.deepcopy(params) for k in (1.0, 3.0)}
    opts = {k: AdamW(plain[k], lr=1e-2 * k) for k in plain}
    for g in grads:
        opt.step(g)
        for o in opts.values():
            o.step(g)
    for n in SHAPES:
        expected = plain[3.0 if "LayerNorm" in n else 1.0][n]
        np.testing.assert_array_equal(scaled[n], expected)
    assert any("LayerNorm" in n for n in SHAPES) and any("LayerNorm" not in n for n in SHAPES)
