"""The fused loss and gradient against the reference in float64, element by element, on every
device: shapes, label conventions, reductions, hyperparameters, half precision, large slopes,
every mix of labels; and the checker itself, which must reject a wrong element."""

import math

import pytest
import torch

import drloss_cuda
import drloss_cuda.ops
from drloss_cuda import reference, sigmoid_dr_loss
from problems import (
    assert_matches_float64,
    full_hyper,
    loss_and_grad,
    make_inputs,
    poison_outputs,  # noqa: F401  (autouse fixture)
    reference_float64,
)
from tolerances import assert_grad_close, assert_half_grad_close, assert_loss_close, dense_float64


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
