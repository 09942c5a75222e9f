"""Values at the edges of the math: closed forms (the paper's value, no positives, no negatives,
every anchor ignored), empty batches, NaN, labels outside the class range, and the two label
conventions agreeing."""

import math

import pytest
import torch

from drloss_cuda import reference, sigmoid_dr_loss
from problems import (
    assert_matches_float64,
    expected_loss,
    loss_and_grad,
    make_inputs,
    poison_outputs,  # noqa: F401  (autouse fixture)
)
from tolerances import DEFAULTS


@pytest.mark.parametrize("margin", [1.6, 30.0], ids=["L_d=22", "L_d=590"])
def test_float64_exact_where_L_d_is_large(device, margin):
    # One positive of p = 1/2 and no negative: E_pos = 1/2, E_neg = 0, so z = L d = L (margin -
    # 1/2), the loss is tau / L * softplus(z) and dloss/dx = -tau * sigmoid(z) * p (1 - p) (the
    # weight of the only positive is 1 and its factor 1 + s (p - E) is 1). Both sides to rounding,
    # the reference included (softplus past its linear threshold was 1e-11 off at z = 22).
    L, tau = 20.0, 4.0
    z = L * (margin - 0.5)
    want_loss = tau / L * (z + math.log1p(math.exp(-z)))
    want_grad = -tau / (1.0 + math.exp(-z)) * 0.25
    for loss_fn in (sigmoid_dr_loss, reference.sigmoid_dr_loss):
        x = torch.zeros(1, 1, dtype=torch.float64, device=device, requires_grad=True)
        loss = loss_fn(x, torch.zeros(1, dtype=torch.long, device=device), L=L, tau=tau, margin=margin)
        loss.backward()
        assert loss.item() == pytest.approx(want_loss, rel=4e-16, abs=0), loss_fn
        assert x.grad.item() == pytest.approx(want_grad, rel=4e-16, abs=0), loss_fn


def test_all_equal_probabilities_give_the_papers_value(device):
    # With every p equal, E_neg = E_pos = p, so the loss is tau/L*ln(1+e^(L*margin)).
    logits = torch.zeros(2, 100, 80, device=device)
    labels = torch.randint(0, 81, (2, 100), device=device)
    labels[:, 0] = 3  # at least one positive per image
    loss = sigmoid_dr_loss(logits, labels, reduction="none")
    assert expected_loss(0.5, 0.5) == pytest.approx(2.0324, abs=1e-4)
    torch.testing.assert_close(loss, torch.full_like(loss, expected_loss(0.5, 0.5)), rtol=1e-6, atol=0)
    # Any constant logit gives the same value.
    loss = sigmoid_dr_loss(torch.full((2, 100, 80), 1.7, device=device), labels, reduction="none")
    torch.testing.assert_close(loss, torch.full_like(loss, expected_loss(0.5, 0.5)), rtol=1e-6, atol=0)


def test_no_positives(device, generator):
    logits, labels = make_inputs((2, 30, 4), device)
    labels = torch.where(labels >= 0, 4, labels)  # every counted anchor is background
    loss, grad = assert_matches_float64(logits, labels, reduction="none")
    # E_pos = 1 by convention: check against the formula with the negatives' expectation.
    p = torch.sigmoid(logits.double().cpu())
    for n in range(2):
        neg = p[n][labels[n].cpu() >= 0].reshape(-1)
        q = torch.softmax(neg / DEFAULTS["neg_lambda"], 0)
        assert loss[n].item() == pytest.approx(expected_loss((q * neg).sum().item(), 1.0), rel=1e-6)


def test_no_negatives(device, generator):
    # C = 1 and every anchor labelled with the one class: all entries positive, E_neg = 0.
    logits = torch.randn(2, 25, 1, device=device)
    labels = torch.zeros(2, 25, dtype=torch.long, device=device)
    loss, _ = assert_matches_float64(logits, labels, reduction="none")
    p = torch.sigmoid(logits.double().cpu()).reshape(2, -1)
    for n in range(2):
        r = torch.softmax(-p[n] / DEFAULTS["pos_lambda"], 0)
        assert loss[n].item() == pytest.approx(expected_loss(0.0, (r * p[n]).sum().item()), rel=1e-6)


def test_all_ignored(device, generator):
    logits = torch.randn(3, 20, 6, device=device)
    labels = torch.full((3, 20), -1, device=device)
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    torch.testing.assert_close(loss, torch.full_like(loss, expected_loss(0.0, 1.0)), rtol=1e-6, atol=0)
    assert torch.equal(grad, torch.zeros_like(grad))
    # The reference gives the same value and, like the fused op, a zero gradient.
    ref_loss, ref_grad = loss_and_grad(reference.sigmoid_dr_loss, logits.cpu(), labels.cpu(), reduction="none")
    torch.testing.assert_close(ref_loss, loss.cpu())
    assert torch.equal(ref_grad, torch.zeros_like(ref_grad))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(device, reduction):
    logits = torch.randn(0, 10, 5, device=device)
    labels = torch.zeros(0, 10, dtype=torch.long, device=device)
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction=reduction)
    if reduction == "none":
        assert loss.shape == (0,)
    else:
        assert loss.shape == () and loss.item() == 0.0
    assert grad.shape == logits.shape
    ref = reference.sigmoid_dr_loss(logits.cpu(), labels.cpu(), reduction=reduction)
    torch.testing.assert_close(loss.cpu(), ref)


@pytest.mark.parametrize("shape", [(2, 0, 5), (0, 5), (2, 3, 0)], ids=["A=0", "M=0", "C=0"])
def test_no_anchors_or_no_classes(device, shape):
    logits = torch.randn(shape, device=device)
    labels = torch.zeros(shape[:-1], dtype=torch.long, device=device)
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    torch.testing.assert_close(loss, torch.full_like(loss, expected_loss(0.0, 1.0)), rtol=1e-6, atol=0)
    assert grad.shape == logits.shape and not grad.isnan().any()
    torch.testing.assert_close(loss.cpu(), reference.sigmoid_dr_loss(logits.cpu(), labels.cpu(), reduction="none"))


# The default temperatures (fixed exponent shifts) and temperatures below 1/64 (the running max).
TEMPERATURES = [pytest.param({}, id="fixed-shifts"), pytest.param({"pos_lambda": 1e-3, "neg_lambda": 1e-3}, id="running-max")]


@pytest.mark.parametrize("temperatures", TEMPERATURES)
def test_nan_in_counted_entry_gives_nan(device, generator, temperatures):
    logits, labels = make_inputs((2, 20, 4), device, ignore_frac=0.0)
    logits[0, 3, 1] = float("nan")  # image 0, a counted anchor
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none", **temperatures)
    assert loss[0].isnan() and not loss[1].isnan()
    assert grad[0].isnan().any() and not grad[1].isnan().any()
    ref = reference.sigmoid_dr_loss(logits.cpu(), labels.cpu(), reduction="none", **temperatures)
    assert ref[0].isnan()


@pytest.mark.parametrize("temperatures", TEMPERATURES)
def test_nan_in_ignored_anchor_is_ignored(device, generator, temperatures):
    logits, labels = make_inputs((2, 20, 4), device)
    labels[1, 5] = -1
    clean = logits.clone()
    logits[1, 5, :] = float("nan")
    # The loss does not depend on an ignored anchor, so its gradient there is exactly 0 (the
    # reference's autograd would give 0 * NaN = NaN): compare with the NaN-free input.
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none", **temperatures)
    ref_loss, ref_grad = loss_and_grad(sigmoid_dr_loss, clean, labels, reduction="none", **temperatures)
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)
    assert torch.equal(grad[1, 5], torch.zeros_like(grad[1, 5]))
    assert_matches_float64(clean, labels, reduction="none", **temperatures)


def test_labels_outside_class_range_are_background(device, generator):
    logits, labels = make_inputs((2, 30, 5), device)
    as_background = labels.clone()
    as_background[labels >= 0] = 5
    odd = as_background.clone()
    odd[:, ::3] = torch.where(labels[:, ::3] >= 0, 1000, -1)  # any label >= first_label + C
    torch.testing.assert_close(
        sigmoid_dr_loss(logits, odd, reduction="none"), sigmoid_dr_loss(logits, as_background, reduction="none")
    )


def test_label_conventions_agree(device, generator):
    # first_label=1 (official: classes 1..C, background 0) and first_label=0 (classes 0..C-1,
    # background C) describe the same assignment.
    logits, labels0 = make_inputs((2, 40, 6), device, first_label=0)
    labels1 = torch.where(labels0 < 0, -1, torch.where(labels0 == 6, 0, labels0 + 1))
    torch.testing.assert_close(
        sigmoid_dr_loss(logits, labels0, first_label=0, reduction="none"),
        sigmoid_dr_loss(logits, labels1, first_label=1, reduction="none"),
    )
