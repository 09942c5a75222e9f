"""Behaviour of the fused sigmoid_dr_loss on every device, against the pure-PyTorch reference.

Inputs are drawn fresh on every run (the `generator` fixture prints the seed). Every fused
call runs with DRLOSS_POISON_OUTPUTS=1, so the ops fill their outputs with NaN before the
kernels write them: an element a kernel forgets to write fails the comparison.
"""

import contextlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import drloss_cuda
import drloss_cuda.ops
from conftest import DEVICES
from drloss_cuda import SigmoidDRLoss, reference, sigmoid_dr_loss
from tolerances import DEFAULTS, assert_grad_close, assert_half_grad_close, assert_loss_close, dense_float64

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


SHAPES = [
    (2, 50, 7),  # per-image groups
    (1, 300, 80),  # N = 1, COCO classes
    (3, 1, 5),  # A = 1
    (4, 37, 13),  # odd C
    (2, 16, 1),  # C = 1
    (500, 9),  # pooled [M, C]
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("first_label", [0, 1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float32_matches_float64_reference(device, generator, shape, first_label, reduction):
    logits, labels = make_inputs(shape, device, first_label=first_label)
    assert_matches_float64(logits, labels, first_label=first_label, reduction=reduction)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float64_matches_reference_to_rounding(device, generator, shape):
    logits, labels = make_inputs(shape, device, dtype=torch.float64)
    assert_matches_float64(logits, labels, reduction="none")


def test_float32_detection_scale_matches_float64(device, generator):
    # 2 x 4000 x 80 = 640,000 entries: many chunks / blocks per group merged in order.
    logits, labels = make_inputs((2, 4000, 80), device, bg_frac=0.9)
    assert_matches_float64(logits, labels, reduction="none")


@pytest.mark.parametrize(
    "hyper",
    [
        dict(pos_lambda=0.001, neg_lambda=0.001),  # exponents up to 1000: a naive softmax overflows
        dict(pos_lambda=5.0, neg_lambda=2.0, L=1.0, tau=0.5, margin=0.0),
        dict(pos_lambda=0.3, neg_lambda=0.05, L=20.0, tau=10.0, margin=-0.3),
        dict(pos_lambda=drloss_cuda.MIN_LAMBDA, neg_lambda=drloss_cuda.MIN_LAMBDA),  # exponents up to 1e4
    ],
    ids=["lambda0.001", "soft", "sharp", "min_lambda"],
)
def test_non_default_hyperparameters(device, generator, hyper):
    logits, labels = make_inputs((2, 200, 11), device)
    loss, _ = assert_matches_float64(logits, labels, reduction="none", **hyper)
    assert torch.isfinite(loss).all()


def test_extreme_logits(device, generator):
    logits, labels = make_inputs((2, 100, 6), device)
    logits = torch.where(torch.rand_like(logits) < 0.5, -50.0, 50.0) * torch.rand_like(logits).add(0.9)
    loss, grad = assert_matches_float64(logits, labels, reduction="none")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_against_float32(device, generator, dtype):
    logits, labels = make_inputs((2, 300, 20), device, dtype=dtype)
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    # float32 holds the rounded logits exactly, and the kernels compute in float32 either way:
    # the loss is the float32 loss of these logits, and the gradient is the float32 run's
    # gradient rounded once to `dtype` (which itself matches float64 element by element).
    ref_loss, _ = reference_float64(logits, labels, reduction="none")
    assert_loss_close(loss, ref_loss, dtype)
    _, grad32 = assert_matches_float64(logits.float(), labels, reduction="none")
    assert_half_grad_close(grad, grad32, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 300, 20), (3, 37, 5), (1, 211, 81)])
def test_half_precision_is_the_float32_path_rounded_once_on_cpu(generator, dtype, shape):
    """On the CPU the 16-bit kernels compute exactly what the float32 kernels compute for the
    same (upcast) logits: the same loss bits, and the gradient is the float32 one rounded once.
    The shapes cross the conversions' 8-element groups, the loops' 128-element blocks and the
    2048-element chunks at odd offsets."""
    logits, labels = make_inputs(shape, "cpu", dtype=dtype)
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    loss32, grad32 = loss_and_grad(sigmoid_dr_loss, logits.float(), labels, reduction="none")
    assert torch.equal(loss, loss32)
    assert torch.equal(grad, grad32.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_nan_gradients_on_cpu(generator, dtype):
    """A NaN logit in a counted entry makes its image's gradient NaN (ignored entries stay 0) in
    16 bits too; the other image is the float32 gradient rounded once, bit for bit. A bfloat16
    NaN is stored as the quiet NaN 0x7fc0, as c10::BFloat16 rounds one (x86 arithmetic makes
    the negative NaN 0xffc00000, which a conversion without the NaN case turns into 0xffc0)."""
    logits, labels = make_inputs((2, 300, 20), "cpu", dtype=dtype)
    labels[0, 7] = 20  # background: every entry of the anchor is a counted negative
    logits[0, 7, 3] = float("nan")
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    _, grad32 = loss_and_grad(sigmoid_dr_loss, logits.float(), labels, reduction="none")
    counted = (labels[0] >= 0).unsqueeze(-1).expand(-1, 20)
    assert loss[0].isnan() and grad[0][counted].isnan().all() and (grad[0][~counted] == 0).all()
    assert torch.equal(grad[1], grad32[1].to(dtype))
    if dtype == torch.bfloat16:
        assert (grad[0][counted].view(torch.int16) == 0x7FC0).all()


def test_gradcheck_float64(device, generator):
    logits, labels = make_inputs((2, 6, 4), device, dtype=torch.float64, scale=1.0)
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sigmoid_dr_loss(t, labels, reduction="none"), (x,))
    xp = logits.reshape(-1, 4).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sigmoid_dr_loss(t, labels.reshape(-1), first_label=0), (xp,))
    x2 = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: sigmoid_dr_loss(t, labels, reduction="sum", pos_lambda=0.2, neg_lambda=0.05, margin=0.1), (x2,)
    )


def test_upstream_gradient_other_than_one(device, generator):
    logits, labels = make_inputs((3, 40, 5), device)
    weights = torch.randn(3, device=device)
    assert_matches_float64(logits, labels, grad_weights=weights, reduction="none")


@pytest.mark.parametrize(
    "scale, hyper",
    [
        (1e14, {}),
        (1.0, {"tau": 1e15}),
        (1e30, {"pos_lambda": 1 / 64}),
        (1e38, {}),
        (1.0, {"tau": 1e39, "margin": -1.0}),
    ],
    ids=["upstream_1e14", "tau_1e15", "upstream_1e30_positives", "upstream_1e38", "tau_1e39"],
)
def test_large_slopes_keep_the_gradient_finite(device, generator, scale, hyper):
    # With a fixed shift Z can be as small as 2^-93 (every p near 0 at neg_lambda = 1/64, or
    # near 1 for the positives at pos_lambda = 1/64), and slope / Z overflowed float to inf
    # once slope passed about 2^35 / (number of elements) (policy 3 of csrc/dr_loss_math.h),
    # though every element is finite; float64 had no such limit. Here Z_neg is about 2^-85.5.
    # The slope itself, g tau sigmoid(L d), overflowed float beyond 3.4e38 (a loss scaled by
    # 1e38 at tau = 4, or tau = 1e39, which float cannot hold): it is computed in double.
    near = 12.0 if "pos_lambda" in hyper else -30.0
    logits = (near + torch.randn(2, 50, 3)).to(device)
    labels = torch.randint(0, 4, (2, 50)).to(device)  # a quarter background, the rest a class
    kwargs = {"neg_lambda": 1 / 64, "margin": 2.0, **hyper, "reduction": "none"}
    weights = torch.full((2,), scale, device=device)
    _, grad = assert_matches_float64(logits, labels, grad_weights=weights, **kwargs)
    assert torch.isfinite(grad).all() and (grad != 0).any()


def test_L_beyond_the_float_range_in_the_float32_backward(device):
    # One positive of p = 1/2 and no negative, margin 1/2: d = 0, so L d = 0 for any finite L,
    # and dloss/dx = -tau sigmoid(0) p (1 - p) = -1/2. A float L of 1e39 was inf, and inf * 0 NaN.
    x = torch.zeros(1, 1, device=device, requires_grad=True)
    loss = sigmoid_dr_loss(x, torch.zeros(1, dtype=torch.long, device=device), L=1e39, margin=0.5)
    loss.backward()
    assert x.grad.item() == pytest.approx(-0.5, rel=1e-6)
    assert loss.item() == pytest.approx(4.0 / 1e39 * math.log(2.0), rel=1e-6)


def mixed_labels(mix, shape, C, first_label=0):
    """Labels [shape] of one kind of mix (first_label convention; background = first_label + C)."""
    background = first_label + C
    classes = torch.randint(first_label, first_label + C, shape)
    u = torch.rand(shape)
    if mix == "dense_positives":  # every anchor a positive
        return classes
    if mix == "sparse_positives":  # about 1% positives, the rest background
        return torch.where(u < 0.01, classes, background)
    if mix == "no_positives":  # background and ignored
        return torch.where(u < 0.3, -1, background)
    if mix == "all_background":
        return torch.full(shape, background)
    if mix == "all_ignored":
        return torch.full(shape, -1)
    return torch.where(u < 0.1, -1, torch.where(u < 0.5, background, classes))  # "mixed"


LABEL_MIXES = ["dense_positives", "sparse_positives", "no_positives", "all_background", "all_ignored", "mixed"]


@pytest.mark.parametrize("pooled", [False, True], ids=["per_image", "pooled"])
@pytest.mark.parametrize("mix", LABEL_MIXES)
@pytest.mark.parametrize("C", [1, 2, 5, 80])
def test_float32_loss_for_every_label_mix(device, generator, C, mix, pooled):
    """The loss within 1e-6 relative of float64 (and the gradient element by element) whatever
    the labels: about 8,000 entries per group, from one class up."""
    A = max(8192 // C, 4)
    logits = torch.randn(2, A, C, dtype=torch.float64) * 3
    labels = mixed_labels(mix, (2, A), C)
    if pooled:
        logits, labels = logits.reshape(-1, C), labels.reshape(-1)
    assert_matches_float64(logits.float().to(device), labels.to(device), reduction="none")


@pytest.mark.parametrize("shape", [(2048, 1), (4, 512, 1), (4096, 3)], ids=lambda s: "x".join(map(str, s)))
def test_float32_loss_of_many_equal_positives(device, shape):
    """Thousands of equal terms in one softmax (all positives at the same logit): their sum must
    not drift in float32 (a float32 running sum of 2048 equal terms is 1.4e-4 off)."""
    logits = torch.full(shape, 2.0, device=device)
    labels = torch.zeros(shape[:-1], dtype=torch.long, device=device)
    assert_matches_float64(logits, labels, reduction="none")


# --- the checker itself ------------------------------------------------------------------------


def _kernel_and_float64(shape, generator, **kwargs):
    logits, labels = make_inputs(shape, "cpu", **kwargs)
    _, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    _, ref_grad = reference_float64(logits, labels, reduction="none")
    bound = dense_float64(logits, labels, **full_hyper({})).bound
    assert_grad_close(grad, ref_grad, torch.float32, bound)  # the real kernel passes
    return logits, labels, grad, ref_grad, bound


def test_checker_rejects_zeroed_negatives(generator):
    """A kernel that drops every negative with x < -1 (p < 0.27, tiny softmax weights) is caught,
    although the former check, rtol * max|grad|, let it pass at detection scale."""
    logits, labels, grad, ref_grad, bound = _kernel_and_float64((2, 4000, 80), generator, bg_frac=0.9)
    negative = torch.stack([reference.group_masks(labels[n], 80, 0)[1] for n in range(2)])
    wrong = torch.where(negative & (logits < -1), 0.0, grad)
    assert (wrong != grad).sum() > 100
    torch.testing.assert_close(wrong.double(), ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max().item())
    with pytest.raises(AssertionError, match="outside their bound"):
        assert_grad_close(wrong, ref_grad, torch.float32, bound)


def test_checker_rejects_one_perturbed_element(generator):
    """One element off by 1e-3 of itself is caught, even the smallest one of the gradient, among
    the elements whose bound is below 1e-4 of their value: most of them (the others are those
    whose factor 1 + s (p - E) nearly cancels, or whose p is within eps of 1)."""
    logits, labels, grad, ref_grad, bound = _kernel_and_float64((2, 300, 20), generator)
    tight = (ref_grad != 0) & (bound.tolerance(torch.float32) < 1e-4 * ref_grad.abs())
    assert tight.sum() > 0.5 * (ref_grad != 0).sum()
    magnitude = torch.where(tight, ref_grad.abs(), math.inf).reshape(-1)
    smallest = int(magnitude.argmin())
    assert magnitude[smallest] < 1e-6 * ref_grad.abs().max()  # far below the largest entry
    for index in (smallest, int(torch.nonzero(tight.reshape(-1))[0])):
        wrong = grad.clone().reshape(-1)
        wrong[index] *= 1 + 1e-3
        with pytest.raises(AssertionError, match="outside their bound"):
            assert_grad_close(wrong.reshape(grad.shape), ref_grad, torch.float32, bound)


def test_checker_rejects_a_loss_off_by_2e_6():
    want = torch.tensor([1.5, 0.25], dtype=torch.float64)
    assert_loss_close(want.float(), want, torch.float32)
    with pytest.raises(AssertionError, match="relative"):
        assert_loss_close(want * (1 + 2e-6), want, torch.float32)


def expected_loss(e_neg, e_pos, L=DEFAULTS["L"], tau=DEFAULTS["tau"], margin=DEFAULTS["margin"]):
    """tau / L * softplus(L * (E_neg - E_pos + margin)), section 2 of the math, in float64."""
    return tau / L * math.log1p(math.exp(L * (e_neg - e_pos + margin)))


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


def test_nan_in_counted_entry_gives_nan(device, generator):
    logits, labels = make_inputs((2, 20, 4), device, ignore_frac=0.0)
    logits[0, 3, 1] = float("nan")  # image 0, a counted anchor
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    assert loss[0].isnan() and not loss[1].isnan()
    assert grad[0].isnan().any() and not grad[1].isnan().any()
    ref = reference.sigmoid_dr_loss(logits.cpu(), labels.cpu(), reduction="none")
    assert ref[0].isnan()


def test_nan_in_ignored_anchor_is_ignored(device, generator):
    logits, labels = make_inputs((2, 20, 4), device)
    labels[1, 5] = -1
    clean = logits.clone()
    logits[1, 5, :] = float("nan")
    # The loss does not depend on an ignored anchor, so its gradient there is exactly 0 (the
    # reference's autograd would give 0 * NaN = NaN): compare with the NaN-free input.
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    ref_loss, ref_grad = loss_and_grad(sigmoid_dr_loss, clean, labels, reduction="none")
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)
    assert torch.equal(grad[1, 5], torch.zeros_like(grad[1, 5]))
    assert_matches_float64(clean, labels, reduction="none")


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


LOSS_FUNCTIONS = [pytest.param(sigmoid_dr_loss, id="fused"), pytest.param(reference.sigmoid_dr_loss, id="reference")]


@pytest.mark.parametrize("loss_fn", LOSS_FUNCTIONS)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32], ids=str)
def test_integer_label_types_are_widened(device, generator, loss_fn, label_dtype):
    # Unsigned types have no -1: their anchors are all counted.
    unsigned = not label_dtype.is_signed
    logits, labels = make_inputs((2, 30, 5), device, ignore_frac=0.0 if unsigned else 0.1)
    expected = loss_fn(logits, labels, reduction="none")
    torch.testing.assert_close(loss_fn(logits, labels.to(label_dtype), reduction="none"), expected, rtol=0, atol=0)


@pytest.mark.parametrize("loss_fn", LOSS_FUNCTIONS)
def test_uint64_labels_are_refused(device, loss_fn):
    # A uint64 label >= 2**63 would wrap to a negative int64, which means "ignore".
    logits = torch.randn(2, 5, 3, device=device)
    with pytest.raises(RuntimeError, match="labels of type torch.uint64 are not accepted.*labels.long()"):
        loss_fn(logits, torch.zeros(2, 5, dtype=torch.uint64, device=device))


@pytest.mark.parametrize("loss_fn", LOSS_FUNCTIONS)
def test_labels_below_minus_one_are_ignored(device, generator, loss_fn):
    logits, labels = make_inputs((2, 30, 5), device)
    labels[:, ::3] = -1  # ignored anchors whatever the draw (60 anchors can draw none: p = 0.2%)
    far = torch.where(labels < 0, torch.randint(-2**62, -1, labels.shape, device=device), labels)
    assert (far < -1).any()
    expected = loss_fn(logits, labels, reduction="none")
    torch.testing.assert_close(loss_fn(logits, far, reduction="none"), expected, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_non_contiguous_inputs(device, generator, layout):
    logits, labels = make_inputs((2, 40, 6), device)
    if layout == "transposed":  # the same values through a transposed ("channels-last"-like) layout
        view = logits.transpose(1, 2).contiguous().transpose(1, 2)
        labels_view = labels.t().contiguous().t()
    elif layout == "sliced":  # a strided slice of a larger tensor
        big = torch.randn(2, 40, 12, device=device)
        big[:, :, ::2] = logits
        view, labels_view = big[:, :, ::2], labels
    else:  # stride 0: one image's logits and labels repeated
        logits, labels = logits[:1].expand(2, -1, -1), labels[:1].expand(2, -1)
        view, labels_view = logits, labels
        logits, labels = logits.contiguous(), labels.contiguous()
    assert not view.is_contiguous()
    loss, grad = loss_and_grad(sigmoid_dr_loss, view, labels_view, reduction="none")
    want_loss, want_grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    assert grad.shape == view.shape
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)
    assert_matches_float64(view, labels_view, reduction="none")


def test_one_contiguous_copy_per_call_chain(device, generator, monkeypatch):
    """Non-contiguous logits are copied once, by the public function: the op gets (and autograd
    saves) the contiguous copy, so the backward op reads contiguous tensors and copies nothing."""
    logits, labels = make_inputs((2, 40, 6), device)
    x = logits.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
    y = labels.t().contiguous().t()
    seen = []
    backward_op = drloss_cuda.ops.backward_op

    def spy(grad_losses, saved_logits, saved_labels, stats, *hyper):
        seen.append((saved_logits.is_contiguous(), saved_labels.is_contiguous()))
        return backward_op(grad_losses, saved_logits, saved_labels, stats, *hyper)

    monkeypatch.setattr(drloss_cuda.ops, "backward_op", spy)
    from torch.profiler import ProfilerActivity, profile

    def logits_copies(prof):
        return [e for e in prof.events() if e.name == "aten::clone" and e.input_shapes and e.input_shapes[0] == list(x.shape)]

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as forward_prof:
        loss = sigmoid_dr_loss(x, y)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as backward_prof:
        loss.backward()
    assert seen == [(True, True)]
    assert len(logits_copies(forward_prof)) == 1
    assert logits_copies(backward_prof) == []
    assert x.grad.shape == x.shape


def test_bitwise_deterministic_across_runs(device, generator):
    logits, labels = make_inputs((2, 3000, 20), device)
    first = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    for _ in range(3):
        again = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@contextlib.contextmanager
def num_threads(n):
    """torch's intra-op thread count set to n inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_bitwise_deterministic_across_thread_counts(generator):
    """The threads take the chunks on demand (each its own range first, then what is left of the
    others'), so which thread computes a chunk changes from call to call. 8 threads on a machine
    with fewer cores start at different times and take over each other's ranges."""
    logits, labels = make_inputs((3, 5000, 20), "cpu")
    labels[:, 1000:1400] = -1  # ignored runs: the classification's marks must not leak
    results = []
    for n in (1, 2, 3, 8, 8):
        with num_threads(n):
            results.append(loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none"))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("C", [1, 3, 80])
def test_one_chunks_labels_do_not_leak_into_the_next(generator, C):
    """On one thread a single classification buffer walks every 2048-element chunk in turn and
    sets back only the marks the previous chunk cleared. Runs of ignored anchors and dense
    positives alternate with all-negative runs, over groups whose size is no multiple of 2048:
    a mark left over would drop (or count as positive) negatives of the next chunk."""
    A = 5000 // C + 7
    anchor = torch.arange(A)
    run = (anchor * C) // 1500  # runs of about 1500 entries, out of step with the chunks
    labels = torch.where(run % 3 == 0, -1, torch.where(run % 3 == 1, 0, C)).repeat(3, 1)
    labels[1] = labels[1].roll(A // 3)
    logits = torch.randn(3, A, C, dtype=torch.float64) * 3
    with num_threads(1):
        assert_matches_float64(logits.float(), labels, reduction="none")


def test_module_matches_functional(device, generator):
    logits, labels = make_inputs((2, 30, 5), device, first_label=1)
    kwargs = dict(pos_lambda=0.5, neg_lambda=0.05, L=4.0, tau=2.0, margin=0.3, first_label=1, reduction="sum")
    module = SigmoidDRLoss(**kwargs)
    torch.testing.assert_close(module(logits, labels), sigmoid_dr_loss(logits, labels, **kwargs))
    assert "first_label=1" in repr(module) and "reduction='sum'" in repr(module)
    default = SigmoidDRLoss()
    torch.testing.assert_close(default(logits, labels), sigmoid_dr_loss(logits, labels))


def test_defaults_are_the_official_ones():
    assert drloss_cuda.DEFAULT_NEG_LAMBDA == pytest.approx(0.1 / math.log(3.5))
    assert (drloss_cuda.DEFAULT_POS_LAMBDA, drloss_cuda.DEFAULT_L, drloss_cuda.DEFAULT_TAU, drloss_cuda.DEFAULT_MARGIN) == (
        1.0,
        6.0,
        4.0,
        0.5,
    )


def test_double_backward_raises_clearly(device):
    logits, labels = make_inputs((1, 10, 3), device, dtype=torch.float64)
    x = logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(sigmoid_dr_loss(x, labels), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()


def test_opcheck(device, generator):
    for shape, dtype in [((2, 20, 5), torch.float32), ((30, 4), torch.float64), ((2, 10, 3), torch.float16)]:
        logits, labels = make_inputs(shape, device, dtype=dtype)
        logits.requires_grad_(True)
        args = (logits, labels, 1.0, 0.08, 6.0, 4.0, 0.5, 0)
        torch.library.opcheck(torch.ops.drloss_cuda.sigmoid_dr_loss_forward, args)
        losses, stats = torch.ops.drloss_cuda.sigmoid_dr_loss_forward(*args)
        grad_losses = torch.randn_like(losses)
        torch.library.opcheck(
            torch.ops.drloss_cuda.sigmoid_dr_loss_backward,
            (grad_losses, logits.detach(), labels, stats, 1.0, 0.08, 6.0, 4.0, 0.5, 0),
        )


# --- bad input -----------------------------------------------------------------------------


def test_rejects_wrong_rank(device):
    with pytest.raises(RuntimeError, match="logits must have shape"):
        sigmoid_dr_loss(torch.randn(3, device=device), torch.zeros((), dtype=torch.long, device=device))
    with pytest.raises(RuntimeError, match="logits must have shape"):
        sigmoid_dr_loss(torch.randn(1, 2, 3, 4, device=device), torch.zeros(1, 2, 3, dtype=torch.long, device=device))


def test_rejects_label_shape_mismatch(device):
    with pytest.raises(RuntimeError, match="labels must have shape"):
        sigmoid_dr_loss(torch.randn(2, 5, 3, device=device), torch.zeros(2, 4, dtype=torch.long, device=device))
    with pytest.raises(RuntimeError, match="labels must have shape"):
        sigmoid_dr_loss(torch.randn(10, 3, device=device), torch.zeros(10, 3, dtype=torch.long, device=device))


@pytest.mark.parametrize("label_dtype", [torch.float32, torch.bool, torch.float64])
def test_rejects_non_integer_labels(device, label_dtype):
    with pytest.raises(RuntimeError, match="labels must be an integer tensor"):
        sigmoid_dr_loss(torch.randn(2, 5, 3, device=device), torch.zeros(2, 5, dtype=label_dtype, device=device))


@pytest.mark.parametrize("logits_dtype", [torch.int64, torch.int32, torch.complex64])
def test_rejects_non_floating_logits(device, logits_dtype):
    with pytest.raises(RuntimeError, match="logits must be float32, float64, float16 or bfloat16"):
        sigmoid_dr_loss(torch.zeros(2, 5, 3, dtype=logits_dtype, device=device), torch.zeros(2, 5, dtype=torch.long, device=device))


@pytest.mark.parametrize("name", ["pos_lambda", "neg_lambda", "L", "tau"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_rejects_non_positive_hyperparameters(device, name, value):
    logits, labels = make_inputs((1, 4, 3), device)
    with pytest.raises(ValueError, match=f"{name} must be a positive finite number"):
        sigmoid_dr_loss(logits, labels, **{name: value})
    with pytest.raises(ValueError, match=name):
        SigmoidDRLoss(**{name: value})(logits, labels)


@pytest.mark.parametrize("loss_fn", LOSS_FUNCTIONS)
def test_rejects_bad_margin_and_first_label(device, loss_fn):
    logits, labels = make_inputs((1, 4, 3), device)
    with pytest.raises(ValueError, match="margin must be a finite number"):
        loss_fn(logits, labels, margin=float("nan"))
    with pytest.raises(ValueError, match="first_label must be >= 0"):
        loss_fn(logits, labels, first_label=-1)


def test_rejects_unknown_reduction(device):
    logits, labels = make_inputs((1, 4, 3), device)
    with pytest.raises(ValueError, match="reduction must be one of"):
        sigmoid_dr_loss(logits, labels, reduction="batchmean")
    with pytest.raises(ValueError, match="reduction must be one of"):
        SigmoidDRLoss(reduction="avg")


def test_rejects_non_tensors():
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        sigmoid_dr_loss([[0.0]], torch.zeros(1, dtype=torch.long))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        sigmoid_dr_loss(torch.zeros(1, 1), [0])


def test_reference_rejects_the_same_bad_input():
    logits = torch.randn(2, 5, 3)
    labels = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="reduction"):
        reference.sigmoid_dr_loss(logits, labels, reduction="x")
    with pytest.raises(ValueError, match="neg_lambda"):
        reference.sigmoid_dr_loss(logits, labels, neg_lambda=0)
    # Tensor properties are RuntimeErrors with the fused op's words.
    for bad_logits, bad_labels, message in (
        (torch.randn(3), torch.zeros((), dtype=torch.long), "logits must have shape"),
        (logits.long(), labels, "logits must be float32, float64, float16 or bfloat16, got torch.int64"),
        (logits, labels[:, :2], "labels must have shape"),
        (logits, labels.float(), "labels must be an integer tensor"),
    ):
        for loss_fn in (sigmoid_dr_loss, reference.sigmoid_dr_loss):
            with pytest.raises(RuntimeError, match=message):
                loss_fn(bad_logits, bad_labels)


# --- argument decisions ----------------------------------------------------------------------


@pytest.mark.parametrize("loss_fn", LOSS_FUNCTIONS)
@pytest.mark.parametrize(
    "value",
    [1.7, 1.0, "1", True, None, np.float64(1.0), torch.tensor(1.0), torch.tensor(True), torch.tensor([1])],
    ids=["float", "whole_float", "str", "bool", "None", "numpy_float", "float_tensor", "bool_tensor", "1d_tensor"],
)
def test_first_label_must_be_an_integer(loss_fn, value):
    logits, labels = make_inputs((2, 5, 3), "cpu", first_label=1)
    with pytest.raises((TypeError, ValueError), match="first_label must be an integer"):
        loss_fn(logits, labels, first_label=value)


@pytest.mark.parametrize("loss_fn", LOSS_FUNCTIONS)
@pytest.mark.parametrize(
    "value", [np.int64(1), np.int32(1), torch.tensor(1), torch.tensor(1, dtype=torch.int32)], ids=["np64", "np32", "tensor", "tensor32"]
)
def test_first_label_integer_forms_are_accepted(loss_fn, generator, value):
    logits, labels = make_inputs((2, 5, 3), "cpu", first_label=1)
    torch.testing.assert_close(loss_fn(logits, labels, first_label=value), loss_fn(logits, labels, first_label=1), rtol=0, atol=0)


@pytest.mark.parametrize("loss_fn", LOSS_FUNCTIONS)
def test_first_label_range(loss_fn, generator):
    logits, labels = make_inputs((2, 6, 3), "cpu")
    with pytest.raises(ValueError, match=r"first_label must be <= 2\*\*63 - 1 \(labels are int64\), got 9223372036854775808"):
        loss_fn(logits, labels, first_label=2**63)
    # The largest first_label: every counted label is background.
    background = torch.where(labels >= 0, 3, labels)
    torch.testing.assert_close(
        loss_fn(logits, labels, first_label=2**63 - 1, reduction="none"), loss_fn(logits, background, reduction="none"), rtol=0, atol=0
    )
    # Class columns at the top of the int64 range: label - first_label cannot overflow.
    top = torch.where(labels.clamp(max=3) >= 0, labels.clamp(max=3) + (2**63 - 4), labels)
    torch.testing.assert_close(
        loss_fn(logits, top, first_label=2**63 - 4, reduction="none"), loss_fn(logits, labels, reduction="none"), rtol=0, atol=0
    )


@pytest.mark.parametrize("loss_fn", LOSS_FUNCTIONS)
@pytest.mark.parametrize("name", ["pos_lambda", "neg_lambda", "L", "tau", "margin"])
def test_hyperparameter_tensors(device, generator, loss_fn, name):
    logits, labels = make_inputs((2, 5, 3), device)
    value = {"margin": 0.3}.get(name, 0.7)
    # A tensor that requires grad would be silently detached: refused, naming the argument.
    with pytest.raises(ValueError, match=f"{name} is a tensor that requires grad"):
        loss_fn(logits, labels, **{name: torch.tensor(value, requires_grad=True)})
    with pytest.raises(ValueError, match=f"{name} must be a real number or a 0-dim tensor"):
        loss_fn(logits, labels, **{name: torch.tensor([value])})
    # A 0-dim tensor without grad, or a numpy float, is the number it holds.
    for form in (torch.tensor(value, dtype=torch.float64), torch.tensor(value, dtype=torch.float32), np.float32(value)):
        want = loss_fn(logits, labels, **{name: float(form)})
        torch.testing.assert_close(loss_fn(logits, labels, **{name: form}), want, rtol=0, atol=0)
    for bad in (True, "0.5", None, torch.tensor(True)):
        with pytest.raises(TypeError, match=f"{name} must be a real number"):
            loss_fn(logits, labels, **{name: bad})


def test_module_checks_its_arguments_at_construction():
    with pytest.raises(TypeError, match="first_label must be an integer"):
        SigmoidDRLoss(first_label=1.7)
    with pytest.raises(ValueError, match="margin is a tensor that requires grad"):
        SigmoidDRLoss(margin=torch.tensor(0.5, requires_grad=True))
    with pytest.raises(ValueError, match="neg_lambda must be >= 0.0001"):
        SigmoidDRLoss(neg_lambda=1e-5)


@pytest.mark.parametrize("name", ["pos_lambda", "neg_lambda"])
def test_min_lambda_is_one_bound_in_python_and_cpp(name):
    """Python (public function, reference, fake kernel) and the C++ op refuse the same lambdas:
    MIN_LAMBDA is accepted and the next float64 below it is not."""
    from drloss_cuda import _common

    assert drloss_cuda.MIN_LAMBDA == _common.MIN_LAMBDA == 1e-4
    below = math.nextafter(drloss_cuda.MIN_LAMBDA, 0.0)
    logits, labels = make_inputs((2, 5, 3), "cpu")
    message = f"{name} must be >= 0.0001 \\(an exponent scale 1/{name} above 10000"
    for device in ("cpu", "meta"):  # the C++ op, then its fake kernel
        x, y = logits.to(device), labels.to(device)
        hyper = dict(pos_lambda=1.0, neg_lambda=0.1, L=6.0, tau=4.0, margin=0.5, first_label=0)
        drloss_cuda.ops.forward_op(x, y, *{**hyper, name: drloss_cuda.MIN_LAMBDA}.values())
        with pytest.raises(ValueError, match=message):
            drloss_cuda.ops.forward_op(x, y, *{**hyper, name: below}.values())
    for loss_fn in (sigmoid_dr_loss, reference.sigmoid_dr_loss):
        loss_fn(logits, labels, **{name: drloss_cuda.MIN_LAMBDA})
        with pytest.raises(ValueError, match=message):
            loss_fn(logits, labels, **{name: below})


# --- devices ------------------------------------------------------------------------------------


def _device_param(logits_device, labels_device):
    needs_cuda = "cuda" in (logits_device, labels_device)
    marks = [m for p in DEVICES if p.values[0] == "cuda" for m in p.marks] if needs_cuda else []
    return pytest.param(logits_device, labels_device, id=f"{logits_device}-{labels_device}", marks=marks)


DEVICE_PAIRS = [
    _device_param(a, b) for a, b in [("cpu", "meta"), ("meta", "cpu"), ("cuda", "cpu"), ("cpu", "cuda"), ("cuda", "meta"), ("meta", "cuda")]
]


@pytest.mark.parametrize("logits_device, labels_device", DEVICE_PAIRS)
def test_devices_that_differ_are_refused_on_every_path(logits_device, labels_device):
    logits = torch.randn(2, 5, 3, device=logits_device)
    labels = torch.zeros(2, 5, dtype=torch.long, device=labels_device)
    message = f"labels must be on the same device as logits \\({logits.device}\\), got {labels.device}"
    for loss_fn in (sigmoid_dr_loss, reference.sigmoid_dr_loss, SigmoidDRLoss()):
        with pytest.raises(RuntimeError, match=message):
            loss_fn(logits, labels)
    hyper = (1.0, 0.1, 6.0, 4.0, 0.5, 0)
    with pytest.raises(RuntimeError, match=message):
        drloss_cuda.ops.forward_op(logits, labels, *hyper)
    # The backward op: labels, grad_losses and stats are each checked against logits.
    same = torch.zeros_like(labels, device=logits.device)
    losses, stats = drloss_cuda.ops.forward_op(logits, same, *hyper)
    with pytest.raises(RuntimeError, match=message):
        drloss_cuda.ops.backward_op(losses, logits, labels, stats, *hyper)
    other = labels.device
    with pytest.raises(RuntimeError, match=f"grad_losses must be a \\[2\\] torch.float32 tensor on {logits.device}, got .* on {other}"):
        drloss_cuda.ops.backward_op(torch.zeros_like(losses, device=other), logits, same, stats, *hyper)
    with pytest.raises(RuntimeError, match=f"stats must be the forward's \\[2, 6\\] torch.float32 tensor on {logits.device}, got .* on {other}"):
        drloss_cuda.ops.backward_op(losses, logits, same, torch.zeros_like(stats, device=other), *hyper)


@pytest.mark.parametrize("pooled", [False, True])
def test_meta_tensors_give_shapes_and_types(pooled):
    shape = (6, 4) if pooled else (2, 3, 4)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        logits = torch.empty(shape, device="meta", dtype=dtype, requires_grad=True)
        labels = torch.empty(shape[:-1], device="meta", dtype=torch.int32)
        losses = sigmoid_dr_loss(logits, labels, reduction="none")
        assert losses.device.type == "meta" and losses.shape == (1 if pooled else 2,)
        assert losses.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        losses.sum().backward()
        assert logits.grad.shape == logits.shape and logits.grad.dtype == dtype


def test_reference_refuses_meta_tensors_by_saying_why():
    logits = torch.empty(2, 3, 4, device="meta")
    labels = torch.empty(2, 3, device="meta", dtype=torch.long)
    with pytest.raises(NotImplementedError, match="a meta tensor holds none; drloss_cuda.sigmoid_dr_loss runs"):
        drloss_cuda.reference.sigmoid_dr_loss(logits, labels)
    # Bad arguments still get the errors the fused function gives them.
    with pytest.raises(ValueError, match="neg_lambda"):
        drloss_cuda.reference.sigmoid_dr_loss(logits, labels, neg_lambda=0.0)


def _error(fn, *args):
    with pytest.raises((RuntimeError, ValueError)) as info:
        fn(*args)
    return type(info.value), str(info.value).replace("meta", "cpu")  # the messages name the device


def test_fake_kernels_say_what_the_cpp_checks_say():
    """Every bad input gives the same error, word for word, from the C++ op (CPU) and from the
    fake kernels (meta device, the path of torch.compile)."""
    x, y = torch.randn(2, 5, 3), torch.zeros(2, 5, dtype=torch.long)
    hyper = [1.0, 0.1, 6.0, 4.0, 0.5, 0]
    losses, stats = drloss_cuda.ops.forward_op(x, y, *hyper)
    forward_cases = [
        (torch.randn(3), torch.zeros((), dtype=torch.long), hyper),
        (x.long(), y, hyper),
        (x, y.float(), hyper),
        (x, y.to(torch.int16), hyper),
        (x, y[:, :2], hyper),
    ] + [(x, y, hyper[:i] + [bad] + hyper[i + 1 :]) for i, bad in [(0, 0.0), (1, 1e-5), (2, -1.0), (3, math.inf), (4, math.nan), (5, -3)]]
    for logits, labels, h in forward_cases:
        cpu = _error(drloss_cuda.ops.forward_op, logits, labels, *h)
        meta = _error(drloss_cuda.ops.forward_op, logits.to("meta"), labels.to("meta"), *h)
        assert cpu == meta
    backward_cases = [
        (losses[:1], stats),
        (losses.double(), stats),
        (losses.reshape(2, 1), stats),
        (losses, stats[:, :5]),
        (losses, stats.double()),
        (losses, stats[:1]),
    ]
    for grad_losses, s in backward_cases:
        cpu = _error(drloss_cuda.ops.backward_op, grad_losses, x, y, s, *hyper)
        meta = _error(drloss_cuda.ops.backward_op, grad_losses.to("meta"), x.to("meta"), y.to("meta"), s.to("meta"), *hyper)
        assert cpu == meta


# --- packaging -------------------------------------------------------------------------------


def test_reference_imports_without_the_extension():
    code = (
        "import sys, torch\n"
        "import drloss_cuda.reference as r\n"
        "assert 'drloss_cuda._C' not in sys.modules, 'reference loaded the extension'\n"
        "x = torch.zeros(1, 2, 3); y = torch.zeros(1, 2, dtype=torch.long)\n"
        "print(float(r.sigmoid_dr_loss(x, y)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == pytest.approx(expected_loss(0.5, 0.5), rel=1e-6)


def test_build_info_reports_openmp():
    info = drloss_cuda.build_info()
    assert set(info) == {"openmp", "cuda"}
    if sys.platform.startswith("linux"):
        assert info["openmp"], "the CPU kernels were built without OpenMP: they would run on one core"


def test_build_without_torch_fails_with_a_message_not_a_traceback():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    # `sys.modules["torch"] = None` makes `import torch` fail as in an environment without torch.
    code = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None\n"
        "sys.argv = ['setup.py', '--name']\n"
        "runpy.run_path('setup.py', run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode != 0
    assert "PyTorch must be installed before drloss_cuda is built" in out.stderr
    assert "--no-build-isolation" in out.stderr
    assert "Traceback" not in out.stderr
