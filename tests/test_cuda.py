"""CUDA-only behaviour of the fused ops: agreement with the CPU kernels on the same inputs,
gradcheck, opcheck, CUDA graphs, streams, very large batches, determinism and the absence of
host synchronization.

Every test skips visibly (with the reason) where there is no GPU or the extension was built
without its CUDA kernels. Inputs are drawn fresh on every run (the `generator` fixture prints
the seed). Every op call runs with DRLOSS_POISON_OUTPUTS=1: outputs are filled with NaN before
the kernels write them, so an element a kernel forgets to write fails the comparisons.
"""

import math

import pytest
import torch

from conftest import cuda_skip_reason

_SKIP = cuda_skip_reason()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_SKIP is not None, reason=str(_SKIP))]

if _SKIP is None:  # importing the ops needs the compiled extension
    import drloss_cuda
    from drloss_cuda import reference, sigmoid_dr_loss
    from drloss_cuda.ops import backward_op, forward_op

DEFAULTS = dict(pos_lambda=1.0, neg_lambda=0.1 / math.log(3.5), L=6.0, tau=4.0, margin=0.5)
HYPER = (DEFAULTS["pos_lambda"], DEFAULTS["neg_lambda"], DEFAULTS["L"], DEFAULTS["tau"], DEFAULTS["margin"])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setenv("DRLOSS_POISON_OUTPUTS", "1")


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


def run_ops(logits, labels, first_label, grad_losses=None):
    losses, stats = forward_op(logits, labels, *HYPER, first_label)
    if grad_losses is None:
        grad_losses = torch.rand(losses.shape, dtype=losses.dtype, device=losses.device) + 0.5
    grad = backward_op(grad_losses.to(losses.device), logits, labels, stats, *HYPER, first_label)
    return losses, stats, grad, grad_losses


def assert_cuda_matches_cpu(logits_cpu, labels_cpu, first_label, loss_rtol, grad_rtol, cuda_logits=None):
    """Runs both ops on the CPU and on CUDA on the same inputs (same upstream gradient)."""
    losses_cpu, stats_cpu, grad_cpu, g = run_ops(logits_cpu, labels_cpu, first_label)
    x = logits_cpu.cuda() if cuda_logits is None else cuda_logits
    losses, stats, grad, _ = run_ops(x, labels_cpu.cuda(), first_label, g)
    assert losses.device.type == "cuda" and grad.dtype == logits_cpu.dtype
    assert grad.shape == logits_cpu.shape
    torch.testing.assert_close(losses.cpu(), losses_cpu, rtol=loss_rtol, atol=loss_rtol)
    # m and Z of each sign, and both expectations, are the same quantities on both devices.
    torch.testing.assert_close(stats.cpu(), stats_cpu, rtol=loss_rtol, atol=loss_rtol, equal_nan=False)
    scale = grad_cpu.double().abs().max().item() if grad_cpu.numel() else 0.0
    torch.testing.assert_close(grad.cpu().double(), grad_cpu.double(), rtol=grad_rtol, atol=grad_rtol * scale)
    assert not torch.isnan(losses).any() and not torch.isnan(grad).any()
    return losses, grad


SHAPES = [
    (2, 300, 80),  # COCO classes, several blocks per group
    (3, 37, 13),  # odd C: vectors straddle anchors, unaligned group starts
    (2, 16, 1),  # C = 1: every element its own anchor
    (4, 5, 3),  # C smaller than a vector
    (2, 9, 8),  # C equal to a float16 vector
    (1000, 9),  # pooled [M, C]
    (3, 0, 5),  # no anchors
    (3, 4, 0),  # no classes
    (0, 5, 3),  # no groups
]
TOL = {torch.float32: (2e-5, 2e-4), torch.float64: (1e-12, 1e-10), torch.float16: (2e-5, 2e-3), torch.bfloat16: (2e-5, 1.6e-2)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("first_label", [0, 1])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32], ids=str)
def test_cuda_matches_cpu(generator, dtype, shape, first_label, label_dtype):
    logits, labels = make_inputs(shape, dtype, first_label, label_dtype)
    loss_rtol, grad_rtol = TOL[dtype]
    assert_cuda_matches_cpu(logits, labels, first_label, loss_rtol, grad_rtol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("offset", [1, 2, 3, 5])
def test_unaligned_logits_match_cpu(generator, dtype, offset):
    """Logits that start off a 16-byte boundary (a contiguous view with a storage offset): the
    kernels' scalar heads and tails, and the backward's path for logits and gradient that do
    not share their alignment."""
    shape = (3, 301, 7)
    logits, labels = make_inputs(shape, dtype)
    n = logits.numel()
    storage = torch.full((n + 8,), float("nan"), dtype=dtype, device="cuda")
    view = storage[offset : offset + n].view(shape)
    view.copy_(logits.cuda())
    assert view.is_contiguous() and view.storage_offset() == offset
    loss_rtol, grad_rtol = TOL[dtype]
    assert_cuda_matches_cpu(logits, labels, 0, loss_rtol, grad_rtol, cuda_logits=view)


@pytest.mark.parametrize("shape", [(2, 200, 80), (20000, 80)], ids=["3d", "pooled"])
def test_public_api_matches_reference(generator, shape):
    logits, labels = make_inputs(shape, torch.float32, device="cuda")
    for reduction in ("mean", "none"):
        x = logits.clone().requires_grad_(True)
        loss = sigmoid_dr_loss(x, labels, reduction=reduction)
        loss.sum().backward()
        xr = logits.double().clone().requires_grad_(True)
        ref = reference.sigmoid_dr_loss(xr, labels, reduction=reduction)
        ref.sum().backward()
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-4 * xr.grad.abs().max().item())


def test_gradcheck_float64(generator):
    logits, labels = make_inputs((2, 6, 5), torch.float64, scale=1.0, device="cuda")
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: forward_op(t, labels, *HYPER, 0)[0], (x,), eps=1e-6, atol=1e-7)
    pooled = logits.reshape(-1, 5).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: forward_op(t, labels.reshape(-1), *HYPER, 0)[0], (pooled,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_opcheck(generator, dtype):
    logits, labels = make_inputs((2, 10, 7), dtype, device="cuda")
    x = logits.clone().requires_grad_(True)
    torch.library.opcheck(forward_op, (x, labels, *HYPER, 0))
    losses, stats = forward_op(logits, labels, *HYPER, 0)
    g = torch.rand_like(losses)
    torch.library.opcheck(backward_op, (g, logits, labels, stats, *HYPER, 0))


def test_cuda_graph_capture_and_replay(generator):
    shape = (2, 1000, 80)
    logits, labels = make_inputs(shape, device="cuda")
    x = logits.clone().requires_grad_(True)

    def step():
        x.grad = None
        loss = sigmoid_dr_loss(x, labels)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        static_loss = sigmoid_dr_loss(x, labels)
        static_loss.backward()
    static_grad = x.grad

    for _ in range(3):
        new_logits, _ = make_inputs(shape, device="cuda")
        with torch.no_grad():
            x.copy_(new_logits)
        static_grad.fill_(float("nan"))
        graph.replay()
        eager = new_logits.clone().requires_grad_(True)
        eager_loss = sigmoid_dr_loss(eager, labels)
        eager_loss.backward()
        torch.cuda.synchronize()
        # The same kernels with the same launch shape on the same device: bitwise equal.
        assert torch.equal(static_loss, eager_loss.detach())
        assert torch.equal(static_grad, eager.grad)


def test_non_default_stream(generator):
    """The kernels run on the current stream: a stream that is still writing the logits when
    the op is called must be waited for, which happens only when the op launches on it."""
    shape = (2, 2000, 80)
    logits, labels = make_inputs(shape, device="cuda")
    expected_loss, expected_stats, expected_grad, g = run_ops(logits, labels, 0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        x = torch.zeros_like(logits)
        torch.cuda._sleep(50_000_000)  # keeps this stream busy for tens of milliseconds
        x.copy_(logits)
        losses, stats, grad, _ = run_ops(x, labels, 0, g)
    stream.synchronize()
    assert torch.equal(losses, expected_loss)
    assert torch.equal(stats, expected_stats)
    assert torch.equal(grad, expected_grad)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device(generator):
    logits, labels = make_inputs((2, 300, 80))
    with torch.cuda.device(0):
        assert_cuda_matches_cpu(logits, labels, 0, 2e-5, 2e-4, cuda_logits=logits.to("cuda:1"))


def test_bitwise_deterministic(generator):
    logits, labels = make_inputs((4, 20000, 80), device="cuda")
    g = torch.rand(4, device="cuda") + 0.5
    first = run_ops(logits, labels, 0, g)
    for _ in range(5):
        again = run_ops(logits.clone(), labels.clone(), 0, g)
        for a, b in zip(first[:3], again[:3]):
            assert torch.equal(a, b)


def test_no_host_synchronization(generator):
    logits, labels = make_inputs((2, 5000, 80), device="cuda")
    pooled_logits, pooled_labels = logits.reshape(-1, 80), labels.reshape(-1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x_in, y in ((logits, labels), (pooled_logits, pooled_labels)):
            x = x_in.clone().requires_grad_(True)
            loss = sigmoid_dr_loss(x, y)
            loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()


def test_finite_input_gives_finite_output(generator):
    """Extreme but finite logits (probabilities of exactly 0 and 1 in float32) and tiny
    lambdas (exponents up to 1000) must not produce NaN or inf."""
    logits, labels = make_inputs((2, 3000, 80), scale=40.0, device="cuda")
    for neg_lambda, pos_lambda in ((DEFAULTS["neg_lambda"], 1.0), (1e-3, 1e-3)):
        losses, stats = forward_op(logits, labels, pos_lambda, neg_lambda, 6.0, 4.0, 0.5, 0)
        grad = backward_op(torch.ones_like(losses), logits, labels, stats, pos_lambda, neg_lambda, 6.0, 4.0, 0.5, 0)
        assert torch.isfinite(losses).all() and torch.isfinite(grad).all()
        ref = forward_op(logits.cpu(), labels.cpu(), pos_lambda, neg_lambda, 6.0, 4.0, 0.5, 0)[0]
        torch.testing.assert_close(losses.cpu(), ref, rtol=1e-4, atol=1e-5)


def test_batch_over_2_pow_31_elements_float16(generator):
    """Over 2^31 logits in float16. The batch repeats a small pattern R times per image: the
    softmax expectations (and so the loss) are those of the pattern, and each copy of an element
    gets the pattern's gradient divided by R, which the CPU computes cheaply."""
    C, K, N = 80, 1000, 2
    R = 2**31 // (N * K * C) + 1
    total = N * R * K * C
    assert total > 2**31
    # logits + gradient (float16) + labels (int32) + one image's NaN mask + slack
    needed = total * 2 * 2 + N * R * K * 4 + total // N + (1 << 30)
    free, _ = torch.cuda.mem_get_info()
    if free < needed:
        pytest.skip(f"needs {needed / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    small, small_labels = make_inputs((N, K, C), torch.float16, label_dtype=torch.int32)
    # The float16 values are exact in float32, where the CPU reference keeps the gradient
    # unrounded (a copy's gradient is a float16 subnormal once divided by R).
    small_losses, _, small_grad, _ = run_ops(small.float(), small_labels, 0, torch.ones(N))

    big = small.cuda().repeat(1, R, 1)
    big_labels = small_labels.cuda().repeat(1, R)
    losses, stats = forward_op(big, big_labels, *HYPER, 0)
    torch.testing.assert_close(losses.cpu(), small_losses, rtol=1e-3, atol=1e-4)
    grad = backward_op(torch.ones_like(losses), big, big_labels, stats, *HYPER, 0)
    del big
    for image in range(N):
        assert not torch.isnan(grad[image]).any()
    expected = (small_grad / R).cuda()
    # Rounding to float16 (subnormals included: steps of 2^-24) plus the accumulation order.
    atol = 2e-2 * expected.abs().max().item() + 2.0**-23
    # First, middle and last copies of each image, the last one past element 2^31.
    for r in (0, R // 2, R - 1):
        got = grad[:, r * K : (r + 1) * K]
        torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=atol)
