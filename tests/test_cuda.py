"""CUDA-only behaviour of the fused ops: agreement with float64 element by element and with the
CPU kernels (statistics included), gradcheck, opcheck, CUDA graphs, streams, very large groups
and batches, many groups, every number of blocks per group, determinism and the absence of host
synchronization.

Every test skips visibly (with the reason) where there is no GPU or the extension was built
without its CUDA kernels. Inputs are drawn fresh on every run (the `generator` fixture prints
the seed). Every op call runs with DRLOSS_POISON_OUTPUTS=1: outputs are filled with NaN before
the kernels write them, so an element a kernel forgets to write fails the comparisons.
Tolerances are per element (tests/tolerances.py).
"""

import math
import re

import pytest
import torch

from conftest import CUDA_ONLY, CUDA_SKIP_REASON, free_gpu_memory_or_skip
from kernel_runs import HYPER, assert_cuda_matches_cpu, capture_loss_and_backward, assert_run_matches_float64, float64_eval, make_inputs, run_ops
from kernel_trace import grids_of, launched_kernels
from tolerances import (
    DEFAULTS,
    assert_elementwise,
    assert_grad_close,
    assert_loss_close,
    assert_stats_close,
    bound_terms,
    dense_float64,
    gradient_tolerance,
    group_relative,
)

pytestmark = [*CUDA_ONLY, pytest.mark.usefixtures("kernel_defaults")]

if CUDA_SKIP_REASON is None:  # importing the ops needs the compiled extension
    from drloss_cuda import reference, sigmoid_dr_loss
    from drloss_cuda.ops import backward_op, forward_op

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("first_label", [0, 1])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32], ids=str)
def test_cuda_matches_cpu(generator, dtype, shape, first_label, label_dtype):
    logits, labels = make_inputs(shape, dtype, first_label, label_dtype)
    assert_cuda_matches_cpu(logits, labels, first_label)


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
    assert_cuda_matches_cpu(logits, labels, 0, cuda_logits=view)


def test_labels_below_minus_one_are_ignored(generator):
    """Any negative label ignores its anchor, -5 and -2**62 as much as -1."""
    logits, labels = make_inputs((3, 500, 11), label_dtype=torch.int64)
    far = torch.where(labels < 0, torch.randint(-(2**62), -1, labels.shape), labels)
    assert (far < -1).any()
    want = run_ops(logits.cuda(), labels.cuda(), 0)
    got = run_ops(logits.cuda(), far.cuda(), 0, want[3])
    for a, b in zip(got[:3], want[:3]):
        assert torch.equal(a, b)
    assert_cuda_matches_cpu(logits, far, 0)
    int32 = torch.where(labels < 0, -5, labels).to(torch.int32)
    assert_cuda_matches_cpu(logits, int32, 0)


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32], ids=str)
def test_first_label_above_one(generator, label_dtype):
    """first_label = 7: labels 7..7+C-1 are the classes, 0..6 and 7+C.. are background."""
    C = 13
    logits, labels = make_inputs((3, 400, C))
    u = torch.rand(labels.shape)
    labels = torch.where(labels >= 0, labels + 7, labels)  # classes 7..19 (20 = background)
    labels = torch.where(u < 0.2, torch.randint(0, 7, labels.shape), labels)  # background below 7
    assert_cuda_matches_cpu(logits, labels.to(label_dtype), 7)


def test_public_api_matches_reference(generator):
    for shape in ((2, 200, 80), (20000, 80)):
        logits, labels = make_inputs(shape, torch.float32, device="cuda")
        for reduction in ("mean", "none"):
            x = logits.clone().requires_grad_(True)
            loss = sigmoid_dr_loss(x, labels, reduction=reduction)
            loss.sum().backward()
            xr = logits.double().clone().requires_grad_(True)
            ref = reference.sigmoid_dr_loss(xr, labels, reduction=reduction)
            ref.sum().backward()
            groups = shape[0] if len(shape) == 3 else 1
            g = torch.full((groups,), 1.0 / groups if reduction == "mean" else 1.0, dtype=torch.float64)
            bound = dense_float64(logits, labels, *HYPER, 0, grad_losses=g).bound
            assert_loss_close(loss, ref.detach(), torch.float32)
            assert_grad_close(x.grad, xr.grad, torch.float32, bound)


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

    graph, static_loss, static_grad = capture_loss_and_backward(x, labels)

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
        assert_cuda_matches_cpu(logits, labels, 0, cuda_logits=logits.to("cuda:1"))


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


@pytest.mark.parametrize("lambdas", [(DEFAULTS["pos_lambda"], DEFAULTS["neg_lambda"]), (1e-3, 1e-3), (1e-4, 1e-4)], ids=["default", "1e-3", "min"])
def test_extreme_logits_and_small_lambdas(generator, lambdas):
    """Extreme but finite logits (probabilities of exactly 0 and 1 in float32) and small lambdas
    (exponents up to 1e4): finite and accurate, on both devices."""
    pos_lambda, neg_lambda = lambdas
    logits, labels = make_inputs((2, 3000, 80), scale=40.0)
    hyper = (pos_lambda, neg_lambda, 6.0, 4.0, 0.5)
    _, _, grad, _ = assert_cuda_matches_cpu(logits, labels, 0, hyper=hyper)
    assert torch.isfinite(grad).all()


# --- launch shapes ------------------------------------------------------------------------------


def test_every_number_of_blocks_per_group(generator, monkeypatch, tmp_path):
    """DRLOSS_CUDA_BLOCKS_PER_GROUP=k sets the forward's blocks per group at each call. Every k,
    with one block, a few, more blocks than the group has 16-element ranges (empty trailing
    ranges), and more partials than the finalize's 32 lanes load in one batch of 8 each (600:
    the third batch part-full), gives the loss and statistics of float64 and of every other k
    to rounding."""
    shape = (2, 301, 7)  # 2,107 elements per group: 132 ranges of 16
    ranges = math.ceil(301 * 7 / 16)
    logits, labels = make_inputs(shape)
    x, y = logits.cuda(), labels.cuda()
    g = torch.rand(2, dtype=torch.float32) + 0.5
    ref = float64_eval(logits, labels, 0, g)
    results = {}
    for k in (1, 2, 3, 7, ranges + 68, 600):
        monkeypatch.setenv("DRLOSS_CUDA_BLOCKS_PER_GROUP", str(k))
        results[k] = run_ops(x, y, 0, g)
        assert_run_matches_float64(x, y, 0, results[k], ref)
        _, kernels = launched_kernels(lambda: run_ops(x, y, 0, g), tmp_path / f"k{k}.json")
        # The grid is G * k blocks, capped at one wave of the device (at least one block per
        # multiprocessor): G * k exactly while that is below the multiprocessor count.
        grids = grids_of(kernels, "forward_(?:partials|aligned)_kernel")
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        assert len(grids) == 1, f"k = {k}: forward grid sizes {grids}"
        if shape[0] * k <= sms:
            assert grids == [shape[0] * k], f"k = {k}: forward grid sizes {grids}"
        else:
            assert sms <= grids[0] <= shape[0] * k, f"k = {k}: forward grid sizes {grids}"
    losses = torch.stack([r[0] for r in results.values()]).cpu().double()
    for row in losses[1:]:
        assert_loss_close(row, losses[0], torch.float32, what="loss against k = 1")
    for k, r in results.items():
        assert_stats_close(r[1], results[1][1], ref, torch.float32, f"stats of k = {k} against k = 1")


# The measurement switches (docs/design.md, "Debugging and measurement switches"): a bad value
# of each and the message it gets.
BAD_SWITCHES = {
    "DRLOSS_CUDA_FORWARD": ("fast", "DRLOSS_CUDA_FORWARD must be general, aligned or pipelined, got 'fast'"),
    "DRLOSS_CUDA_BLOCKS_PER_GROUP": ("0", "DRLOSS_CUDA_BLOCKS_PER_GROUP must be a positive integer, got '0'"),
}


@pytest.mark.parametrize("shape", [(1, 10, 80), (0, 10, 80), (2, 0, 80)], ids=["images", "no_images", "no_anchors"])
@pytest.mark.parametrize("switch", list(BAD_SWITCHES))
def test_a_bad_switch_is_refused_at_every_call(monkeypatch, shape, switch):
    """Each switch is read and checked at every call that reads it, a call without work
    included: the forward reads both, the backward the blocks per group (its walk is always
    the general one, so a bad walk leaves it alone)."""
    value, message = BAD_SWITCHES[switch]
    logits, labels = make_inputs(shape)
    x, y = logits.cuda().requires_grad_(True), labels.cuda()
    monkeypatch.setenv(switch, value)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        sigmoid_dr_loss(x, y, reduction="none")
    monkeypatch.delenv(switch)
    loss = sigmoid_dr_loss(x, y, reduction="sum")
    monkeypatch.setenv(switch, value)
    if switch == "DRLOSS_CUDA_BLOCKS_PER_GROUP":
        with pytest.raises(RuntimeError, match=re.escape(message)):
            loss.backward()
    else:
        loss.backward()
        assert x.grad.shape == x.shape and torch.isfinite(x.grad).all()


def test_a_gpu_the_build_has_no_kernels_for_is_told_how_to_rebuild():
    """Runs only with a build made for other GPUs (else it skips, saying so): the error names
    this GPU's compute capability and the rebuild, where CUDA alone says "no kernel image is
    available for execution on the device"."""
    import drloss_cuda
    from drloss_cuda.ops import build_runs_on

    archs = drloss_cuda.build_info()["cuda_archs"]
    capability = torch.cuda.get_device_capability()
    if build_runs_on(capability, archs) is not False:
        pytest.skip(f"this build (architectures {archs}) has kernels for this GPU ({capability[0]}.{capability[1]})")
    logits, labels = make_inputs((1, 10, 80))
    message = "this build of drloss_cuda has no CUDA kernels for this GPU (cuda:{}, compute capability {}.{}): rebuild it with TORCH_CUDA_ARCH_LIST"
    with pytest.raises(RuntimeError, match=re.escape(message.format(torch.cuda.current_device(), *capability))):
        sigmoid_dr_loss(logits.cuda(), labels.cuda())


def test_many_groups(generator):
    """More groups than one launch of the finalize kernel covers (65,535 blocks of 4 groups)."""
    G = 300_000
    assert G > 65_535 * 4
    logits, labels = make_inputs((G, 4, 3))
    cuda = assert_cuda_matches_cpu(logits, labels, 0)
    assert not torch.isnan(cuda[0]).any() and not torch.isnan(cuda[1][-1000:]).any()


# --- more than 2^31 elements ----------------------------------------------------------------------


def test_element_index_above_2_pow_31_in_one_group(generator):
    """One pooled group of more than 2^31 bfloat16 logits, with the elements that decide the loss
    (the negatives' largest and the positives' smallest probabilities) beyond element 2^31: the
    loss against a float64 evaluation, chunk by chunk, and gradient elements on both
    sides of 2^31 and at the very end against float64. bfloat16 keeps float32's exponent range,
    where the gradient entries (about 1 / 2^31 of the loss) are normal numbers."""
    C = 80
    boundary_row = 2**31 // C  # its elements straddle index 2^31
    tail_rows = 2**20
    M = boundary_row + 1 + tail_rows
    assert (boundary_row + 1) * C > 2**31
    dtype = torch.bfloat16
    free_gpu_memory_or_skip(M * C * 2 * 2 + M * 4 + (6 << 30))  # logits, gradient, float64 chunks
    pos_lambda, neg_lambda, L, tau, margin = HYPER
    s_neg, s_pos = 1.0 / neg_lambda, -1.0 / pos_lambda

    labels = torch.randint(0, C, (M,), dtype=torch.int32, device="cuda")
    u = torch.rand(M, device="cuda")
    labels = torch.where(u < 0.5, C, labels)  # background
    labels = torch.where(u < 0.1, -1, labels)
    labels = torch.where(u < 0.02, -5, labels)
    logits = torch.randn(M, C, device="cuda", dtype=dtype)
    tail = logits[boundary_row + 1 :]
    tail.mul_(0.5).add_(3.0)  # high probabilities: the negatives' softmax is theirs
    tail_labels = labels[boundary_row + 1 :].long()
    tail_positive = (tail_labels >= 0) & (tail_labels < C)
    rows = torch.nonzero(tail_positive).squeeze(1)
    tail[rows, tail_labels[rows]] = -3.0  # low probabilities: the positives' softmax is theirs
    del u, tail, tail_labels, tail_positive, rows

    losses, stats = forward_op(logits, labels, *HYPER, 0)
    grad = backward_op(torch.ones_like(losses), logits, labels, stats, *HYPER, 0)

    # float64, chunk by chunk, on the GPU (IEEE float64 there too; 26 chunks of 84M elements
    # would take minutes on the CPU). Shifts: s_neg for the negatives (p <= 1, so every
    # e^(s_neg (p - 1)) lies in [e^-s_neg, 1]) and 0 for the positives (e^(s_pos p) in
    # [e^s_pos, 1]): no max pass needed.
    def chunk_sums(start, stop):
        x = logits[start:stop].double()
        y = labels[start:stop].long()
        p = torch.sigmoid(x)
        counted = (y >= 0).double().unsqueeze(1)
        is_pos = (y >= 0) & (y < C)
        p_pos = p[is_pos.nonzero().squeeze(1), y[is_pos]]
        e_neg = torch.exp(s_neg * (p - 1)) * counted
        e_neg_pos = torch.exp(s_neg * (p_pos - 1))
        e_pos = torch.exp(s_pos * p_pos)
        return torch.stack([
            e_neg.sum() - e_neg_pos.sum(), (p * e_neg).sum() - (p_pos * e_neg_pos).sum(),
            e_pos.sum(), (p_pos * e_pos).sum(),
        ]).cpu()

    head = torch.zeros(4, dtype=torch.float64)
    step = 2**20
    for start in range(0, boundary_row + 1, step):
        head += chunk_sums(start, min(start + step, boundary_row + 1))
    total = head + chunk_sums(boundary_row + 1, M)

    def loss_of(sums):
        e_neg, e_pos = sums[1] / sums[0], sums[3] / sums[2]
        z = L * (e_neg - e_pos + margin)
        return tau / L * torch.logaddexp(torch.zeros_like(z), z), e_neg, e_pos

    want, e_neg, e_pos = loss_of(total)
    assert_loss_close(losses, want.reshape(1), torch.float32, what="loss over > 2^31 elements")
    # The elements past 2^31 decide the loss: without them it would be far off.
    without_tail, _, _ = loss_of(head)
    assert abs(without_tail - want) > 1e-3 * want

    slope = tau * torch.sigmoid(L * (e_neg - e_pos + margin))
    n = M * C
    check_rows = [0, 1, boundary_row - 1, boundary_row, boundary_row + 1, boundary_row + 2] + list(range(M - 64, M))
    index = torch.tensor(check_rows, device="cuda")
    x = logits[index].cpu().double()
    y = labels[index].cpu().long()
    got = grad[index].cpu()
    p = torch.sigmoid(x)
    positive = (y.unsqueeze(1) == torch.arange(C)) & (y >= 0).unsqueeze(1)
    negative = (y >= 0).unsqueeze(1) & ~positive
    q_neg = torch.exp(s_neg * (p - 1)) / total[0]
    q_pos = torch.exp(s_pos * p) / total[2]
    want_grad = torch.where(negative, slope * q_neg * (1 + s_neg * (p - e_neg)), 0.0)
    want_grad = torch.where(positive, -slope * q_pos * (1 + s_pos * (p - e_pos)), want_grad) * p * (1 - p)
    neg_terms = bound_terms(p, s_neg, e_neg, q_neg, slope)
    pos_terms = bound_terms(p, s_pos, e_pos, q_pos, slope)
    scale, value, floor = (torch.where(negative, a, torch.where(positive, b, 0.0)) for a, b in zip(neg_terms, pos_terms))
    # The weighted spread of |p - E| is at most 1: the group's factor with spread 1 bounds it.
    kernel, float64 = group_relative(L, (abs(s_neg), abs(s_pos)), (1.0, 1.0), n)
    finfo = torch.finfo(dtype)
    tol = gradient_tolerance(torch.float32, scale, value, floor, kernel, float64, x.abs())
    tol = tol + finfo.eps * want_grad.abs() + finfo.tiny * finfo.eps  # one rounding to bfloat16
    assert (want_grad[len(check_rows) - 64 :] != 0).any()
    assert_elementwise(got, want_grad, tol, "gradient rows around element 2^31 and at the end")


def test_batch_over_2_pow_31_elements_float16(generator):
    """Over 2^31 logits in float16 across a batch. The batch repeats a small pattern R times per
    image: the softmax expectations (and so the loss) are those of the pattern, and each copy of
    an element gets the pattern's gradient divided by R, which the CPU computes cheaply."""
    C, K, N = 80, 1000, 2
    R = 2**31 // (N * K * C) + 1
    total = N * R * K * C
    assert total > 2**31
    # logits + gradient (float16) + labels (int32) + one image's NaN mask + slack
    free_gpu_memory_or_skip(total * 2 * 2 + N * R * K * 4 + total // N + (1 << 30))
    small, small_labels = make_inputs((N, K, C), torch.float16, label_dtype=torch.int32)
    ones = torch.ones(N, dtype=torch.float64)
    ref = dense_float64(small, small_labels, *HYPER, 0, grad_losses=ones)

    big = small.cuda().repeat(1, R, 1)
    big_labels = small_labels.cuda().repeat(1, R)
    losses, stats = forward_op(big, big_labels, *HYPER, 0)
    assert_loss_close(losses, ref.losses, torch.float16, what="loss of the repeated batch")
    grad = backward_op(torch.ones_like(losses), big, big_labels, stats, *HYPER, 0)
    del big
    for image in range(N):
        assert not torch.isnan(grad[image]).any()
    # Each copy's gradient is the pattern's / R; its bound is the pattern's / R (the group has R
    # times the elements, for the error of the sums), plus one rounding to float16 (subnormals
    # included: steps of 2^-24).
    want = ref.grad / R
    finfo = torch.finfo(torch.float16)
    _, float64 = group_relative(DEFAULTS["L"], ref.scales, (1.0, 1.0), R * K * C)
    b = ref.bound
    tol = gradient_tolerance(torch.float32, b.scale / R, b.value / R, b.floor / R, b.kernel, float64, b.abs_x)
    tol = tol + finfo.eps * want.abs() + finfo.tiny * finfo.eps
    # First, middle and last copies of each image, the last one past element 2^31.
    for r in (0, R // 2, R - 1):
        assert_elementwise(grad[:, r * K : (r + 1) * K], want, tol, f"copy {r} of the pattern")
