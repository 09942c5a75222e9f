"""Pure-PyTorch peers of the fused DR loss, for the benchmarks.

- dense_masked_dr_loss: the DR loss with per-image groups written densely: torch.where masks
  and a logsumexp per image over the full [A * C] row, no boolean indexing (so no host sync and
  a fixed graph that torch.compile can fuse). Same loss as drloss_cuda.reference (same
  per-image groups, same empty-set choices: no negative gives E_neg = 0, no positive E_pos = 1).
- sigmoid_focal_loss: torchvision-style sigmoid focal loss on the same logits and labels
  (labels turned into one-hot targets, ignored anchors masked out), summed and divided by the
  number of positive anchors: the loss DR loss replaces, for scale.
- sigmoid_focal_loss_direct: the focal loss written term by term (positive and negative terms
  separately), the independent computation the benchmark checks sigmoid_focal_loss against.

None of them imports the compiled extension.
"""

import torch
import torch.nn.functional as F

# Pure-Python parts of the package (neither loads the compiled extension): the defaults, the
# reduction, the label masks and the group-loss formula are the package's own.
from drloss_cuda._common import (
    DEFAULT_L,
    DEFAULT_MARGIN,
    DEFAULT_NEG_LAMBDA,
    DEFAULT_POS_LAMBDA,
    DEFAULT_TAU,
    reduce_losses,
)
from drloss_cuda.reference import group_masks, loss_from_expectations


def _accumulate(logits):
    return logits.double() if logits.dtype == torch.float64 else logits.float()


def _masked_expectation(prob, mask, scale, empty_value):
    """Per row of [G, K] `prob`: sum_i w_i p_i with w = softmax(scale * p) over the entries
    where `mask` holds; `empty_value` for a row with no such entry. Dense: the entries outside
    the mask get exponent -inf (weight 0); a row that is all -inf gets a finite stand-in for its
    logsumexp so that no NaN appears, neither in the value nor in the gradient."""
    exponent = torch.where(mask, prob * scale, float("-inf"))
    lse = torch.logsumexp(exponent, dim=1, keepdim=True)
    has_any = mask.any(dim=1, keepdim=True)
    lse = torch.where(has_any, lse, 0.0)
    weight = torch.exp(exponent - lse)  # exactly 0 outside the mask
    expectation = (weight * prob).sum(dim=1)
    return torch.where(has_any.squeeze(1), expectation, empty_value)


def dense_masked_dr_loss(
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
    """Sigmoid DR loss, one group per image of [N, A, C] logits ([M, C]: one pooled group),
    computed densely with masks as multiplicands. Returns the mean over groups ("mean"),
    the sum ("sum") or the per-group losses ("none"), in float32 (float64 for float64 logits).
    """
    if logits.dim() == 2:
        logits, labels = logits.unsqueeze(0), labels.unsqueeze(0)
    num_groups, num_anchors, num_classes = logits.shape
    x = _accumulate(logits)
    prob = torch.sigmoid(x)
    positive, negative = group_masks(labels, num_classes, first_label)
    positive = positive.reshape(num_groups, -1)
    negative = negative.reshape(num_groups, -1)
    prob = prob.reshape(num_groups, -1)
    neg_mean = _masked_expectation(prob, negative, 1.0 / neg_lambda, 0.0)
    pos_mean = _masked_expectation(prob, positive, -1.0 / pos_lambda, 1.0)
    return reduce_losses(loss_from_expectations(neg_mean, pos_mean, L, tau, margin), reduction)


def sigmoid_focal_loss(logits, labels, *, alpha=0.25, gamma=2.0, first_label=0):
    """torchvision.ops.sigmoid_focal_loss on one-hot targets built from `labels` (same label
    convention as the DR loss: < 0 ignored, first_label.. first_label + C - 1 the classes, any
    other value background), the ignored anchors' terms masked out, summed over every element
    and divided by max(1, number of positive anchors), as RetinaNet does."""
    x = _accumulate(logits)
    targets = group_masks(labels, logits.shape[-1], first_label)[0].to(x.dtype)
    prob = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * loss
    counted = (labels >= 0).unsqueeze(-1)
    loss = torch.where(counted, loss, 0.0)
    num_pos = targets.sum().clamp_min(1.0)
    return loss.sum() / num_pos


def sigmoid_focal_loss_direct(logits, labels, *, alpha=0.25, gamma=2.0, first_label=0):
    """The same focal loss written term by term: -alpha (1-p)^gamma log p on the positive
    entries, -(1-alpha) p^gamma log(1-p) on the negative ones (log-sigmoid for stability),
    over the counted anchors only. The check of sigmoid_focal_loss, run in float64."""
    x = logits.double()
    positive, negative = group_masks(labels, x.shape[-1], first_label)
    p = torch.sigmoid(x)
    pos_terms = -alpha * (1 - p) ** gamma * F.logsigmoid(x)
    neg_terms = -(1 - alpha) * p**gamma * F.logsigmoid(-x)
    total = pos_terms[positive].sum() + neg_terms[negative].sum()
    return total / max(1, int(positive.sum()))
