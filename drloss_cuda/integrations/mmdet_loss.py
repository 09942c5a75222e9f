"""The parts of the mmdetection integration that need no mmdetection: the loss module with
mmdetection's calling convention, and the classification loss over every FPN level at once.
`drloss_cuda.integrations.mmdet` registers them in mmdet's MODELS registry."""

import torch
from torch import nn

from .. import conventions
from .._common import DEFAULT_L, DEFAULT_MARGIN, DEFAULT_NEG_LAMBDA, DEFAULT_POS_LAMBDA, DEFAULT_TAU
from .._common import check_reduction, hyperparameters


def _fused_loss():
    from .. import sigmoid_dr_loss  # the compiled extension loads here, not at import

    return sigmoid_dr_loss


class MMDetSigmoidDRLoss(nn.Module):
    """Sigmoid DR loss with mmdetection's loss interface, for `loss_cls` of a sigmoid head.

    Args:
        use_sigmoid: must be True: DR loss reads sigmoid probabilities, and mmdet's heads look
            at this key to give the classifier num_classes columns (no background column).
        loss_weight: factor applied to the loss, as every mmdet loss does.
        reduction: over the groups: "mean" (default), "sum" or "none".
        pos_lambda, neg_lambda, L, tau, margin: DR loss's parameters (the paper's defaults).
        loss_fn: the function computing the loss, with sigmoid_dr_loss's signature (default: the
            fused `drloss_cuda.sigmoid_dr_loss`; `drloss_cuda.reference.sigmoid_dr_loss` also fits).
        check_targets: validate labels and label_weights on every call (a host sync on a small
            [N, A] tensor); False skips that once the wiring is known to be right.

    forward(cls_score, labels, label_weights=None, avg_factor=None, reduction_override=None):
        cls_score: [N, A, C] (one DR loss per image: what DRLossRetinaHead passes, every level
            of an image together) or [M, C] (one pooled group: what a stock mmdet head passes
            for one FPN level).
        labels: [N, A] or [M], mmdet's convention (0..C-1 classes, C background).
        label_weights: same shape; 0 drops the anchor (between the IoU thresholds, outside the
            image), 1 keeps it; None keeps every anchor. DR loss has no per-anchor weight: any
            other value raises (with check_targets).
        avg_factor: accepted and not used. mmdet passes the number of positives to normalize a
            sum over anchors; DR loss is one value per group, not such a sum.
    """

    def __init__(self, use_sigmoid=True, loss_weight=1.0, reduction="mean", pos_lambda=DEFAULT_POS_LAMBDA,
                 neg_lambda=DEFAULT_NEG_LAMBDA, L=DEFAULT_L, tau=DEFAULT_TAU, margin=DEFAULT_MARGIN, loss_fn=None,
                 check_targets=True, **unknown):
        super().__init__()
        if unknown:
            hint = ""
            if {"gamma", "alpha"} & set(unknown):
                hint = (": FocalLoss's arguments, merged in from a base config's loss_cls; replace it with "
                        "loss_cls=dict(_delete_=True, type='SigmoidDRLoss', ...)")
            raise TypeError(f"{REGISTERED_LOSS_NAME} got unexpected arguments {sorted(unknown)}{hint}")
        if use_sigmoid is not True:
            raise ValueError(f"use_sigmoid must be True (DR loss is a sigmoid loss), got {use_sigmoid!r}")
        check_reduction(reduction)
        # Fail at construction (when mmdet builds the head), not at the first training step.
        hyperparameters(pos_lambda, neg_lambda, L, tau, margin, 0)
        self.use_sigmoid = True
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.options = dict(pos_lambda=pos_lambda, neg_lambda=neg_lambda, L=L, tau=tau, margin=margin)
        self.loss_fn = loss_fn
        self.check_targets = check_targets

    def forward(self, cls_score, labels, label_weights=None, avg_factor=None, reduction_override=None):
        reduction = self.reduction if reduction_override is None else reduction_override
        check_reduction(reduction)
        if cls_score.dim() not in (2, 3):
            raise ValueError(f"cls_score must be [N, A, C] or [M, C], got shape {list(cls_score.shape)}")
        num_classes = cls_score.shape[-1]
        # mmdet's background is num_classes already; only the dropped anchors need rewriting.
        labels = conventions.from_mmdet(labels, label_weights, num_classes, check=self.check_targets)
        loss_fn = self.loss_fn if self.loss_fn is not None else _fused_loss()
        loss = loss_fn(cls_score, labels, first_label=0, reduction=reduction, **self.options)
        return self.loss_weight * loss

    def extra_repr(self):
        options = ", ".join(f"{k}={v:.6g}" for k, v in self.options.items())
        return f"loss_weight={self.loss_weight}, reduction={self.reduction!r}, {options}"


def multilevel_classification_loss(loss_cls, cls_scores, labels, label_weights, num_classes, avg_factor=None):
    """The classification loss of an anchor head over all FPN levels at once.

    Args:
        loss_cls: the head's classification loss module (an MMDetSigmoidDRLoss).
        cls_scores: per level, the head's [N, A_l*C, H_l, W_l] output.
        labels, label_weights: per level, [N, H_l*W_l*A_l] targets from the head's get_targets.
        num_classes: C, the head's cls_out_channels.
        avg_factor: passed on (MMDetSigmoidDRLoss does not use it).

    DR loss's softmax over the negatives spans every anchor of an image, so the levels are
    concatenated (in the (y, x, anchor) order of mmdet's targets) before the loss, not summed
    after it.
    """
    logits, labels = conventions.concat_levels(cls_scores, labels, num_classes=num_classes)
    label_weights = torch.cat(list(label_weights), dim=1)
    return loss_cls(logits, labels, label_weights, avg_factor=avg_factor)


REGISTERED_LOSS_NAME = "SigmoidDRLoss"


def head_loss_cls_config(loss_cls=None):
    """The `loss_cls` config of a DR loss head: SigmoidDRLoss unless another type is named, and
    use_sigmoid=True added when missing. mmdet's AnchorHead reads `use_sigmoid` from this dict
    to size the classifier; without it the head would get a background column DR loss does
    not have."""
    config = dict(type=REGISTERED_LOSS_NAME) if loss_cls is None else dict(loss_cls)
    config.setdefault("type", REGISTERED_LOSS_NAME)
    if config.setdefault("use_sigmoid", True) is not True:
        raise ValueError(f"loss_cls: use_sigmoid must be True for DR loss, got {config['use_sigmoid']!r}")
    return config
