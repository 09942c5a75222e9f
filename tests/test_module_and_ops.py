"""The module against the function, the official defaults, double backward's refusal, and
torch.library.opcheck on both registered ops."""

import math

import pytest
import torch

import drloss_cuda
import drloss_cuda.ops
from drloss_cuda import SigmoidDRLoss, sigmoid_dr_loss
from problems import (
    make_inputs,
    poison_outputs,  # noqa: F401  (autouse fixture)
)


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


def test_help_documents_the_module():
    """help(SigmoidDRLoss) shows the class's own text first: every argument and the forward."""
    import pydoc

    text = pydoc.render_doc(SigmoidDRLoss, renderer=pydoc.plaintext)
    head = text[: text.index("Method resolution order")] if "Method resolution order" in text else text
    for argument in ("pos_lambda", "neg_lambda", "L (float", "tau", "margin", "first_label", "reduction", "process_group"):
        assert argument in head, argument
    assert "[N, A, C]" in SigmoidDRLoss.forward.__doc__
    assert "Initialize internal Module state" not in head

