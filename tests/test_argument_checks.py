"""Bad input is refused with a message that names the argument, the same on every path (the
function, the module, the reference, the op, its fake kernels); hyperparameter forms; devices
that differ; meta tensors."""

import math

import numpy as np
import pytest
import torch

import drloss_cuda
import drloss_cuda.ops
from conftest import DEVICES
from drloss_cuda import SigmoidDRLoss, reference, sigmoid_dr_loss
from problems import (
    LOSS_FUNCTIONS,
    make_inputs,
    poison_outputs,  # noqa: F401  (autouse fixture)
)


# --- bad input -----------------------------------------------------------------------------


def test_rejects_wrong_rank(device):
    with pytest.raises(RuntimeError, match="logits must have shape"):
        sigmoid_dr_loss(torch.randn(3, device=device), torch.zeros((), dtype=torch.long, device=device))
    with pytest.raises(RuntimeError, match="logits must have shape"):
        sigmoid_dr_loss(torch.randn(1, 2, 3, 4, device=device), torch.zeros(1, 2, 3, dtype=torch.long, device=device))


def test_rejects_label_shape_mismatch(device):
    with pytest.raises(RuntimeError, match="labels must have shape") as error:
        sigmoid_dr_loss(torch.randn(2, 5, 3, device=device), torch.zeros(2, 4, dtype=torch.long, device=device))
    assert "class dimension must be the last" not in str(error.value)
    with pytest.raises(RuntimeError, match="labels must have shape"):
        sigmoid_dr_loss(torch.randn(10, 3, device=device), torch.zeros(10, 3, dtype=torch.long, device=device))


@pytest.mark.parametrize("loss_fn", LOSS_FUNCTIONS)
@pytest.mark.parametrize("pooled", [False, True], ids=["N_C_A", "C_M"])
def test_class_dimension_not_last_is_named(device, loss_fn, pooled):
    """Logits laid out [N, C, A] (a convolution head's order) or [C, M], with their right
    labels: the error says the class dimension must be last, not only that labels mismatch."""
    logits = torch.randn(2, 3, 7, device=device)  # C = 3 classes, A = 7 anchors
    labels = torch.zeros(2, 7, dtype=torch.long, device=device)
    if pooled:
        logits, labels = logits[0], labels[0]
    with pytest.raises(RuntimeError, match="labels must have shape") as error:
        loss_fn(logits, labels)
    assert "the class dimension must be the last one of logits" in str(error.value)
    assert "logits.transpose(-1, -2)" in str(error.value)
    loss_fn(logits.transpose(-1, -2), labels)  # the advice works


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
        (x.transpose(1, 2), y, hyper),
        (x[0].t(), y[0], hyper),
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
