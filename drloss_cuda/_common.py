"""Defaults and the pieces of argument handling shared by the fused op and the reference."""

import math

import torch

# The official code's defaults ("The math" in docs/design.md).
DEFAULT_POS_LAMBDA = 1.0
DEFAULT_NEG_LAMBDA = 0.1 / math.log(3.5)
DEFAULT_L = 6.0
DEFAULT_TAU = 4.0
DEFAULT_MARGIN = 0.5

REDUCTIONS = ("mean", "sum", "none")

# Label types the kernels read directly; other integer types are widened to int64.
KERNEL_LABEL_TYPES = (torch.int64, torch.int32)


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"sigmoid_dr_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_is_tensor(name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"sigmoid_dr_loss: {name} must be a torch.Tensor, got {type(value).__name__}")


def as_kernel_labels(labels):
    """int64/int32 labels pass through; other integer types become int64; the rest is left
    for the op to reject with a message that names `labels`."""
    if labels.dtype in KERNEL_LABEL_TYPES or labels.dtype.is_floating_point:
        return labels
    if labels.dtype in (torch.int8, torch.int16, torch.uint8):
        return labels.long()
    return labels


def accumulate_dtype(dtype):
    """float64 accumulates (and returns its loss) in float64, every other float in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduce_losses(losses, reduction):
    """Reduction over the per-group losses. The mean of no groups is defined as 0 (a batch with
    no image must not put NaN into a training step)."""
    if reduction == "none":
        return losses
    if reduction == "sum" or losses.numel() == 0:
        return losses.sum()
    return losses.mean()
