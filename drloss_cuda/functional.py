"""The public functional API: sigmoid_dr_loss on the fused ops."""

import torch

from . import _common
from ._common import (
    DEFAULT_L,
    DEFAULT_MARGIN,
    DEFAULT_NEG_LAMBDA,
    DEFAULT_POS_LAMBDA,
    DEFAULT_TAU,
)
from .ops import forward_op


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
    process_group=None,
):
    """Sigmoid DR loss (Qian et al., "DR Loss: Improving Object Detection by Distributional
    Ranking", CVPR 2020), computed by fused kernels.

    Args:
        logits: float32/float64/float16/bfloat16 tensor, [N, A, C] (one loss per image: N
            groups of A anchors and C classes) or [M, C] (one loss pooled over all M anchors).
        labels: integer tensor of shape logits.shape[:-1] (int64 or int32; int8, int16, uint8,
            uint16 and uint32 are widened to int64; uint64 is refused). A label < 0 ignores the anchor;
            first_label <= label < first_label + C makes class column label - first_label
            positive (the other columns negative); any other label marks background (all C
            columns negative).
        pos_lambda, neg_lambda: softmax temperatures of the positives and negatives
            (>= drloss_cuda.MIN_LAMBDA = 1e-4).
        L, tau: smoothing and scale of the loss (> 0); margin: the ranking margin. Each
            hyperparameter is a number, a 0-dim numpy array or a 0-dim tensor that does not
            require grad (the loss is not differentiated with respect to them).
        first_label: the label of class column 0 (0: mmdetection/detectron2, background = C;
            1: the official code, background = 0). An integer in [0, 2**63 - 1] (a Python or
            numpy integer, or a 0-dim integer tensor or array; floats and bools are refused).
        reduction: "mean" over groups, "sum", or "none" for the [N] per-group losses
            ([1] for pooled [M, C] logits). The mean over zero groups is 0.
        process_group: None (default): the loss of this process's logits alone. A
            torch.distributed.ProcessGroup: logits must be pooled [M, C], and the loss is that
            of one group made of the logits of every process of the group (a collective: each
            process must call it, with the same C and hyperparameters, which are not compared;
            each returns the same global loss and gets the gradient of that loss for its own
            logits). See drloss_cuda.distributed.

    Returns:
        The loss in float32 (float64 for float64 logits); the gradient reaches logits in
        logits' dtype.
    """
    _common.check_dense_tensor("logits", logits)
    _common.check_dense_tensor("labels", labels)
    _common.check_reduction(reduction)
    if process_group is not None:
        from .distributed import check_process_group

        check_process_group(process_group)
    hyper = _common.hyperparameter_forms(pos_lambda, neg_lambda, L, tau, margin, first_label)
    if labels.dtype not in _common.KERNEL_LABEL_TYPES:
        # Narrow or unsigned labels: the op's checks in its order, then the widened labels.
        labels = _common.check_tensors(logits, labels)
    if torch.compiler.is_compiling():
        # Traced once: Dynamo raises these errors itself (a traced number may be symbolic),
        # where the op's would reach the caller wrapped in Dynamo's own.
        _common.check_logits_and_labels(logits, labels)
        _common.check_hyperparameter_values(*hyper)
    # The op checks the tensors, then the hyperparameters' values, and records its autograd
    # (csrc/checks.cpp, csrc/autograd.cpp). One copy per call chain: the op receives (and its
    # autograd saves) contiguous tensors, so the backward copies nothing. The copy is
    # differentiable, so a transposed or expanded `logits` gets its gradient in its own layout.
    logits = logits.contiguous()
    labels = labels.contiguous()
    if process_group is not None:
        from .distributed import pooled_sigmoid_dr_loss

        losses = pooled_sigmoid_dr_loss(logits, labels, *hyper, process_group)
    else:
        losses, _ = forward_op(logits, labels, *hyper)
    return _common.reduce_losses(losses, reduction)
