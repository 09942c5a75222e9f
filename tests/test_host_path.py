"""The eager call's path: one C++ op whose autograd, checks and Meta kernel are registered in
C++ (csrc/autograd.cpp, csrc/checks.cpp, csrc/meta.cpp), reached from a thin Python wrapper, and
a backward op that checks its own arguments when called directly."""

import pytest
import torch

from drloss_cuda import ops, sigmoid_dr_loss

FORWARD = "drloss_cuda::sigmoid_dr_loss_forward"
BACKWARD = "drloss_cuda::sigmoid_dr_loss_backward"
HYPER = (1.0, 0.1, 6.0, 4.0, 0.5, 0)


def registrations(op):
    """{dispatch key: the registration's source line} from the dispatcher's table."""
    table = {}
    for line in torch._C._dispatch_dump(op).splitlines():
        key, _, where = line.partition(":")
        if "registered at" in where:
            table[key.strip()] = where
    return table


@pytest.mark.parametrize("op", [FORWARD, BACKWARD])
def test_autograd_and_meta_kernels_are_the_cpp_ones(op):
    table = registrations(op)
    assert "csrc/autograd.cpp" in table["Autograd[alias]"], table
    assert "csrc/meta.cpp" in table["Meta"], table
    # No Python fake kernel (FakeTensor then runs the Meta kernel) and no Python autograd.
    entry = torch._library.simple_registry.singleton.find(op)
    assert entry.fake_impl.kernel is None


def test_eager_call_records_the_cpp_node_alone(generator):
    x = torch.randn(2, 5, 3, requires_grad=True)
    y = torch.randint(-1, 4, (2, 5))
    loss = sigmoid_dr_loss(x, y, reduction="sum")
    node = loss.grad_fn  # sum's
    (parent, _), = node.next_functions
    assert parent.name() == "SigmoidDRLossBackward"
    assert parent.next_functions[0][0].name() == "torch::autograd::AccumulateGrad"


def test_fake_and_meta_tensors_get_the_same_checks():
    from torch._subclasses.fake_tensor import FakeTensorMode

    bad = dict(logits=torch.randn(2, 5, 3), labels=torch.zeros(2, 4, dtype=torch.long))
    message = r"labels must have shape \[2, 5\] \(logits' shape without the class dimension\), got \[2, 4\]"
    with pytest.raises(RuntimeError, match=message):
        ops.forward_op(bad["logits"], bad["labels"], *HYPER)
    with pytest.raises(RuntimeError, match=message):
        ops.forward_op(bad["logits"].to("meta"), bad["labels"].to("meta"), *HYPER)
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=message):
        ops.forward_op(mode.from_tensor(bad["logits"]), mode.from_tensor(bad["labels"]), *HYPER)
    with pytest.raises(ValueError, match="tau must be a positive finite number, got -1"):
        ops.forward_op(torch.randn(2, 5, 3, device="meta"), torch.zeros(2, 5, dtype=torch.long, device="meta"), 1.0, 0.1, 6.0, -1.0, 0.5, 0)


@pytest.mark.parametrize(
    "what, message",
    [
        ("grad_losses_size", r"grad_losses must be a \[2\] torch.float32 tensor on cpu, got \[3\]"),
        ("grad_losses_dtype", r"grad_losses must be a \[2\] torch.float32 tensor on cpu, got \[2\] torch.float64"),
        ("stats_rows", r"stats must be the forward's \[2, 6\] torch.float32 tensor on cpu, got \[1, 6\]"),
        ("stats_columns", r"stats must be the forward's \[2, 6\] torch.float32 tensor on cpu, got \[2, 5\]"),
        ("labels_shape", r"labels must have shape \[2, 5\]"),
    ],
)
def test_a_direct_backward_call_checks_its_arguments(what, message):
    # The backward op is public through torch.ops: a mismatched tensor must not be read out of
    # bounds, on real and on meta tensors.
    x = torch.randn(2, 5, 3)
    y = torch.zeros(2, 5, dtype=torch.long)
    _, stats = ops.forward_op(x, y, *HYPER)
    g = torch.ones(2)
    args = dict(g=g, x=x, y=y, stats=stats)
    args.update(
        {
            "grad_losses_size": dict(g=torch.ones(3)),
            "grad_losses_dtype": dict(g=torch.ones(2, dtype=torch.float64)),
            "stats_rows": dict(stats=stats[:1]),
            "stats_columns": dict(stats=stats[:, :5]),
            "labels_shape": dict(y=torch.zeros(2, 6, dtype=torch.long)),
        }[what]
    )
    for device in ("cpu", "meta"):
        moved = {k: v.to(device) for k, v in args.items()}
        with pytest.raises(RuntimeError, match=message.replace("on cpu", f"on {device}")):
            ops.backward_op(moved["g"], moved["x"], moved["y"], moved["stats"], *HYPER)
