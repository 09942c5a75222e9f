"""The compiled ops, with their fake kernels and autograd formula.

`torch.ops.drloss_cuda.sigmoid_dr_loss_forward(logits, labels, pos_lambda, neg_lambda, L, tau,
margin, first_label) -> (losses [G], stats [G, 6])` and `sigmoid_dr_loss_backward(grad_losses,
logits, labels, stats, ...) -> grad_logits` are defined in csrc/ops.cpp. This module registers
what the dispatcher needs beyond the kernels: fake (meta) kernels, so that torch.compile and
torch.export trace the ops without running them, and the autograd formula of the forward.
"""

import torch

from . import _common

try:
    from . import _C  # noqa: F401  (importing it registers the ops)
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "drloss_cuda: the compiled extension drloss_cuda._C could not be loaded "
        f"({error}). Build it against your installed torch with "
        "`pip install --no-build-isolation -e .` from the repository root."
    ) from error

NUM_STATS = 6

forward_op = torch.ops.drloss_cuda.sigmoid_dr_loss_forward
backward_op = torch.ops.drloss_cuda.sigmoid_dr_loss_backward


def build_info():
    """{'openmp': bool, 'cuda': bool}: what this build of the extension contains."""
    return _C.build_info()


def _check_forward_args(logits, labels, hyper):
    """csrc/ops.cpp's check_forward_args, with its messages, for the fake kernels: on the meta
    device and under torch.compile the C++ checks never run."""
    groups = _common.check_logits_and_labels(logits, labels)
    _common.check_hyperparameter_values(*hyper)
    return groups


@torch.library.register_fake("drloss_cuda::sigmoid_dr_loss_forward")
def _forward_fake(logits, labels, *hyper):
    groups = _check_forward_args(logits, labels, hyper)
    acc = _common.accumulate_dtype(logits.dtype)
    return logits.new_empty((groups,), dtype=acc), logits.new_empty((groups, NUM_STATS), dtype=acc)


@torch.library.register_fake("drloss_cuda::sigmoid_dr_loss_backward")
def _backward_fake(grad_losses, logits, labels, stats, *hyper):
    groups = _check_forward_args(logits, labels, hyper)
    acc = _common.accumulate_dtype(logits.dtype)
    torch._check(
        grad_losses.dim() == 1
        and grad_losses.shape[0] == groups
        and grad_losses.dtype == acc
        and grad_losses.device == logits.device,
        lambda: _common.grad_losses_message(groups, acc, logits, grad_losses),
    )
    torch._check(
        stats.dim() == 2
        and stats.shape == (groups, NUM_STATS)
        and stats.dtype == acc
        and stats.device == logits.device,
        lambda: _common.stats_message(groups, NUM_STATS, acc, logits, stats),
    )
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, labels, *hyper = inputs
    _, stats = output
    ctx.save_for_backward(logits, labels, stats)
    ctx.hyper = hyper
    ctx.mark_non_differentiable(stats)


def _backward(ctx, grad_losses, _grad_stats):
    logits, labels, stats = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = backward_op(grad_losses.contiguous(), logits, labels, stats, *ctx.hyper)
    return (grad_logits,) + (None,) * (1 + len(ctx.hyper))


torch.library.register_autograd("drloss_cuda::sigmoid_dr_loss_forward", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, grad_output):
    raise RuntimeError(
        "sigmoid_dr_loss: double backward (a gradient of the gradient) is not implemented"
    )


def _setup_backward_context(ctx, inputs, output):
    pass


torch.library.register_autograd(
    "drloss_cuda::sigmoid_dr_loss_backward", _no_double_backward, setup_context=_setup_backward_context
)
