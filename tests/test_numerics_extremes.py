"""Values at the edges of the floating-point range: a loss whose L d overflows, gradients on the
subnormal grid, and messages that show the value actually compared."""

import math

import pytest
import torch

import drloss_cuda
from drloss_cuda import SigmoidDRLoss, reference, sigmoid_dr_loss
from tolerances import DEFAULTS, assert_grad_close, dense_float64

LOSSES = [sigmoid_dr_loss, reference.sigmoid_dr_loss]
LOSS_IDS = ["fused", "reference"]


# --- a loss that stays finite where L d overflows --------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("loss_fn", LOSSES, ids=LOSS_IDS)
def test_loss_is_finite_where_L_times_d_overflows(loss_fn, dtype):
    # Every p is sigmoid(0) = 1/2, so E_neg = E_pos = 1/2 and d = margin = 100; L d = 1e309
    # overflows float64. The loss tau / L * softplus(L d) = tau * (d + log1p(e^-L d) / L) is
    # tau * margin = 400 to far below the accumulation type's rounding.
    x = torch.zeros(1, 2, 2, dtype=dtype, requires_grad=True)
    y = torch.tensor([[0, 2]])
    loss = loss_fn(x, y, L=1e307, margin=100.0, reduction="none")
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss.item() == 400.0
    # The slope is tau * sigmoid(L d) = tau: the gradient is finite, and the same on both paths.
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(grad).all()
    xr = x.detach().clone().requires_grad_(True)
    (want,) = torch.autograd.grad(reference.sigmoid_dr_loss(xr, y, L=1e307, margin=100.0), xr)
    torch.testing.assert_close(grad, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("loss_fn", LOSSES, ids=LOSS_IDS)
def test_loss_at_L_near_the_float64_maximum_is_tau_times_d(loss_fn, generator):
    # At such L the loss is tau * max(d, 0) (softplus(z) / L tends to max(d, 0)); d is read off
    # the float64 evaluation's expectations (its L d overflows too, so its loss cannot serve).
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    y = torch.randint(-1, 5, (3, 7))
    hyper = {**DEFAULTS, "L": 1e308, "margin": 0.25}
    want = dense_float64(x, y, **{**hyper, "L": 1.0}, first_label=0).stats
    d = want[:, 2] - want[:, 5] + hyper["margin"]
    got = loss_fn(x, y, **hyper, reduction="none")
    torch.testing.assert_close(got, hyper["tau"] * d.clamp(min=0), rtol=1e-12, atol=1e-12)


# --- gradients on the subnormal grid ---------------------------------------------------------------


SUBNORMAL_CASES = {
    # Fixed shift (neg_lambda = 1/64): the slope tau sigmoid(L d) is about 1e-26 (d near -10).
    "fixed_shift": (
        [[[-3.443854808807373, -1.1331530809402466, -0.587746262550354], [2.7213075160980225, -3.163440227508545, -1.4666392803192139]]],
        [[0, 1]],
        dict(pos_lambda=1.0, neg_lambda=0.015625, L=6.0, tau=4.0, margin=-10.0),
    ),
    # Running-max shift (neg_lambda below 1/64), margin -14.
    "running_max": (
        [[[-0.4251883029937744, 0.7546775341033936, 0.6231237649917603], [-1.439346194267273, 1.400854468345642, 0.3261925280094147],
          [-1.2107452154159546, 0.28979939222335815, -0.2885701060295105], [0.09406089037656784, -0.11941095441579819, -0.7340772747993469]]],
        [[3, 3, -1, 2]],
        dict(pos_lambda=0.05, neg_lambda=0.003, L=2.0, tau=4.0, margin=-14.0),
    ),
}


@pytest.mark.parametrize("case", SUBNORMAL_CASES)
def test_subnormal_gradient_elements_are_rounded_once(case):
    # Gradients here lie on float32's subnormal grid (below 1.2e-38, spaced 1.4e-45). Computed
    # as (coef * weight) * (1 + s (p - E)) * p (1 - p), the first product was rounded onto the
    # grid (half a step) and then scaled by 1 + s (p - E), up to 1 + |s|: errors of several
    # steps, outside the bound's two. The weight (at most 1) now multiplies last, so the one
    # rounding onto the grid is the final one.
    values, labels, hyper = SUBNORMAL_CASES[case]
    x, y = torch.tensor(values), torch.tensor(labels)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sigmoid_dr_loss(xg, y, **hyper), xg)
    want = dense_float64(x, y, **hyper, first_label=0)
    tiny = torch.finfo(torch.float32).tiny
    assert ((want.grad != 0) & (want.grad.abs() < tiny)).any()  # the case this test is about
    assert_grad_close(grad, want.grad, torch.float32, want.bound)


# --- messages print the value that was compared ----------------------------------------------------


def _message(call):
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize(
    "name, value, shown",
    [
        ("pos_lambda", torch.tensor(1e-4), "9.999999747378752e-05"),  # float32 1e-4 is below 1e-4
        ("neg_lambda", 9.9999e-5, "9.9999e-05"),
        ("L", -0.0, "-0"),
        ("tau", math.inf, "inf"),
        ("margin", math.nan, "nan"),
        ("tau", -1e-320, "-9.99989e-321"),
        ("neg_lambda", 0.1 / 1024, "9.765625e-05"),
    ],
)
def test_messages_show_the_value_compared_and_the_twins_agree(name, value, shown):
    # The fused path's message comes from csrc/checks.cpp, the reference's and the module's from
    # drloss_cuda/_common.py: the same text, with the value as compared (not rounded to %g).
    x, y = torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)
    fused = _message(lambda: sigmoid_dr_loss(x, y, **{name: value}))
    assert f"got {shown}" in fused
    assert _message(lambda: reference.sigmoid_dr_loss(x, y, **{name: value})) == fused
    assert _message(lambda: SigmoidDRLoss(**{name: value})) == fused
    op_hyper = dict(pos_lambda=1.0, neg_lambda=0.1, L=6.0, tau=4.0, margin=0.5, first_label=0)
    op_hyper[name] = float(value)
    assert _message(lambda: drloss_cuda.ops.forward_op(x, y, *op_hyper.values())) == fused


def test_number_text_is_the_shortest_round_trip():
    from drloss_cuda._common import number_text

    for value in (0.1, 1e-4, 6.0, 2.0324, 1 / 3, 9.999999747378752e-05, 1e300, -2.5e-310):
        text = number_text(value)
        assert float(text) == value
        assert len(text) <= max(len(f"{value:g}"), len(repr(value)) + 4), text


# --- vmap over a hyperparameter ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["L", "neg_lambda", "first_label"])
def test_vmap_over_a_tensor_hyperparameter_is_refused_with_the_ops_words(name):
    x, y = torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)
    values = torch.tensor([1, 2]) if name == "first_label" else torch.tensor([5.0, 6.0])
    with pytest.raises(ValueError, match=f"{name} is batched by torch.func.vmap"):
        torch.func.vmap(lambda v: sigmoid_dr_loss(x, y, **{name: v}))(values)
    with pytest.raises(ValueError, match=f"{name} is batched by torch.func.vmap"):
        torch.func.vmap(lambda v: reference.sigmoid_dr_loss(x, y, **{name: v}))(values)
