"""nn.Module wrapper of sigmoid_dr_loss."""

from torch import nn

from ._common import DEFAULT_L, DEFAULT_MARGIN, DEFAULT_NEG_LAMBDA, DEFAULT_POS_LAMBDA, DEFAULT_TAU
from ._common import check_reduction, hyperparameters
from .functional import sigmoid_dr_loss


class SigmoidDRLoss(nn.Module):
    """Sigmoid DR loss (Qian et al., CVPR 2020) as a module, computed by fused kernels.

    The classification loss of a one-stage detector: one value per image (or per pooled
    group), not a sum over anchors to divide by the number of positives.

        loss_fn = SigmoidDRLoss()                 # the paper's defaults
        loss = loss_fn(cls_logits, labels)        # [N, A, C] logits, [N, A] labels

    Keyword-only arguments (checked here, at construction):
        pos_lambda (float, default 1.0): softmax temperature of the positives (>= 1e-4).
        neg_lambda (float, default 0.1 / ln(3.5)): softmax temperature of the negatives
            (>= 1e-4).
        L (float, default 6.0): smoothing of the loss (> 0).
        tau (float, default 4.0): scale of the loss (> 0).
        margin (float, default 0.5): the ranking margin.
        first_label (int, default 0): the label of class column 0. 0: classes 0..C-1,
            background C (mmdetection, detectron2); 1: classes 1..C, background 0 (the
            official code). A label < 0 ignores the anchor.
        reduction (str, default "mean"): "mean" over groups, "sum", or "none" (the [N]
            per-group losses).
        process_group (torch.distributed.ProcessGroup or None, default None): pool one [M, C]
            group over the processes of this group (drloss_cuda.distributed).

    Each hyperparameter may also be a 0-dim tensor or numpy array that does not require grad.
    `forward(logits, labels)` takes what `drloss_cuda.sigmoid_dr_loss` takes, where every
    argument is described in full.
    """

    def __init__(
        self,
        *,
        pos_lambda=DEFAULT_POS_LAMBDA,
        neg_lambda=DEFAULT_NEG_LAMBDA,
        L=DEFAULT_L,
        tau=DEFAULT_TAU,
        margin=DEFAULT_MARGIN,
        first_label=0,
        reduction="mean",
        process_group=None,
    ):
        super().__init__()
        check_reduction(reduction)
        # Fail at construction, not at the first training step (every call checks again).
        hyperparameters(pos_lambda, neg_lambda, L, tau, margin, first_label)
        if process_group is not None:
            from .distributed import check_process_group

            check_process_group(process_group)
        self.pos_lambda = pos_lambda
        self.neg_lambda = neg_lambda
        self.L = L
        self.tau = tau
        self.margin = margin
        self.first_label = first_label
        self.reduction = reduction
        self.process_group = process_group

    def forward(self, logits, labels):
        """The loss of `logits` ([N, A, C]: one loss per image, or [M, C]: one pooled group;
        float32, float64, float16 or bfloat16, the class dimension last) against integer
        `labels` of shape logits.shape[:-1]. Returns the reduced loss in float32 (float64 for
        float64 logits); the gradient reaches `logits` in their dtype."""
        return sigmoid_dr_loss(
            logits,
            labels,
            pos_lambda=self.pos_lambda,
            neg_lambda=self.neg_lambda,
            L=self.L,
            tau=self.tau,
            margin=self.margin,
            first_label=self.first_label,
            reduction=self.reduction,
            process_group=self.process_group,
        )

    def extra_repr(self):
        return (
            f"pos_lambda={self.pos_lambda}, neg_lambda={float(self.neg_lambda):.6g}, L={self.L}, "
            f"tau={self.tau}, margin={self.margin}, first_label={self.first_label}, "
            f"reduction={self.reduction!r}"
        )
