"""The compiled ops, with their fake kernels and autograd formula.

`torch.ops.drloss_cuda.sigmoid_dr_loss_forward(logits, labels, pos_lambda, neg_lambda, L, tau,
margin, first_label) -> (losses [G], stats [G, 6])` and `sigmoid_dr_loss_backward(grad_losses,
logits, labels, stats, ...) -> grad_logits` are defined in csrc/ops.cpp. This module registers
what the dispatcher needs beyond the kernels: fake (meta) kernels, so that torch.compile and
torch.export trace the ops without running them, and the autograd formula of the forward. The
same formula also comes as autograd.Functions (FusedLoss, FusedLossBackward) with vmap rules,
which eager calls of the public function use so that torch.func's transforms work.
"""

import json

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
    """What this build of the extension contains: {'openmp': bool, 'cuda': bool (the CUDA
    kernels), 'torch': the torch version it was built against, 'torch_cuda': that torch's CUDA
    version or None, 'cuda_archs': the GPU architectures built for (None without CUDA kernels),
    'cuda_absent_reason': why the CUDA kernels were not built (None when they were)}.
    `python -m drloss_cuda` prints it."""
    info = _C.build_info()
    record = json.loads(info.pop("record") or "{}")
    return {**info, **{key: record.get(key) for key in BUILD_RECORD_KEYS}}


BUILD_RECORD_KEYS = ("torch", "torch_cuda", "cuda_archs", "cuda_absent_reason")


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
        # torch.func needs the backward op as an autograd.Function too (FusedLossBackward);
        # Dynamo cannot trace one nested in a backward, and takes the op with its registered
        # formula, which says the same.
        backward = backward_op if torch.compiler.is_compiling() else FusedLossBackward.apply
        grad_logits = backward(grad_losses.contiguous(), logits, labels, stats, *ctx.hyper)
    return (grad_logits,) + (None,) * (1 + len(ctx.hyper))


def _no_double_backward(ctx, *grad_outputs):
    raise RuntimeError(
        "sigmoid_dr_loss: double backward (a gradient of the gradient) is not implemented"
    )


def _setup_backward_context(ctx, inputs, output):
    pass


# --- vmap: a batch of problems is one problem with more groups ---------------------------------
# Groups are independent, so B problems of N images are one of B * N images, and B pooled
# problems of M anchors are B images of M anchors: the kernels run once for the whole batch.


def _batch_first(tensor, dim, batch):
    return tensor.movedim(dim, 0) if dim is not None else tensor.expand(batch, *tensor.shape)


def _as_groups(logits, labels):
    """Batch-first [B, N, A, C] / [B, M, C] logits and their labels as one problem of
    [B * N, A, C] / [B, M, C] per-image logits, contiguous. The number of groups is spelled out:
    reshape cannot infer a -1 beside a zero size (A, M or C = 0)."""
    groups = logits.shape[:-2].numel()
    return (
        logits.reshape(groups, *logits.shape[-2:]).contiguous(),
        labels.reshape(groups, labels.shape[-1]).contiguous(),
    )


def _check_unbatched_hyperparameters(in_dims):
    if any(d is not None for d in in_dims):  # pragma: no cover - the public function passes numbers
        raise NotImplementedError("sigmoid_dr_loss: vmap over a hyperparameter is not supported")


class FusedLoss(torch.autograd.Function):
    """The forward op with the formula above, as the autograd.Function the public function
    calls: torch.func's transforms (grad, vjp, jacrev, vmap) take an autograd.Function with
    setup_context, not an op's formula registered with torch.library. No jvp: Dynamo cannot trace
    a custom one, so the public function refuses forward-mode AD instead
    (_common.check_reverse_mode)."""

    @staticmethod
    def forward(logits, labels, *hyper):
        return forward_op(logits, labels, *hyper)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)

    @staticmethod
    def vmap(info, in_dims, logits, labels, *hyper):
        _check_unbatched_hyperparameters(in_dims[2:])
        batch = info.batch_size
        x = _batch_first(logits, in_dims[0], batch)
        y = _batch_first(labels, in_dims[1], batch)
        groups = x.shape[1] if x.dim() == 4 else 1
        losses, stats = FusedLoss.apply(*_as_groups(x, y), *hyper)
        return (losses.reshape(batch, groups), stats.reshape(batch, groups, NUM_STATS)), (0, 0)


class FusedLossBackward(torch.autograd.Function):
    """The backward op as an autograd.Function (for torch.func, as above), whose own backward
    says that double backward is not implemented."""

    @staticmethod
    def forward(grad_losses, logits, labels, stats, *hyper):
        return backward_op(grad_losses, logits, labels, stats, *hyper)

    setup_context = staticmethod(_setup_backward_context)
    backward = staticmethod(_no_double_backward)

    @staticmethod
    def vmap(info, in_dims, grad_losses, logits, labels, stats, *hyper):
        _check_unbatched_hyperparameters(in_dims[4:])
        batch = info.batch_size
        x = _batch_first(logits, in_dims[1], batch)
        y = _batch_first(labels, in_dims[2], batch)
        g = _batch_first(grad_losses, in_dims[0], batch)
        st = _batch_first(stats, in_dims[3], batch)
        x_groups, y_groups = _as_groups(x, y)
        grad = FusedLossBackward.apply(
            g.reshape(-1).contiguous(), x_groups, y_groups, st.reshape(-1, NUM_STATS).contiguous(), *hyper
        )
        return grad.reshape(x.shape), 0


torch.library.register_autograd("drloss_cuda::sigmoid_dr_loss_forward", _backward, setup_context=_setup_context)
torch.library.register_autograd(
    "drloss_cuda::sigmoid_dr_loss_backward", _no_double_backward, setup_context=_setup_backward_context
)
