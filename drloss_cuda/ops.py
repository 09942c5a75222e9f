"""The compiled ops and their vmap rules.

`torch.ops.drloss_cuda.sigmoid_dr_loss_forward(logits, labels, pos_lambda, neg_lambda, L, tau,
margin, first_label) -> (losses [G], stats [G, 6])` and `sigmoid_dr_loss_backward(grad_losses,
logits, labels, stats, ...) -> grad_logits` are defined in csrc/ops.cpp, with everything the
dispatcher needs in C++: the argument checks (csrc/checks.cpp), the Meta kernels that FakeTensor
runs under torch.compile and torch.export (csrc/meta.cpp) and the autograd (csrc/autograd.cpp).
What is left to Python is the batching rule torch.func.vmap takes, registered here.
"""

import json
import re

import torch

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
    'cuda_absent_reason': why the CUDA kernels were not built (None when they were), 'sources':
    the SHA-256 of the sources it was compiled from (drloss_cuda/_build_sources.py)}.
    `python -m drloss_cuda` prints it."""
    info = _C.build_info()
    record = json.loads(info.pop("record") or "{}")
    return {**info, **{key: record.get(key) for key in BUILD_RECORD_KEYS}}


BUILD_RECORD_KEYS = ("torch", "torch_cuda", "cuda_archs", "cuda_absent_reason", "sources")


def cuda_architectures(cuda_archs):
    """A build's TORCH_CUDA_ARCH_LIST ('8.0;9.0+PTX', also space-separated) as [(major, minor,
    suffix, ptx)], e.g. (9, 0, 'a', False) for '9.0a'; None when an entry is not a number (torch
    also takes names such as 'Hopper') or there is no list."""
    entries = (cuda_archs or "").replace(" ", ";").split(";")
    architectures = []
    for entry in filter(None, entries):
        ptx = entry.endswith("+PTX")
        match = re.fullmatch(r"(\d+)\.(\d+)([a-z]?)", entry.removesuffix("+PTX"))
        if match is None:
            return None
        architectures.append((int(match[1]), int(match[2]), match[3], ptx))
    return architectures or None


def build_runs_on(capability, cuda_archs):
    """Whether a build for cuda_archs has kernels a GPU of compute capability (major, minor) can
    run: machine code of its major version at or below its minor (8.0 runs on 8.6; '9.0a' only
    on 9.0), or PTX at or below its capability, which the driver compiles for it. None when the
    list cannot be read."""
    architectures = cuda_architectures(cuda_archs)
    if architectures is None:
        return None
    major, minor = capability
    for arch_major, arch_minor, suffix, ptx in architectures:
        if suffix and (arch_major, arch_minor) != (major, minor):
            continue
        if arch_major == major and arch_minor <= minor:
            return True
        if ptx and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


# --- vmap: a batch of problems is one problem with more groups ---------------------------------
# Groups are independent, so B problems of N images are one of B * N images, and B pooled
# problems of M anchors are B images of M anchors: the kernels run once for the whole batch.
# The hyperparameters are numbers in the op's schema, so vmap never batches them (a tensor
# hyperparameter batched by vmap is refused by the public function, which makes it a number).


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


def _check_batched_ranks(logits, labels):
    """The op's rank check before the reshape, so that a vmapped call fails with the op's own
    message (the per-example shapes) rather than a reshape error."""
    if logits.dim() - 1 not in (2, 3) or labels.dim() != logits.dim() - 1:
        example_logits = logits.new_empty(logits.shape[1:], device="meta")
        example_labels = labels.new_empty(labels.shape[1:], device="meta")
        forward_op(example_logits, example_labels, 1.0, 1.0, 1.0, 1.0, 0.0, 0)  # raises the op's error


@torch.library.register_vmap("drloss_cuda::sigmoid_dr_loss_forward")
def _forward_vmap(info, in_dims, logits, labels, *hyper):
    batch = info.batch_size
    x = _batch_first(logits, in_dims[0], batch)
    y = _batch_first(labels, in_dims[1], batch)
    _check_batched_ranks(x, y)
    groups = x.shape[1] if x.dim() == 4 else 1
    losses, stats = forward_op(*_as_groups(x, y), *hyper)
    return (losses.reshape(batch, groups), stats.reshape(batch, groups, NUM_STATS)), (0, 0)


@torch.library.register_vmap("drloss_cuda::sigmoid_dr_loss_backward")
def _backward_vmap(info, in_dims, grad_losses, logits, labels, stats, *hyper):
    batch = info.batch_size
    x = _batch_first(logits, in_dims[1], batch)
    y = _batch_first(labels, in_dims[2], batch)
    g = _batch_first(grad_losses, in_dims[0], batch)
    st = _batch_first(stats, in_dims[3], batch)
    _check_batched_ranks(x, y)
    x_groups, y_groups = _as_groups(x, y)
    grad = backward_op(g.reshape(-1).contiguous(), x_groups, y_groups, st.reshape(-1, NUM_STATS).contiguous(), *hyper)
    return grad.reshape(x.shape), 0
