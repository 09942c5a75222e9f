"""Problems the product tests share: random inputs with every kind of anchor, the fused loss and
its gradient beside the reference's in float64, and the closed form of the loss.

Every fused call of a test module that imports `poison_outputs` runs with
DRLOSS_POISON_OUTPUTS=1: the ops fill their outputs with NaN before the kernels write them, so
an element a kernel forgets to write fails the comparison.
"""

import math

import pytest
import torch

from drloss_cuda import reference, sigmoid_dr_loss
from tolerances import DEFAULTS, assert_grad_close, assert_loss_close, dense_float64

HYPER_NAMES = ("pos_lambda", "neg_lambda", "L", "tau", "margin", "first_label")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setenv("DRLOSS_POISON_OUTPUTS", "1")


def make_inputs(shape, device, dtype=torch.float32, first_label=0, scale=3.0, ignore_frac=0.1, bg_frac=0.5):
    """Random logits and labels with a mix of positive, background and ignored anchors."""
    C = shape[-1]
    logits = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(first_label, first_label + C, shape[:-1])
    u = torch.rand(shape[:-1])
    background = first_label + C if first_label == 0 else 0
    labels[u < bg_frac] = background
    labels[u < ignore_frac] = -1
    return logits.to(device), labels.to(device)


def loss_and_grad(fn, logits, labels, grad_weights=None, **kwargs):
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, labels, **kwargs)
    if grad_weights is None:
        loss.sum().backward()
    else:
        (loss * grad_weights.to(loss)).sum().backward()
    return loss.detach(), x.grad


def reference_float64(logits, labels, grad_weights=None, **kwargs):
    loss, grad = loss_and_grad(reference.sigmoid_dr_loss, logits.double(), labels, grad_weights, **kwargs)
    return loss, grad


def full_hyper(kwargs):
    """Every hyperparameter of a call, defaults filled in."""
    return {name: kwargs.get(name, DEFAULTS.get(name, 0)) for name in HYPER_NAMES}


def upstream_per_group(logits, reduction, grad_weights):
    """d(objective)/d(per-group loss) of loss_and_grad's objective."""
    groups = logits.shape[0] if logits.dim() == 3 else 1
    g = torch.ones(groups, dtype=torch.float64) if grad_weights is None else grad_weights.double().cpu()
    return g / groups if reduction == "mean" else g


def assert_matches_float64(logits, labels, grad_weights=None, **kwargs):
    """The fused loss and gradient against the reference in float64: the loss to the documented
    relative accuracy, the gradient element by element (tests/tolerances.py says why and how)."""
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, grad_weights, **kwargs)
    ref_loss, ref_grad = reference_float64(logits, labels, grad_weights, **kwargs)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    hyper = full_hyper(kwargs)
    g = upstream_per_group(logits, kwargs.get("reduction", "mean"), grad_weights)
    bound = dense_float64(logits, labels, **hyper, grad_losses=g).bound
    assert_loss_close(loss, ref_loss, logits.dtype, hyper["L"], hyper["pos_lambda"], hyper["neg_lambda"])
    assert_grad_close(grad, ref_grad, logits.dtype, bound)
    return loss, grad


LOSS_FUNCTIONS = [pytest.param(sigmoid_dr_loss, id="fused"), pytest.param(reference.sigmoid_dr_loss, id="reference")]


def expected_loss(e_neg, e_pos, L=DEFAULTS["L"], tau=DEFAULTS["tau"], margin=DEFAULTS["margin"]):
    """tau / L * softplus(L * (E_neg - E_pos + margin)), section 2 of the math, in float64."""
    return tau / L * math.log1p(math.exp(L * (e_neg - e_pos + margin)))

