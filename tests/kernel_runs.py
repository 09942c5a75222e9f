"""Runs of the two fused ops (forward, then backward with a random upstream gradient) and their
checks against float64 element by element, on any device: the CUDA tests share them, and the
tests of kernel paths that the CPU has too run them on both devices.

Importing this module loads no extension; the ops are imported at the first run.
"""

import torch

from tolerances import (
    DEFAULTS,
    assert_grad_close,
    assert_half_grad_close,
    assert_loss_close,
    assert_stats_close,
    dense_float64,
    shift_stats,
)

HYPER = (DEFAULTS["pos_lambda"], DEFAULTS["neg_lambda"], DEFAULTS["L"], DEFAULTS["tau"], DEFAULTS["margin"])
HALF = (torch.float16, torch.bfloat16)


def make_inputs(shape, dtype=torch.float32, first_label=0, label_dtype=torch.int64, scale=3.0, device="cpu"):
    """Random logits and labels with positives, background and ignored anchors (on the CPU
    unless `device` says otherwise)."""
    C = shape[-1]
    logits = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(first_label, first_label + max(C, 1), shape[:-1])
    u = torch.rand(shape[:-1])
    background = first_label + C if first_label == 0 else 0
    labels[u < 0.5] = background
    labels[u < 0.1] = -1
    return logits.to(device), labels.to(label_dtype).to(device)


def at_storage_offset(tensor, device, offset):
    """A contiguous copy of `tensor` on `device` that starts `offset` elements into a storage
    whose other elements are NaN: the view of a tensor sliced off a 16-byte boundary."""
    n = tensor.numel()
    storage = torch.full((n + offset + 8,), float("nan"), dtype=tensor.dtype, device=device)
    view = storage[offset : offset + n].view(tensor.shape)
    view.copy_(tensor)
    assert view.is_contiguous() and view.storage_offset() == offset
    return view


def run_ops(logits, labels, first_label, grad_losses=None, hyper=HYPER):
    """(losses, stats, gradient, upstream gradient) of one forward and one backward."""
    from drloss_cuda.ops import backward_op, forward_op

    losses, stats = forward_op(logits, labels, *hyper, first_label)
    if grad_losses is None:
        grad_losses = torch.rand(losses.shape, dtype=losses.dtype, device=losses.device) + 0.5
    grad = backward_op(grad_losses.to(losses.device), logits, labels, stats, *hyper, first_label)
    return losses, stats, grad, grad_losses


def float64_eval(logits, labels, first_label, grad_losses, hyper=HYPER):
    return dense_float64(logits.cpu(), labels.cpu(), *hyper, first_label, grad_losses=grad_losses.cpu())


def assert_run_matches_float64(logits, labels, first_label, result, ref, hyper=HYPER):
    """One run of both ops (`result` from run_ops, on any device) against the float64 evaluation
    `ref`: the loss to its relative accuracy, the gradient element by element (a float16/bfloat16
    gradient against the float32 run of the same logits, on the same device), and the statistics
    after the shift to float64's."""
    losses, stats, grad, g = result
    dtype = logits.dtype
    assert grad.dtype == dtype and grad.shape == logits.shape
    assert_loss_close(losses, ref.losses, dtype, hyper[2], hyper[0], hyper[1])
    if dtype in HALF:
        _, _, grad32, _ = run_ops(logits.float(), labels, first_label, g, hyper)
        assert_grad_close(grad32, ref.grad, torch.float32, ref.bound, "float32 gradient")
        assert_half_grad_close(grad, grad32, dtype)
    else:
        assert_grad_close(grad, ref.grad, dtype, ref.bound)
    assert_stats_close(shift_stats(stats, ref.stats), ref.stats, ref, dtype, "stats against float64")


def assert_matches_float64_on(device, logits_cpu, labels_cpu, first_label, logits_on_device=None, hyper=HYPER):
    """Both ops on `device` (on `logits_on_device` when given: the same values in another
    layout) against float64; on CUDA also against the CPU kernels (assert_cuda_matches_cpu).
    Returns the run."""
    if device == "cuda":
        return assert_cuda_matches_cpu(logits_cpu, labels_cpu, first_label, logits_on_device, hyper)
    x = logits_cpu if logits_on_device is None else logits_on_device
    result = run_ops(x, labels_cpu, first_label, hyper=hyper)
    ref = float64_eval(logits_cpu, labels_cpu, first_label, result[3], hyper)
    assert_run_matches_float64(x, labels_cpu, first_label, result, ref, hyper)
    return result


def assert_cuda_matches_cpu(logits_cpu, labels_cpu, first_label, cuda_logits=None, hyper=HYPER):
    """Runs both ops on the CPU and on CUDA on the same inputs (same upstream gradient): each
    against float64, and the two devices' statistics against each other element by element
    (both kernels shift the exponents by the same rule, so m, Z and E are the same numbers up to
    rounding)."""
    cpu = run_ops(logits_cpu, labels_cpu, first_label, hyper=hyper)
    x = logits_cpu.cuda() if cuda_logits is None else cuda_logits
    y = labels_cpu.to(x.device)
    cuda = run_ops(x, y, first_label, cpu[3], hyper)
    assert cuda[0].device.type == "cuda" and cuda[2].device.type == "cuda"
    ref = float64_eval(logits_cpu, labels_cpu, first_label, cpu[3], hyper)
    assert_run_matches_float64(logits_cpu, labels_cpu, first_label, cpu, ref, hyper)
    assert_run_matches_float64(x, y, first_label, cuda, ref, hyper)
    assert_stats_close(cuda[1], cpu[1], ref, logits_cpu.dtype, "CUDA stats against CPU stats")
    return cuda


def capture_loss_and_backward(x, labels):
    """The mean loss of `x` (a CUDA leaf that requires grad) and its backward captured in a
    CUDA graph, after three warm-up steps on a side stream (the graph-capture recipe): returns
    (graph, static_loss, static_grad), the tensors each replay writes."""
    from drloss_cuda import sigmoid_dr_loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            x.grad = None
            sigmoid_dr_loss(x, labels).backward()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        static_loss = sigmoid_dr_loss(x, labels)
        static_loss.backward()
    return graph, static_loss, x.grad
