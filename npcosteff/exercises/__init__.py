"""Checks for the exercises of the tutorial notebooks.

Each ``check_*`` function calls a learner's function on random inputs (with a random upstream
gradient, never ones: with a gradient of ones a transposed or mis-summed result can still
pass), compares what it returns with the library's plain NumPy code or with central finite
differences, prints a one-line verdict and returns True. When something is wrong it raises
an AssertionError that says which output is wrong, how large the error is, where it is
largest and what shape was expected; when a learner's function still raises
NotImplementedError (the stub as handed out), the check says so and returns False, so that
the rest of the notebook still runs.

    check_flops(fn)                    fn(n, d, A, F) -> FLOPs of one layer                  (notebook 1)
    check_softmax_backward(fn)         fn(dP, P) -> dS                                       (notebook 2)
    check_attention_backward(fn)       fn(dO, Q, K, V, P) -> (dQ, dK, dV)                    (notebook 2)
    check_gradient_equilibrium(fn)     fn(g_exit, g_hid, g_deeper, l, L) -> gradient of h_l  (notebook 3)
    check_head_scores(fn)              fn(W_O, grads, num_heads) -> (H,)                     (notebook 4)
    check_neuron_scores(fn)            fn(s_in, s_out) -> (F,)                               (notebook 4)
    check_ffn_slice(fn)                fn(W_I, b_I, W_O, keep) -> (W_I', b_I', W_O')         (notebook 4)
    check_low_rank_embedding(fn)       fn(E, r) -> (A, P), E ~ A @ P                         (notebook 4)
    check_distillation_loss(fn)        fn(z, t, T) -> (loss, dz)                             (notebook 5)
    check_entropy_exit(fn)             fn(logits, tau) -> exit layers (N,), 1-based          (notebook 6)
    check_operating_point(fn)          fn(choose, report, thresholds, target) -> threshold   (notebook 7)
    check_gradient(forward, backward, inputs)   any backward, by finite differences

Everything is computed in float64, so the tolerances only have to absorb rounding.
"""

from .exits import check_distillation_loss, check_entropy_exit, check_gradient_equilibrium, check_operating_point
from .layers import check_attention_backward, check_flops, check_gradient, check_softmax_backward, \
    finite_difference_gradient
from .width import check_ffn_slice, check_head_scores, check_low_rank_embedding, check_neuron_scores

__all__ = ["check_softmax_backward", "check_attention_backward", "check_entropy_exit",
           "check_head_scores", "check_flops", "check_gradient", "finite_difference_gradient",
           "check_gradient_equilibrium", "check_distillation_loss", "check_neuron_scores", "check_ffn_slice",
           "check_low_rank_embedding", "check_operating_point"]
