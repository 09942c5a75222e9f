"""DR loss across processes: one pooled group spread over a process group, and the scale that
makes DistributedDataParallel's gradient average equal the gradient of the global mean.

Pooled mode (`sigmoid_dr_loss(logits [M, C], labels [M], process_group=group)`):

The loss of a group depends on its elements only through two online-softmax triples
(m, Z, W = E * Z per sign; "The math" in docs/design.md), and triples merge associatively. So each
process runs the fused forward op on its own [M_p, C] logits, the processes all-reduce the
maximum m (MAX), rescale their Z and W to that maximum and all-reduce them (SUM), and every
process forms the same global expectations (E = W / Z, or the empty-set defaults E_neg = 0,
E_pos = 1 when the global Z is 0) and the same global loss. The backward needs no
communication: the backward op's gradient for an element depends only on its group's saved
statistics and the element itself, so calling it locally with the *global* statistics gives
the gradient of the global loss with respect to the local logits.

The value after the merge, tau / L * softplus(L * (E_neg - E_pos + margin)), is computed with
tensor operations (`loss_from_stats`, the reference's loss_from_expectations) rather than by the
op, whose entry point takes logits, not statistics: it is one line, only the forward value uses
it (the backward is the fused backward op, which evaluates the slope with the kernels' own
formula), and tests/test_distributed.py checks the value against the reference and the fused
single-process loss over the concatenated batch.

Gradient scale under DDP: every process returns the same global loss and gets
d(global loss)/d(local logits). DDP then *averages* the parameter gradients over the P
processes, which gives (1/P) * d(global loss)/d(parameters). Multiply the loss by
`process_group.size()` before backward if the step must see the exact gradient of the global
loss (or fold the factor into the learning rate).

Per-image mode under DDP: with [N_p, A, C] logits each process's `reduction="mean"` is a mean
over its own images. DDP's average of those per-process gradients is the gradient of the
global mean only when every process has the same number of images; `global_mean_scale` gives
the factor for the general case (use it with `reduction="sum"`).
"""

import torch
import torch.distributed as dist

from . import _common
from .ops import NUM_STATS, backward_op, forward_op
from .reference import loss_from_expectations

# Column layout of the [G, 6] statistics written by the forward op (csrc/dr_loss_math.h).
NEG_MAX, NEG_SUM, NEG_MEAN, POS_MAX, POS_SUM, POS_MEAN = range(NUM_STATS)


def reduce_stats(stats, process_group):
    """Merges the [1, 6] statistics of one pooled group over `process_group`: returns the
    [1, 6] statistics of the union of every process's elements (the same on every process).

    Local stats of an empty sign are (m = -inf, Z = 0, E = default); they contribute nothing
    and the global E falls back to the same defaults (E_neg = 0, E_pos = 1) when no process has
    an element of that sign. Z = 0 is the empty set, as in the kernels: a NaN Z (a NaN logit
    in a counted anchor) is not, and makes the global statistics NaN on every process. The
    merge runs in float64 whatever each process's logits (processes may differ in dtype: one
    without anchors may hold the default dtype's empty tensor), and the result is cast back.
    """
    # [negatives, positives] of each statistic: strided views (an index list would be copied
    # from the host to a CUDA device, a synchronization at every call).
    stride = POS_MAX - NEG_MAX
    local_m = stats[0, NEG_MAX::stride].double()
    local_z = stats[0, NEG_SUM::stride].double()
    local_e = stats[0, NEG_MEAN::stride].double()

    global_m = local_m.clone()
    dist.all_reduce(global_m, op=dist.ReduceOp.MAX, group=process_group)

    nonempty = local_z != 0
    zero = torch.zeros_like(local_z)
    # The shifts m are base-2 exponents (csrc/dr_loss_math.h), so the rescale is 2^(m_p - M) <= 1;
    # for an empty sign m_p - M is -inf or NaN (-inf - -inf), masked away.
    scale = torch.where(nonempty, torch.exp2(local_m - global_m), zero)
    z_and_w = torch.cat([torch.where(nonempty, local_z * scale, zero),
                         torch.where(nonempty, local_e * local_z * scale, zero)])
    dist.all_reduce(z_and_w, op=dist.ReduceOp.SUM, group=process_group)
    global_z, global_w = z_and_w[:2], z_and_w[2:]

    defaults = torch.arange(2, dtype=global_z.dtype, device=global_z.device)  # E_neg = 0, E_pos = 1
    nonempty = global_z != 0
    global_e = torch.where(nonempty, global_w / torch.where(nonempty, global_z, 1), defaults)
    merged = torch.stack([global_m[0], global_z[0], global_e[0], global_m[1], global_z[1], global_e[1]])
    return merged.reshape(1, NUM_STATS).to(stats.dtype)


def loss_from_stats(stats, L, tau, margin):
    """The group loss of each row of [G, 6] statistics, by the reference's formula."""
    return loss_from_expectations(stats[:, NEG_MEAN], stats[:, POS_MEAN], L, tau, margin)


class PooledDRLoss(torch.autograd.Function):
    """The pooled DR loss of the [M_p, C] logits of every process of a group, as one group.

    forward(logits [M_p, C], labels [M_p], pos_lambda, neg_lambda, L, tau, margin, first_label,
    process_group) -> the global loss, shape [1], the same on every process (a collective: every
    process of the group must call it). backward is local.
    """

    @staticmethod
    def forward(ctx, logits, labels, pos_lambda, neg_lambda, L, tau, margin, first_label, process_group):
        hyper = (pos_lambda, neg_lambda, L, tau, margin, first_label)
        _, local_stats = forward_op(logits, labels, *hyper)
        stats = reduce_stats(local_stats, process_group)
        ctx.save_for_backward(logits, labels, stats)
        ctx.hyper = hyper
        return loss_from_stats(stats, L, tau, margin)

    @staticmethod
    def backward(ctx, grad_loss):
        logits, labels, stats = ctx.saved_tensors
        grad_logits = None
        if ctx.needs_input_grad[0]:
            grad_logits = backward_op(grad_loss.contiguous(), logits, labels, stats, *ctx.hyper)
        return (grad_logits,) + (None,) * 8


def check_process_group(process_group):
    """A process_group other than None must be a ProcessGroup (checked before the tensors, and
    by the module at construction)."""
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            "sigmoid_dr_loss: process_group must be a torch.distributed.ProcessGroup "
            f"(e.g. torch.distributed.group.WORLD), got {type(process_group).__name__}"
        )


def pooled_sigmoid_dr_loss(logits, labels, pos_lambda, neg_lambda, L, tau, margin, first_label, process_group):
    """The per-group losses ([1]) of the pooled group spread over `process_group` (a
    ProcessGroup: the public function checks it, with check_process_group, before the tensors)."""
    # The op's tensor checks first (a wrong rank is the same error as without a group).
    _common.check_logits_and_labels(logits, labels)
    if logits.dim() != 2:
        raise ValueError(
            "sigmoid_dr_loss: with a process_group, logits must be pooled [M, C] (flatten the "
            f"images: logits.flatten(0, -2), labels.flatten()), got {list(logits.shape)}"
        )
    return PooledDRLoss.apply(logits, labels, pos_lambda, neg_lambda, L, tau, margin, first_label, process_group)


def global_mean_scale(num_local_groups, process_group=None, device=None, dtype=torch.float32):
    """The factor that turns a per-process *sum* of per-image losses into a loss whose gradient,
    after DDP averages it over the processes, is the gradient of the mean over every image of
    every process: world_size / (total number of images). A collective (one all-reduce of the
    counts). Returns a scalar tensor of `dtype` (float32 by default; pass the loss's dtype, e.g.
    torch.float64, so that the factor is not rounded to float32) on `device`: by default the
    device of a tensor count, else the current CUDA device for the NCCL backend and the CPU
    otherwise. The counts and the division are in float64.

        loss = sigmoid_dr_loss(logits, labels, reduction="sum") * global_mean_scale(logits.shape[0])
    """
    if device is None:
        if isinstance(num_local_groups, torch.Tensor):
            device = num_local_groups.device
        elif dist.get_backend(process_group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
    count = torch.as_tensor(num_local_groups).detach().to(device=device, dtype=torch.float64).reshape(1).clone()
    dist.all_reduce(count, op=dist.ReduceOp.SUM, group=process_group)
    world = dist.get_world_size(process_group)
    # No image anywhere: the sum is 0 and so is any factor; avoid 0/0.
    return (world / count.clamp(min=1)).reshape(()).to(dtype)
