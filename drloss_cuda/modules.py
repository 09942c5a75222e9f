"""nn.Module wrapper of sigmoid_dr_loss."""

from torch import nn

from ._common import DEFAULT_L, DEFAULT_MARGIN, DEFAULT_NEG_LAMBDA, DEFAULT_POS_LAMBDA, DEFAULT_TAU
from ._common import check_reduction, hyperparameters
from .functional import sigmoid_dr_loss


class SigmoidDRLoss(nn.Module):
    """Sigmoid DR loss as a module; the arguments are those of `sigmoid_dr_loss`
    (`process_group`, default None, pools the loss over the processes of a group)."""

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
