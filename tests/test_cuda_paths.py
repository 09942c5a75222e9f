"""Kernel paths that only particular inputs reach, each value-checked against float64 element by
element: 16-bit logits with C >= 8 at storage offsets 1-7 (the backward's vector walk with
logits loaded element by element, as for a slice of an FPN level), temperatures below 1/64 (the
running-max kernels), several work items per block, and CUDA-graph capture of bfloat16 and
pooled losses; C = 80 for the detectors' layout, and C = 13 or 81 with an offset for heads,
tails and vectors that cross anchors. int32 labels run in each.

The paths the CPU kernels share run on both devices (the CPU run proves the test on any
machine); the CUDA cases also check, from the profiler's trace, that the kernel instantiation
the test is about is the one that ran. CUDA cases skip visibly without a GPU.
"""

import pytest
import torch

from conftest import cuda_only
from kernel_runs import (
    HYPER,
    assert_cuda_matches_cpu,
    assert_matches_float64_on,
    at_storage_offset,
    capture_loss_and_backward,
    float64_eval,
    make_inputs,
)
from kernel_trace import grids_of, launched_kernels, template_arguments, vector_width
from tolerances import DEFAULTS, assert_grad_close, assert_half_grad_close, assert_loss_close


pytestmark = pytest.mark.usefixtures("kernel_defaults", "general_forward_walk")

# Below this temperature (1 / 64) a sign's exponent shift is no longer fixed: the forward keeps
# a running max (csrc/dr_loss_math.h, kFixedShiftLimit).
FIXED_SHIFT_LIMIT = 64.0


# --- misaligned 16-bit logits at C = 80 -----------------------------------------------------------


MISALIGNED_16BIT = [pytest.param((2, 301, 80), offset, id=f"2x301x80-offset-{offset}") for offset in range(1, 8)]
# C not a multiple of 8: ranges and groups that end inside a gradient vector (the backward's
# head and tail elements) and vectors that cross into the next anchor.
MISALIGNED_16BIT += [pytest.param(shape, offset, id=f"{'x'.join(map(str, shape))}-offset-{offset}") for shape in ((3, 37, 13), (2, 301, 81)) for offset in (1, 3, 5)]


@pytest.mark.parametrize("shape, offset", MISALIGNED_16BIT)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_misaligned_16bit_logits_with_vectors(device, generator, tmp_path, dtype, shape, offset):
    """float16/bfloat16 logits with C >= 8 (80, the detectors' case; 13 and 81), 1-7 elements
    past a 16-byte boundary: the forward's scalar head, and the backward's vector walk that
    stores 16-byte vectors of the gradient and loads the logits element by element (their
    offsets differ by 2-14 bytes)."""
    label_dtype = torch.int32 if offset % 2 else torch.int64
    logits, labels = make_inputs(shape, dtype, label_dtype=label_dtype)
    view = at_storage_offset(logits, device, offset)
    check = lambda: assert_matches_float64_on(device, logits, labels, 0, view)  # noqa: E731
    if device == "cuda":
        result, kernels = launched_kernels(check, tmp_path / "trace.json")
        width, element = str(vector_width(dtype)), str(dtype.itemsize)
        # backward_kernel<scalar, label, N, piece>: vectors of N, logits loaded in pieces of one element
        assert template_arguments(kernels, "backward_kernel", dtype, label_dtype) == [[width, element]]
        # forward_partials_kernel<scalar, label, N, fixed>: the vector walk with fixed shifts
        assert template_arguments(kernels, "forward_partials_kernel", dtype, label_dtype) == [[width, "true"]]
    else:
        result = check()
    assert (result[2].data_ptr() - view.data_ptr()) % 16 != 0, "logits and gradient share their alignment"


# --- running-max kernels (temperatures below 1/64) ----------------------------------------------

RUNNING_LAMBDAS = [
    pytest.param((DEFAULTS["pos_lambda"], 0.015), id="negatives-0.015"),
    pytest.param((0.015, DEFAULTS["neg_lambda"]), id="positives-0.015"),
    pytest.param((1e-3, 1e-3), id="both-1e-3"),
]


@pytest.mark.parametrize("lambdas", RUNNING_LAMBDAS)
@pytest.mark.parametrize(
    "shape, label_dtype, offset",
    [
        pytest.param((2, 300, 80), torch.int32, 0, id="2x300x80-int32"),
        pytest.param((3, 37, 7), torch.int64, 0, id="3x37x7-int64"),
        pytest.param((3, 37, 13), torch.int64, 3, id="3x37x13-int64-offset-3"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_running_max_kernels(device, generator, tmp_path, dtype, shape, label_dtype, offset, lambdas):
    """A temperature below 1/64 on either sign (or both) selects the forward that keeps a
    running max of the exponents; C = 80 walks vectors, C = 7 (below a 16-bit vector) elements,
    C = 13 at an offset vectors with a head, a tail and anchor crossings."""
    pos_lambda, neg_lambda = lambdas
    assert max(1 / pos_lambda, 1 / neg_lambda) > FIXED_SHIFT_LIMIT
    hyper = (pos_lambda, neg_lambda, DEFAULTS["L"], DEFAULTS["tau"], DEFAULTS["margin"])
    logits, labels = make_inputs(shape, dtype, label_dtype=label_dtype)
    view = at_storage_offset(logits, device, offset) if offset else None
    check = lambda: assert_matches_float64_on(device, logits, labels, 0, view, hyper=hyper)  # noqa: E731
    if device == "cuda":
        _, kernels = launched_kernels(check, tmp_path / "trace.json")
        width = str(vector_width(dtype) if shape[-1] >= vector_width(dtype) else 1)
        assert template_arguments(kernels, "forward_partials_kernel", dtype, label_dtype) == [[width, "false"]]
    else:
        check()


# --- several work items per block at C = 80 ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "shape, blocks_per_group, offset",
    [
        pytest.param((4, 600, 80), 600, 0, id="4x600x80-600-blocks-per-group"),  # 2,400 items of 80 elements
        pytest.param((3000, 20, 80), None, 0, id="3000x20x80"),  # one item per group, 3,000 of them
        # ranges of 96 elements at C = 81, 3 elements off a 16-byte boundary: heads and tails
        pytest.param((4, 601, 81), 600, 3, id="4x601x81-offset-3-600-blocks-per-group"),
    ],
)
@pytest.mark.parametrize("hyper", [pytest.param(HYPER, id="fixed"), pytest.param((1e-3, 1e-3, 6.0, 4.0, 0.5), id="running-max")])
@pytest.mark.parametrize("label_dtype", [torch.int32], ids=str)
@cuda_only
def test_several_work_items_per_block(generator, monkeypatch, tmp_path, dtype, shape, blocks_per_group, offset, hyper, label_dtype):
    """More (group, range) work items than the one-wave grid has blocks (at most 8 blocks of 256
    threads per multiprocessor): each block loops over several items, in both passes."""
    if blocks_per_group is not None:
        monkeypatch.setenv("DRLOSS_CUDA_BLOCKS_PER_GROUP", str(blocks_per_group))
    items = shape[0] * (blocks_per_group or 1)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert items > 8 * sms, f"{items} items fit one wave of {sms} multiprocessors"
    logits, labels = make_inputs(shape, dtype, label_dtype=label_dtype)
    view = at_storage_offset(logits, "cuda", offset) if offset else None
    _, kernels = launched_kernels(lambda: assert_cuda_matches_cpu(logits, labels, 0, view, hyper=hyper), tmp_path / "trace.json")
    for kernel in ("forward_partials_kernel", "backward_kernel"):
        grids = grids_of(kernels, kernel)
        assert grids and all(grid < items for grid in grids), f"{kernel} grids {grids} for {items} items"


# --- CUDA-graph capture: bfloat16 and pooled --------------------------------------------------------


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("pooled", [False, True], ids=["per-image", "pooled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@cuda_only
def test_graph_capture_replays_new_inputs(generator, dtype, pooled, label_dtype):
    """Forward and backward of the mean loss captured in a CUDA graph; each replay with new
    logits copied into the captured input gives the float64 loss and gradient of those logits
    (bfloat16: the gradient within one rounding of the float32 run) and, bitwise, the eager
    result."""
    from drloss_cuda import sigmoid_dr_loss

    shape = (2, 1000, 80)
    logits, labels = make_inputs(shape, dtype, label_dtype=label_dtype)
    if pooled:
        logits, labels = logits.reshape(-1, shape[-1]), labels.reshape(-1)
    labels = labels.cuda()
    x = logits.cuda().requires_grad_(True)
    groups = 1 if pooled else shape[0]

    graph, static_loss, static_grad = capture_loss_and_backward(x, labels)

    mean_weights = torch.full((groups,), 1.0 / groups, dtype=torch.float64)
    for _ in range(2):
        new_logits, _ = make_inputs(logits.shape, dtype)
        with torch.no_grad():
            x.copy_(new_logits.cuda())
        static_grad.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref = float64_eval(new_logits, labels, 0, mean_weights)
        assert_loss_close(static_loss.reshape(1), ref.losses.mean().reshape(1), dtype, what="replayed loss")
        eager = new_logits.cuda().requires_grad_(True)
        eager_loss = sigmoid_dr_loss(eager, labels)
        eager_loss.backward()
        if dtype == torch.bfloat16:
            x32 = new_logits.float().cuda().requires_grad_(True)
            sigmoid_dr_loss(x32, labels).backward()
            assert_grad_close(x32.grad, ref.grad, torch.float32, ref.bound, "float32 gradient")
            assert_half_grad_close(static_grad, x32.grad, dtype, "replayed gradient")
        else:
            assert_grad_close(static_grad, ref.grad, dtype, ref.bound, "replayed gradient")
        assert torch.equal(static_loss, eager_loss.detach())
        assert torch.equal(static_grad, eager.grad)
