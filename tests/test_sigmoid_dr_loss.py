"""Behaviour of the fused sigmoid_dr_loss on every device, against the pure-PyTorch reference.

Inputs are drawn fresh on every run (the `generator` fixture prints the seed). Every fused
call runs with DRLOSS_POISON_OUTPUTS=1, so the ops fill their outputs with NaN before the
kernels write them: an element a kernel forgets to write fails the comparison.
"""

import math
import subprocess
import sys

import pytest
import torch

import drloss_cuda
from drloss_cuda import SigmoidDRLoss, reference, sigmoid_dr_loss

DEFAULTS = dict(pos_lambda=1.0, neg_lambda=0.1 / math.log(3.5), L=6.0, tau=4.0, margin=0.5)


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


def assert_matches_float64(logits, labels, loss_rtol, grad_rtol, grad_weights=None, **kwargs):
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, grad_weights, **kwargs)
    ref_loss, ref_grad = reference_float64(logits, labels, grad_weights, **kwargs)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    torch.testing.assert_close(loss.double(), ref_loss, rtol=loss_rtol, atol=loss_rtol * ref_loss.abs().max().item())
    scale = ref_grad.abs().max().item() if ref_grad.numel() else 0.0
    torch.testing.assert_close(grad.double(), ref_grad, rtol=grad_rtol, atol=grad_rtol * scale)
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
    assert_matches_float64(logits, labels, 1e-6, 1e-5, first_label=first_label, reduction=reduction)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float64_matches_reference_to_rounding(device, generator, shape):
    logits, labels = make_inputs(shape, device, dtype=torch.float64)
    assert_matches_float64(logits, labels, 1e-12, 1e-10, reduction="none")


def test_float32_detection_scale_matches_float64(device, generator):
    # 2 x 4000 x 80 = 640,000 entries: many chunks / blocks per group merged in order.
    logits, labels = make_inputs((2, 4000, 80), device, bg_frac=0.9)
    assert_matches_float64(logits, labels, 1e-6, 1e-5, reduction="none")


@pytest.mark.parametrize(
    "hyper",
    [
        dict(pos_lambda=0.001, neg_lambda=0.001),  # exponents up to 1000: a naive softmax overflows
        dict(pos_lambda=5.0, neg_lambda=2.0, L=1.0, tau=0.5, margin=0.0),
        dict(pos_lambda=0.3, neg_lambda=0.05, L=20.0, tau=10.0, margin=-0.3),
    ],
    ids=["lambda0.001", "soft", "sharp"],
)
def test_non_default_hyperparameters(device, generator, hyper):
    logits, labels = make_inputs((2, 200, 11), device)
    loss, _ = assert_matches_float64(logits, labels, 1e-5, 1e-4, reduction="none", **hyper)
    assert torch.isfinite(loss).all()


def test_extreme_logits(device, generator):
    logits, labels = make_inputs((2, 100, 6), device)
    logits = torch.where(torch.rand_like(logits) < 0.5, -50.0, 50.0) * torch.rand_like(logits).add(0.9)
    loss, grad = assert_matches_float64(logits, labels, 1e-6, 1e-5, reduction="none")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_against_float32(device, generator, dtype):
    logits, labels = make_inputs((2, 300, 20), device, dtype=dtype)
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    # Same (rounded) inputs in float32: the kernels accumulate in float32 either way.
    loss32, grad32 = loss_and_grad(sigmoid_dr_loss, logits.float(), labels, reduction="none")
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, loss32, rtol=1e-5, atol=1e-6)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(grad.float(), grad32, rtol=2 * eps, atol=2 * eps * grad32.abs().max().item())


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
    assert_matches_float64(logits, labels, 1e-6, 1e-5, grad_weights=weights, reduction="none")


def expected_loss(e_neg, e_pos, L=DEFAULTS["L"], tau=DEFAULTS["tau"], margin=DEFAULTS["margin"]):
    """tau / L * softplus(L * (E_neg - E_pos + margin)), section 2 of the math, in float64."""
    return tau / L * math.log1p(math.exp(L * (e_neg - e_pos + margin)))


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
    loss, grad = assert_matches_float64(logits, labels, 1e-6, 1e-5, reduction="none")
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
    loss, _ = assert_matches_float64(logits, labels, 1e-6, 1e-5, reduction="none")
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
    assert_matches_float64(clean, labels, 1e-6, 1e-5, reduction="none")


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


@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_label_dtypes(device, generator, label_dtype):
    logits, labels = make_inputs((2, 30, 5), device, ignore_frac=0.0 if label_dtype == torch.uint8 else 0.1)
    expected = sigmoid_dr_loss(logits, labels, reduction="none")
    torch.testing.assert_close(sigmoid_dr_loss(logits, labels.to(label_dtype), reduction="none"), expected)


def test_non_contiguous_inputs(device, generator):
    logits, labels = make_inputs((2, 40, 6), device)
    # The same values seen through a transposed ("channels-last"-like) layout.
    logits_t = logits.transpose(1, 2).contiguous().transpose(1, 2)
    labels_t = labels.t().contiguous().t()
    assert not logits_t.is_contiguous() and not labels_t.is_contiguous()
    loss, grad = loss_and_grad(sigmoid_dr_loss, logits_t, labels_t, reduction="none")
    ref_loss, ref_grad = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
    # A strided slice of a larger tensor.
    big = torch.randn(2, 40, 12, device=device)
    assert_matches_float64(big[:, :, ::2], labels, 1e-6, 1e-5, reduction="none")


def test_bitwise_deterministic_across_runs(device, generator):
    logits, labels = make_inputs((2, 3000, 20), device)
    first = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    for _ in range(3):
        again = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_bitwise_deterministic_across_thread_counts(generator):
    logits, labels = make_inputs((3, 5000, 20), "cpu")
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none"))
    finally:
        torch.set_num_threads(threads)
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


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
    labels = torch.zeros(3, dtype=torch.long, device=device)
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


def test_rejects_bad_margin_and_first_label(device):
    logits, labels = make_inputs((1, 4, 3), device)
    with pytest.raises(ValueError, match="margin must be a finite number"):
        sigmoid_dr_loss(logits, labels, margin=float("nan"))
    with pytest.raises(ValueError, match="first_label must be >= 0"):
        sigmoid_dr_loss(logits, labels, first_label=-1)


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


@pytest.mark.cuda
def test_rejects_devices_that_differ():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU available: the device-mismatch check needs two devices")
    logits = torch.randn(2, 5, 3, device="cuda")
    with pytest.raises(RuntimeError, match="labels must be on the same device as logits"):
        sigmoid_dr_loss(logits, torch.zeros(2, 5, dtype=torch.long))


def test_reference_rejects_the_same_bad_input():
    logits = torch.randn(2, 5, 3)
    labels = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="reduction"):
        reference.sigmoid_dr_loss(logits, labels, reduction="x")
    with pytest.raises(ValueError, match="neg_lambda"):
        reference.sigmoid_dr_loss(logits, labels, neg_lambda=0)
    with pytest.raises(ValueError, match="labels must have shape"):
        reference.sigmoid_dr_loss(logits, labels[:, :2])
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        reference.sigmoid_dr_loss(logits, labels.float())


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
