"""The fused op under PyTorch's transforms beyond plain eager autograd: torch.func composed with
torch.compile, compiled autograd, torch.export with dynamic dimensions, torch.library.opcheck,
the batching rule, and forward-mode AD refused in the project's words wherever it is asked for.
(tests/test_input_handling.py and tests/test_compile_autocast.py cover grad, vjp, jacrev, vmap,
compile and autocast one at a time.) Compiled grad, compiled autograd and opcheck run on CUDA too."""

import warnings

import pytest
import torch
import torch._dynamo

from drloss_cuda import ops, reference, sigmoid_dr_loss

HYPER = (0.9, 0.08, 5.0, 3.5, 0.4, 0)
FORWARD_MODE = "forward-mode AD .* is not supported: the fused op has a reverse-mode formula only"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def problem(generator, shape=(2, 6, 3), device="cpu"):
    x = torch.randn(shape, dtype=torch.float64)
    y = torch.randint(-1, shape[-1] + 1, shape[:-1])
    return x.to(device), y.to(device)


def close(got, want):
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-10, atol=1e-14)


def reference_grads(xb, y):
    return torch.stack([torch.func.grad(lambda t: reference.sigmoid_dr_loss(t, y))(t) for t in xb])


@pytest.mark.parametrize("fullgraph", [False, True], ids=["graph_breaks_allowed", "fullgraph"])
def test_compiled_func_grad(generator, device, fullgraph):
    x, y = problem(generator, device=device)
    compiled = torch.compile(torch.func.grad(lambda t: sigmoid_dr_loss(t, y)), fullgraph=fullgraph)
    close(compiled(x), torch.func.grad(lambda t: reference.sigmoid_dr_loss(t, y))(x))


def test_compiled_vmap_of_grad(generator):
    xb, y = problem(generator, (3, 2, 6, 3))
    compiled = torch.compile(torch.func.vmap(torch.func.grad(lambda t: sigmoid_dr_loss(t, y[0]))), fullgraph=True)
    close(compiled(xb), reference_grads(xb, y[0]))


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compiled_forward_and_backward_with_fullgraph(generator, dynamic):
    x, y = problem(generator)
    compiled = torch.compile(lambda t, u: sigmoid_dr_loss(t, u, neg_lambda=0.08, L=5.0), fullgraph=True, dynamic=dynamic)
    for shape in [(2, 6, 3), (3, 9, 3)]:  # a second shape: the dynamic graph serves it unchanged
        x, y = problem(generator, shape)
        xg = x.clone().requires_grad_(True)
        compiled(xg, y).backward()
        xr = x.clone().requires_grad_(True)
        reference.sigmoid_dr_loss(xr, y, neg_lambda=0.08, L=5.0).backward()
        close(xg.grad, xr.grad)


def test_compiled_autograd(generator, device):
    # The backward node implements compiled autograd's hooks (csrc/autograd.cpp).
    x, y = problem(generator, device=device)
    xg = x.clone().requires_grad_(True)
    loss = sigmoid_dr_loss(xg, y)
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend="aot_eager", fullgraph=True)):
        loss.backward()
    close(xg.grad, torch.func.grad(lambda t: reference.sigmoid_dr_loss(t, y))(x))


def test_export_keeps_dynamic_dimensions(generator):
    class Loss(torch.nn.Module):
        def forward(self, logits, labels):
            return sigmoid_dr_loss(logits, labels, reduction="none")

    x, y = problem(generator)
    n, a = torch.export.Dim("n"), torch.export.Dim("a")
    exported = torch.export.export(Loss(), (x, y), dynamic_shapes=({0: n, 1: a}, {0: n, 1: a}))
    x2, y2 = problem(generator, (3, 11, 3))
    close(exported.module()(x2, y2), reference.sigmoid_dr_loss(x2, y2, reduction="none"))


def test_opcheck_both_ops(generator, device):
    x, y = problem(generator, device=device)
    torch.library.opcheck(ops.forward_op, (x.clone().requires_grad_(True), y, *HYPER))
    _, stats = ops.forward_op(x, y, *HYPER)
    torch.library.opcheck(ops.backward_op, (torch.rand(2, dtype=x.dtype, device=device), x, y, stats, *HYPER))


def test_vmap_runs_the_batching_rule_not_the_fallback(generator):
    # torch warns when vmap falls back to a loop over the batch (the slow BatchedFallback).
    xb, y = problem(generator, (3, 2, 6, 3))
    torch._C._functorch._set_vmap_fallback_warning_enabled(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            losses = torch.func.vmap(lambda t: sigmoid_dr_loss(t, y[0], reduction="none"))(xb)
            grads = torch.func.vmap(torch.func.grad(lambda t: sigmoid_dr_loss(t, y[0])))(xb)
    finally:
        torch._C._functorch._set_vmap_fallback_warning_enabled(False)
    close(losses, torch.stack([reference.sigmoid_dr_loss(t, y[0], reduction="none") for t in xb]))
    close(grads, reference_grads(xb, y[0]))


@pytest.mark.parametrize(
    "what",
    ["hessian", "jacfwd_of_grad", "jvp_of_grad", "backward_op_forward_ad"],
)
def test_forward_mode_ad_is_refused_in_the_projects_words(generator, what):
    # Never zeros: without the refusal the outputs carry no tangent, which torch reads as zero.
    x, y = problem(generator)
    f = lambda t: sigmoid_dr_loss(t, y)  # noqa: E731
    with pytest.raises(NotImplementedError, match=FORWARD_MODE):
        if what == "hessian":
            torch.func.hessian(f)(x)
        elif what == "jacfwd_of_grad":
            torch.func.jacfwd(torch.func.grad(f))(x)
        elif what == "jvp_of_grad":
            torch.func.jvp(torch.func.grad(f), (x,), (torch.ones_like(x),))
        else:
            _, stats = ops.forward_op(x, y, *HYPER)
            g = torch.ones(2, dtype=x.dtype)
            torch.func.jvp(lambda t: ops.backward_op(g, t, y, stats, *HYPER), (x,), (torch.ones_like(x),))


def test_double_backward_is_refused(generator):
    x, y = problem(generator)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sigmoid_dr_loss(xg, y), xg, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()


def test_the_statistics_are_not_differentiable(generator):
    x, y = problem(generator)
    losses, stats = ops.forward_op(x.clone().requires_grad_(True), y, *HYPER)
    assert losses.requires_grad and losses.grad_fn.name() == "SigmoidDRLossBackward"
    assert not stats.requires_grad
