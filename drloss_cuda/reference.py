"""Pure-PyTorch sigmoid DR loss: the oracle of the tests and the baseline of the benchmarks.

It follows the official implementation's approach (boolean masks over every (anchor, class)
pair, the probabilities gathered by indexing, two softmaxes), with the official code's choices
for empty sets: no positive gives E_pos = 1, no negative gives E_neg = 0. [N, A, C] logits are
handled one image at a time (a Python loop, as per-image ports do); [M, C] logits form one
pooled group, exactly the official computation. It never imports the compiled extension.
"""

import torch
import torch.nn.functional as F

from . import _common
from ._common import (
    DEFAULT_L,
    DEFAULT_MARGIN,
    DEFAULT_NEG_LAMBDA,
    DEFAULT_POS_LAMBDA,
    DEFAULT_TAU,
)


def group_masks(labels, num_classes, first_label):
    """Boolean [A, C] masks of the positive and the negative entries of one group."""
    class_labels = torch.arange(num_classes, device=labels.device, dtype=labels.dtype) + first_label
    y = labels.unsqueeze(-1)
    counted = y >= 0
    positive = (y == class_labels) & counted
    negative = (y != class_labels) & counted
    return positive, negative


def group_loss(logits, labels, pos_lambda, neg_lambda, L, tau, margin, first_label):
    """The DR loss of one group: logits [A, C] (already in the accumulation dtype), labels [A]."""
    positive, negative = group_masks(labels, logits.shape[-1], first_label)
    prob = torch.sigmoid(logits)
    neg_prob = prob[negative]
    pos_prob = prob[positive]
    if neg_prob.numel() > 0:
        neg_weight = F.softmax(neg_prob / neg_lambda, dim=0)
        neg_mean = (neg_weight * neg_prob).sum()
    else:
        neg_mean = neg_prob.sum()  # the empty sum, 0, still attached to logits' graph
    if pos_prob.numel() > 0:
        pos_weight = F.softmax(-pos_prob / pos_lambda, dim=0)
        pos_mean = (pos_weight * pos_prob).sum()
    else:
        pos_mean = pos_prob.sum() + 1.0  # E_pos = 1, still attached to logits' graph
    return loss_from_expectations(neg_mean, pos_mean, L, tau, margin)


def loss_from_expectations(neg_mean, pos_mean, L, tau, margin):
    """tau / L * softplus(L * (E_neg - E_pos + margin)): the Python side's one copy of the
    group loss (the kernels' is group_loss in csrc/dr_loss_math.h). Evaluated in float64, as the
    kernels do, and returned in the expectations' dtype: in float32, L * d would round by
    |L d| eps32 (2.7e-6 of the loss at L d = -45) and overflow for L beyond 1e38. softplus is
    logaddexp(0, z), exact to rounding everywhere with its derivative sigmoid(z):
    torch.nn.functional.softplus returns z itself above its threshold of 20, 1e-11 of the loss
    off at z = 22, and its derivative 1 instead of 1 - 3e-10."""
    d = neg_mean.double() - pos_mean.double() + margin
    z = L * d
    # Where L d overflows (L near the float64 maximum) the loss is its limit tau * max(d, 0):
    # finite wherever the true value is. The overflowed z is kept out of logaddexp, whose
    # gradient there would be NaN even where torch.where discards it.
    finite = torch.isfinite(z)
    zero = torch.zeros_like(z)
    smooth = tau / L * torch.logaddexp(zero, torch.where(finite, z, zero))
    return torch.where(finite, smooth, tau * d.clamp(min=0)).to(neg_mean.dtype)


def sigmoid_dr_loss(
    logits,
    labels,
    *,
    pos_lambda=DEFAULT_POS_LAMBDA,
    neg_lambda=DEFAULT_NEG_LAMBDA,
    L=DEFAULT_L,
    tau=DEFAULT_TAU,
    margin=DEFAULT_MARGIN,
    first_label=0,
    reduction="mean",
):
    """Same signature (less process_group) and semantics as drloss_cuda.sigmoid_dr_loss, in
    plain PyTorch."""
    _common.check_dense_tensor("logits", logits)
    _common.check_dense_tensor("labels", labels)
    _common.check_reduction(reduction)
    # The fused function's argument decisions, in its order and with its messages
    # (drloss_cuda/_common.py).
    hyper = _common.hyperparameter_forms(pos_lambda, neg_lambda, L, tau, margin, first_label)
    labels = _common.check_tensors(logits, labels)
    _common.check_hyperparameter_values(*hyper)
    if logits.device.type == "meta":  # after the checks, so bad arguments get their own errors
        raise NotImplementedError(
            "the reference selects entries with boolean masks, which depend on the labels' "
            "values, and a meta tensor holds none; drloss_cuda.sigmoid_dr_loss runs on meta tensors"
        )

    x = logits.to(_common.accumulate_dtype(logits.dtype))
    labels = labels.long()
    if x.dim() == 2:
        losses = group_loss(x, labels, *hyper).reshape(1)
    elif x.shape[0] == 0:
        losses = x.sum(dim=(1, 2)) * 0  # [0], still attached to logits
    else:
        losses = torch.stack([group_loss(x[n], labels[n], *hyper) for n in range(x.shape[0])])
    return _common.reduce_losses(losses, reduction)
