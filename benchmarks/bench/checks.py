"""The check every provider passes before it is timed: its loss and gradient on the first
input set of a point, against a float64 computation on the same values."""

import math

import torch

from . import peers

# (loss relative error, gradient error relative to the largest reference gradient entry)
FUSED_TOLERANCES = {
    torch.float64: (1e-6, 1e-6),
    torch.float32: (1e-4, 1e-3),
    torch.bfloat16: (1e-3, 2e-2),
    torch.float16: (1e-3, 2e-2),
}

# The pure-PyTorch peers accumulate in float32 the way PyTorch does: the official code's softmax
# and sums over 8-16 million entries lose about 1e-3 of the loss at A = 100,000 (measured here:
# 1.4e-3 pooled, 6e-4 per image). They are checked against float64 at these looser tolerances;
# that they compute the exact same loss is tested in float64 by tools/tests/test_benchmark.py.
PEER_TOLERANCES = {
    torch.float64: (1e-6, 1e-6),
    torch.float32: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 5e-2),
    torch.float16: (2e-2, 5e-2),
}


class CheckFailed(AssertionError):
    pass


def reference_loss_and_grad(kind, layout, logits, labels):
    """The float64 loss and gradient that a provider of this kind and layout must match."""
    from drloss_cuda import reference

    x = logits.detach().double().requires_grad_(True)
    if kind == "focal":
        loss = peers.sigmoid_focal_loss_direct(x, labels)
    elif layout == "pooled":
        loss = reference.sigmoid_dr_loss(x.reshape(-1, x.shape[-1]), labels.reshape(-1))
    else:
        loss = reference.sigmoid_dr_loss(x, labels)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def check_provider(name, fn, logits, labels, expected, tolerances):
    """Runs `fn` forward and backward on (logits, labels) and compares with `expected` (float64
    loss and gradient). Returns (loss, loss_rel_err, grad_rel_err); raises CheckFailed when
    either error is over its tolerance or anything is not finite."""
    ref_loss, ref_grad = expected
    loss = fn(logits, labels)
    if loss.dim() != 0:
        raise CheckFailed(f"{name}: expected a scalar loss, got shape {list(loss.shape)}")
    (grad,) = torch.autograd.grad(loss, logits)
    if grad.shape != ref_grad.shape:
        raise CheckFailed(f"{name}: gradient shape {list(grad.shape)}, expected {list(ref_grad.shape)}")
    loss64 = loss.detach().double()
    loss_err = ((loss64 - ref_loss).abs() / ref_loss.abs().clamp_min(1e-12)).item()
    grad_scale = ref_grad.abs().max().clamp_min(1e-300)
    grad_err = ((grad.double() - ref_grad).abs().max() / grad_scale).item() if grad.numel() else 0.0
    loss_tol, grad_tol = tolerances
    if not (math.isfinite(loss_err) and loss_err <= loss_tol):
        raise CheckFailed(f"{name}: loss {loss64.item():.9g} vs float64 reference {ref_loss.item():.9g} (relative error {loss_err:.3g} > {loss_tol:g})")
    if not (math.isfinite(grad_err) and grad_err <= grad_tol):
        raise CheckFailed(f"{name}: gradient differs from the float64 reference by {grad_err:.3g} of its largest entry (> {grad_tol:g})")
    return loss64.item(), loss_err, grad_err
