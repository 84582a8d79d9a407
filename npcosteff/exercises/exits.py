"""The checks of the exit exercises: gradient equilibrium (notebook 3), prediction
distillation (notebook 5), the entropy exit rule (notebook 6) and choosing an operating
point without the reported data (notebook 7)."""

from __future__ import annotations

import math

import numpy as np

from ..config import CostEffConfig
from ..early_exit import early_exit_forward
from ..losses import entropy as _entropy
from ..losses import log_softmax
from ..losses import soft_cross_entropy_loss
from ..losses import soft_cross_entropy_loss_backward
from ..operating_point import cross_fit
from ..operating_point import simulate_exit
from .compare import as_float_array, call, call_number, call_returning, compare, name_of, passed
from .layers import finite_difference_gradient


# --------------------------------------------------------------------------- gradient equilibrium


def _equilibrium_authors(g_exit, g_hid, g_deeper, l, L):
    """The "authors" rule as ``CostEffModel.backward`` applies it (npcosteff/model.py): at l < L
    each part is scaled on its own, at the last layer nothing is rescaled."""
    if l >= L:
        return g_exit + g_hid + g_deeper
    k = L - l
    return g_exit * (1.0 / (k + 1)) + g_deeper * (k / (k + 1)) + g_hid * (1.0 / (k + 1))


# Rules a learner may write instead, each with what to say when the answer equals it.
_EQUILIBRIUM_MISTAKES = [
    (lambda e, h, g, l, L: e + h + g,
     "It is the plain sum of the three: no rescaling at all (gradient equilibrium off)."),
    (lambda e, h, g, l, L: (e + (L - l) * g) / (L - l + 1) + h,
     "g_hid is added unscaled: that is the older \"exit_layers\" rule; under \"authors\" a loss on h_l is "
     "rescaled together with exit l's."),
    (lambda e, h, g, l, L: ((L - l) * e + h + g) / (L - l + 1),
     "The weight L - l belongs to g_deeper, which carries the L - l exits above layer l, not to g_exit."),
    (lambda e, h, g, l, L: (e + h + g) / 3.0, "It is the plain average of the three gradients; the exits above "
                                             "layer l count L - l times."),
    (lambda e, h, g, l, L: (e + h + (L - l) * g) / max(L - l, 1),
     "The denominator is L - l + 1: exit l and the L - l exits above it."),
]


def _backward_with_rule(model, cache, grad_logits, grad_hidden, rule):
    """``CostEffModel.backward`` written out with the layers' own backwards, with `rule` deciding
    the gradient of each h_l from (g_exit, g_hid, g_deeper). Returns the parameter gradients."""
    from ..nn.attention import attention_backward
    from ..nn.embeddings import embeddings_backward, word_embeddings_backward
    from ..nn.exits import exit_backward
    from ..nn.ffn import ffn_backward
    from ..nn.prefixed import Prefixed

    P = model.params
    G = {n: np.zeros_like(p) for n, p in P.items()}
    L = cache.L
    g_deeper = np.zeros_like(grad_hidden[L])                                 # nothing above the last layer
    for i in reversed(range(L)):
        l = i + 1
        g_exit = exit_backward(grad_logits[i], cache.exits[i], Prefixed(G, f"exits.{i}."))   # (B, T, d)
        g = np.asarray(rule(g_exit.copy(), grad_hidden[l].copy(), g_deeper.copy(), l, L), dtype=np.float64)
        a_cache, f_cache = cache.layers[i]
        da = ffn_backward(g.copy(), f_cache, Prefixed(P, f"encoder.layer.{i}."), Prefixed(G, f"encoder.layer.{i}."))
        g_deeper = attention_backward(da, a_cache, Prefixed(P, f"encoder.layer.{i}.attention."),
                                      Prefixed(G, f"encoder.layer.{i}.attention."))
    emb_p, emb_g = Prefixed(P, "embeddings."), Prefixed(G, "embeddings.")
    d_inputs = embeddings_backward(g_deeper + grad_hidden[0], cache.embeddings, emb_p, emb_g)
    if cache.word is not None:
        word_embeddings_backward(d_inputs, cache.word, emb_p, emb_g)
    return G


def check_gradient_equilibrium(fn, seed: int = 0) -> bool:
    """Check ``fn(g_exit, g_hid, g_deeper, l, L) -> g``: the gradient of h_l under the "authors" rule.

    g_exit, g_hid, g_deeper (B, T, d): what reaches the output h_l of layer l (1-based, of L)
    from exit l, from a loss on h_l itself and from layer l + 1 (zeros at l = L). The answer is
    ``(g_exit + g_hid + (L - l) g_deeper) / (L - l + 1)``. Compared first with the rule as
    ``CostEffModel.backward`` applies it, on random gradients, then inside a whole backward
    pass: the learner's rule decides every h_l of a small float64 model with an exit after
    every layer, and all parameter gradients must equal ``model.backward``'s with
    ``gradient_equilibrium="authors"``.
    """
    rng = np.random.default_rng(seed)
    name = name_of(fn)
    shape = (2, 3, 4)
    for L, l in ((6, 1), (6, 3), (6, 5), (6, 6), (4, 2), (2, 1)):
        g_exit, g_hid, g_deeper = (rng.standard_normal(shape) for _ in range(3))
        if l == L:
            g_deeper = np.zeros(shape)
        ok, got = call(fn, g_exit.copy(), g_hid.copy(), g_deeper.copy(), l, L)
        if not ok:
            return False
        expected = _equilibrium_authors(g_exit, g_hid, g_deeper, l, L)
        try:
            compare(name, "the gradient of h_l", got, expected, 1e-12, f" for layer l = {l} of L = {L}")
        except AssertionError as e:
            got_arr = as_float_array(got)
            for rule, why in _EQUILIBRIUM_MISTAKES:
                wrong = rule(g_exit, g_hid, g_deeper, l, L)
                if got_arr.shape == wrong.shape and np.allclose(got_arr, wrong, rtol=1e-9, atol=1e-12):
                    raise AssertionError(f"{e} {why}") from None
            raise
    model = _tiny_exit_model(seed)
    N, T = 3, 6
    ids = rng.integers(1, model.config.vocab_size, size=(N, T))
    mask = np.ones_like(ids)
    mask[0, -2:] = 0
    out = model(ids * mask, mask, np.zeros_like(ids), gradient_equilibrium="authors", return_cache=True)
    grad_logits = [rng.standard_normal(z.shape) for z in out.logits]                   # one per exit
    grad_hidden = [rng.standard_normal(h.shape) * mask[:, :, None] for h in out.hidden_states]   # h_0 .. h_L
    model.zero_grad()
    model.backward(out.cache, grad_hidden_states=grad_hidden, grad_logits=grad_logits)
    grads = _backward_with_rule(model, out.cache, grad_logits, grad_hidden, fn)
    for n in model.param_names:
        if n.endswith("key.bias"):        # exactly 0 (softmax ignores a shift of its row): both hold rounding noise
            continue
        compare(name, f"the gradient of {n}", grads[n], model.grads[n], 1e-10,
                 " when your rule decides every h_l inside the backward pass of a 4-layer model (compared with "
                 "CostEffModel.backward, gradient_equilibrium=\"authors\")")
    return passed(name, "the rule of CostEffModel.backward; inside a whole backward pass, every parameter "
                         "gradient equals the library's")


# --------------------------------------------------------------------------- prediction distillation


def check_distillation_loss(fn, seed: int = 0) -> bool:
    """Check ``fn(z, t, T) -> (loss, dz)``: prediction distillation and its gradient.

    z, t (B, C): student and teacher logits; T: the temperature. The loss is
    ``mean_b -sum_c softmax(t/T)[b,c] log_softmax(z/T)[b,c]`` (a cross-entropy against the
    teacher's soft targets, no T^2 factor) and dz its gradient with respect to z. Compared with
    ``losses.soft_cross_entropy_loss`` and its backward, including logits so large that
    ``log(softmax(.))`` overflows, and with central finite differences of the learner's loss.
    """
    rng = np.random.default_rng(seed)
    name = name_of(fn)
    cases = [((4, 3), 1.0, 1.0), ((6, 5), 2.0, 1.0), ((3, 2), 0.5, 2.0), ((5, 4), 1.0, 400.0)]
    for (B, C), T, scale in cases:
        z, t = scale * rng.standard_normal((B, C)), scale * rng.standard_normal((B, C))
        loss, cache = soft_cross_entropy_loss(z, t, T)
        dz = soft_cross_entropy_loss_backward(cache)
        ok, out = call_returning(fn, 2, "two things (loss, dz)", z.copy(), t.copy(), T)
        if not ok:
            return False
        where = f" for B = {B}, C = {C}, T = {T} and logits of size ~{scale:g}"
        got_loss = out[0]
        if got_loss is None or not np.issubdtype(np.asarray(got_loss).dtype, np.number):
            raise AssertionError(f"{name} returned {got_loss!r} for the loss; expected a number{where}")
        got_loss = np.asarray(got_loss, dtype=np.float64)
        if np.ndim(got_loss) == 0 and not np.isfinite(got_loss):
            raise AssertionError(f"{name}: the loss is {float(got_loss)}{where}. Compute log q with log_softmax "
                                 "(the row maximum subtracted first), not log(softmax(.)), which underflows to log 0.")
        log_p = log_softmax(t / T)
        kl = loss + float((np.exp(log_p) * log_p).sum(axis=1).mean())       # cross-entropy - teacher's entropy
        if np.ndim(got_loss) == 0 and abs(kl - loss) > 1e-6 and abs(float(got_loss) - kl) <= 1e-9 * max(1.0, abs(loss)):
            raise AssertionError(f"{name}: the loss is {float(got_loss):.6g}{where}, expected {loss:.6g}: it is the KL "
                                 "divergence, the cross-entropy minus the teacher's entropy (a constant, so the "
                                 "gradient is the same); the library's loss is the cross-entropy.")
        compare(name, "the loss", got_loss, np.float64(loss), 1e-10, where)
        compare(name, "dz", out[1], dz, 1e-10, where)
    z, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    numeric = finite_difference_gradient(lambda: float(fn(z, t, 2.0)[0]), z)
    compare(name, "dz", fn(z.copy(), t.copy(), 2.0)[1], numeric, 1e-6,
             " (against finite differences of your loss, T = 2)")
    return passed(name, "loss and dz equal losses.soft_cross_entropy_loss and its backward, and finite differences")


# --------------------------------------------------------------------------- early exit


def _tiny_exit_model(seed):
    """A small random multi-exit BERT in float64 (4 layers, exits after every layer)."""
    from ..model import CostEffModel

    config = CostEffConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=16, num_labels=3, exit_start=1,
                           pooler="mean")
    model = CostEffModel(config, dtype=np.float64, seed=seed)
    for k in config.exit_layers:                       # exits of different confidence
        model.params[f"exits.{k}.classifier.weight"] *= 20.0 * (k + 1)
    return model


def check_entropy_exit(fn, seed: int = 0) -> bool:
    """Check ``fn(logits, tau) -> exit_layers`` (N,): COST-EFF's entropy exit rule.

    ``logits`` is a list of (N, C) arrays, one per exit, shallowest first (exit k after layer
    k); a sample leaves at the first exit whose entropy ``-sum p log p`` of ``p = softmax(z)``
    is below tau, and at the last one otherwise. The answers are the 1-based layers, compared
    with ``early_exit_forward`` of the library on a small random model, for several tau.
    """
    rng = np.random.default_rng(seed)
    name = name_of(fn)
    model = _tiny_exit_model(seed)
    N, T = 24, 8
    ids = rng.integers(1, model.config.vocab_size, size=(N, T))
    lengths = rng.integers(2, T + 1, size=N)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    types = np.zeros_like(ids)
    logits = [np.asarray(z) for z in model(ids, mask, types).logits]
    ent = np.stack([_entropy(z) for z in logits])                       # (L, N)
    log_c = math.log(model.config.num_labels)
    # thresholds: never (0), always at exit 1 (above log C), and the quartiles of the entropies
    # moved off any sample's entropy, so that rounding cannot decide a comparison.
    candidates = [0.0, log_c + 0.1] + list(np.quantile(ent, [0.25, 0.5, 0.75]))
    taus = []
    for tau in candidates:
        gap = np.abs(ent - tau).min()
        if gap < 1e-6:
            tau = tau + 1e-4
        taus.append(float(tau))
    for tau in taus:
        expected = early_exit_forward(model, ids, mask, types, threshold=tau).exit_layers
        ok, got = call(fn, [z.copy() for z in logits], tau)
        if not ok:
            return False
        got_arr = np.asarray(got)
        if got_arr.shape != expected.shape:
            raise AssertionError(f"{name}: the exit layers have shape {got_arr.shape}, expected {expected.shape} "
                                 f"(one 1-based layer per sample)")
        wrong = np.flatnonzero(got_arr != expected)
        if wrong.size:
            i = int(wrong[0])
            per_exit = ", ".join(f"{e:.3f}" for e in ent[:, i])
            hint = ""
            if np.all(got_arr + 1 == expected) or np.all(got_arr == expected - 1):
                hint = " The layers look 0-based: exit k (0-based) is layer k + 1."
            raise AssertionError(
                f"{name}: wrong exit for {wrong.size} of {N} samples at tau = {tau:.4f}; sample {i} should "
                f"leave at layer {int(expected[i])}, got {got_arr[i]} (its entropies per exit: {per_exit})." + hint)
    return passed(name, f"the same exit layers as early_exit_forward for tau in {[round(t, 3) for t in taus]}")


# --------------------------------------------------------------------------- operating point


class _ReportHalf:
    """Stands for the half of dev a choice is reported on: any use of it fails the check."""

    def __init__(self, fn_name):
        object.__setattr__(self, "_fn_name", fn_name)

    def _touched(self, how):
        raise AssertionError(f"{self._fn_name} read the report half ({how}): the threshold must be chosen on "
                             "the choose half alone; the report half only scores the choice afterwards, "
                             "otherwise its accuracy is tuned on the data it reports")

    def __getitem__(self, key):
        self._touched(f"report[{key!r}]")

    def __getattr__(self, attr):
        self._touched(f"report.{attr}")

    def __iter__(self):
        self._touched("iterating over it")

    def __len__(self):
        self._touched("len(report)")

    def __contains__(self, key):
        self._touched("`in report`")

    def __array__(self, *args, **kwargs):
        self._touched("np.asarray(report)")


def _exit_data(rng, n, E, difficulty):
    """Synthetic exits: logits (E, n, 2), labels (n,), teacher right (n,), FLOPs (E, n)."""
    seen = rng.integers(0, 2, n)                                           # the class the exits lean to
    sign = np.where(seen == 1, 1.0, -1.0)
    hardness = rng.random(n) * difficulty                                   # hard samples stay unsure longer
    logits = np.zeros((E, n, 2))
    for k in range(E):
        margin = (0.6 + 0.9 * k) * (1.0 - hardness) + 1.2 * rng.standard_normal(n)
        logits[k, :, 1] = sign * margin / 2
        logits[k, :, 0] = -sign * margin / 2
    labels = np.where(rng.random(n) < 0.12, 1 - seen, seen)                # some samples every exit gets wrong
    tokens = rng.integers(5, 60, n)
    flops = np.arange(1, E + 1)[:, None] * (1e6 * tokens + 1e4 * tokens ** 2)[None, :]
    teacher_right = rng.random(n) < 0.88
    return logits, labels, teacher_right, flops.astype(np.float64)


def _score_choice(half, tau):
    """(accuracy, mean FLOPs) of entropy threshold tau on one half."""
    E, n, _ = half["logits"].shape
    layers, chosen = simulate_exit(half["logits"], list(range(1, E + 1)), threshold=tau)
    return float(np.mean(chosen.argmax(1) == half["labels"])), float(half["flops"][layers - 1, np.arange(n)].mean())


def check_operating_point(fn, seed: int = 0) -> bool:
    """Check ``fn(choose, report, thresholds, target) -> threshold``: an operating point chosen on one half.

    choose: a dict of one half of dev: "logits" (E, n, C) every exit's logits, shallowest first
    (exit k after layer k + 1), "labels" (n,), "teacher_right" (n,) whether the teacher is right
    on each sample, "flops" (E, n) the FLOPs of sample i when it leaves at exit k. report: the
    other half, which must not be read. The answer is the threshold of `thresholds` (entropy
    exit) with the fewest mean FLOPs on `choose` whose accuracy on `choose` is at least
    ``target`` times the teacher's accuracy on `choose`; if none is, the most accurate one.
    Compared with the threshold ``operating_point.cross_fit`` picks on the same half (a tie,
    another threshold with the same accuracy and FLOPs, is accepted); the report half is an
    object that fails the check when touched.
    """
    rng = np.random.default_rng(seed)
    name = name_of(fn)
    thresholds = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.69]
    E, n = 4, 60
    picked = set()
    scenarios = ((0.6, 0.965), (0.6, 0.9), (0.9, 1.0), (0.3, 0.8), (0.6, 1.5))    # (difficulty, target)
    for difficulty, target in scenarios:
        N = 2 * n
        logits, labels, teacher_right, flops = _exit_data(rng, N, E, difficulty)
        order = np.random.default_rng(0).permutation(N)                  # cross_fit's halves for seed 0
        choose_idx = np.sort(order[: N // 2])
        fit = cross_fit("sst2", logits, list(range(1, E + 1)), labels, thresholds,
                        cost=lambda layers: flops[layers - 1, np.arange(N)],
                        teacher_metric_of=lambda idx: float(teacher_right[idx].mean()), target=target)
        expected, reached = fit.thresholds[0], fit.reached[0]            # chosen on choose_idx
        choose = {"logits": logits[:, choose_idx], "labels": labels[choose_idx],
                  "teacher_right": teacher_right[choose_idx], "flops": flops[:, choose_idx]}
        for v in choose.values():
            v.setflags(write=False)
        ok, got = call_number(fn, "one threshold (a number)", choose, _ReportHalf(name), list(thresholds), target)
        if not ok:
            return False
        if got not in thresholds:
            raise AssertionError(f"{name} returned {got!r}, which is not one of the thresholds {thresholds}")
        picked.add(float(expected))
        if got == expected:
            continue
        goal = target * float(teacher_right[choose_idx].mean())
        got_acc, got_flops = _score_choice(choose, got)
        exp_acc, exp_flops = _score_choice(choose, expected)
        if got_acc == exp_acc and abs(got_flops - exp_flops) <= 1e-12 * exp_flops:
            continue                                                     # a tie: the same exits
        rule = ("the fewest FLOPs among the thresholds whose accuracy reaches the goal" if reached else
                "no threshold reaches the goal, so the most accurate one (the fewest FLOPs among equals)")
        raise AssertionError(
            f"{name}: chose tau = {got} for target {target} (goal: accuracy >= {target} x the teacher's "
            f"{teacher_right[choose_idx].mean():.3f} = {goal:.4f} on the choose half); on the choose half it has "
            f"accuracy {got_acc:.4f} at {got_flops:.4g} FLOPs per sample, while tau = {expected} has accuracy "
            f"{exp_acc:.4f} at {exp_flops:.4g} FLOPs: {rule}.")
    return passed(name, f"chooses as operating_point.cross_fit does, from the choose half alone, for "
                         f"{len(scenarios)} targets (thresholds chosen: {sorted(picked)})")
