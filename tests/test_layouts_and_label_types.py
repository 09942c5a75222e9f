"""What the loss accepts and turns into what the kernels read: integer label types (widened or
refused), labels below -1, non-contiguous logits, and one contiguous copy per call chain."""


import pytest
import torch

import drloss_cuda
import drloss_cuda.ops
from drloss_cuda import sigmoid_dr_loss
from problems import (
    LOSS_FUNCTIONS,
    assert_matches_float64,
    loss_and_grad,
    make_inputs,
    poison_outputs,  # noqa: F401  (autouse fixture)
)


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


def test_one_contiguous_copy_per_call_chain(device, generator):
    """Non-contiguous logits are copied once, by the public function: the op gets (and autograd
    saves) the contiguous copy, so the backward op reads contiguous tensors and copies nothing."""
    from torch.utils._python_dispatch import TorchDispatchMode

    logits, labels = make_inputs((2, 40, 6), device)
    x = logits.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
    y = labels.t().contiguous().t()
    seen = []

    class Spy(TorchDispatchMode):
        """Sees the backward op as the C++ autograd node calls it."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is drloss_cuda.ops.backward_op.default:
                seen.append((args[1].is_contiguous(), args[2].is_contiguous()))
            return func(*args, **(kwargs or {}))

    from torch.profiler import ProfilerActivity, profile

    def logits_copies(prof):
        return [e for e in prof.events() if e.name == "aten::clone" and e.input_shapes and e.input_shapes[0] == list(x.shape)]

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as forward_prof:
        loss = sigmoid_dr_loss(x, y)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as backward_prof, Spy():
        loss.backward()
    assert seen == [(True, True)]
    assert len(logits_copies(forward_prof)) == 1
    assert logits_copies(backward_prof) == []
    assert x.grad.shape == x.shape
