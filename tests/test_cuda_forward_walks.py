"""The forward's walks (DRLOSS_CUDA_FORWARD; csrc/cuda/dr_loss_kernels.h, ForwardWalk): the
anchor-aligned walk and its pipelined form, each value-checked against float64 element by
element and against the CPU kernels, at the shapes that stress their bookkeeping (few vectors
per thread, an odd count, many per thread, a jump of fewer vectors than an anchor holds, several
work items per block, items without elements), on a view 16 bytes into its storage and with
other hyperparameters that keep the shifts fixed; the calls they cannot take (a group of 2^30
elements among them) fall back to the general walk; the pipelined walk adds exactly what the
aligned walk adds. The profiler's trace confirms which kernel ran (a bad
value of the switch: tests/test_cuda.py). CUDA only: these skip visibly without a GPU.
"""

import pytest
import torch

from conftest import CUDA_ONLY, free_gpu_memory_or_skip
from kernel_runs import HYPER, assert_cuda_matches_cpu, at_storage_offset, capture_loss_and_backward, make_inputs, run_ops
from kernel_trace import launched_kernels, template_arguments
from problems import expected_loss

pytestmark = [*CUDA_ONLY, pytest.mark.usefixtures("kernel_defaults")]

WALKS = ["aligned", "pipelined"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def forward_kernel_ran(kernels, dtype, label_dtype):
    """'aligned', 'pipelined' or 'general': the forward walk of every launch for `dtype` logits
    and `label_dtype` labels in the trace (the float32 rerun that checks a 16-bit gradient
    takes its own walk, and is not counted)."""
    walks = {"general"} if template_arguments(kernels, "forward_partials_kernel", dtype, label_dtype, required=False) else set()
    names = {"false": "aligned", "true": "pipelined"}
    walks.update(names[args[0]] for args in template_arguments(kernels, "forward_aligned_kernel", dtype, label_dtype, required=False))
    assert len(walks) == 1, f"forward walks {walks} in one call: {[name for name, _ in kernels]}"
    return walks.pop()


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize(
    "shape, first_label, blocks_per_group",
    [
        pytest.param((2, 1000, 80), 0, None, id="2x1000x80"),
        pytest.param((2000, 80), 1, None, id="pooled-2000x80-first-label-1"),
        pytest.param((3, 37, 16), 0, None, id="3x37x16-under-one-vector-per-thread"),
        pytest.param((2, 333, 80), 0, 7, id="2x333x80-7-blocks-odd-vectors"),
        # one block per group: 26-27 vectors per thread in float32, 13-14 in 16 bits, so the
        # loop's later steps (and the pipelined walk's loads ahead) run, on odd and even counts
        pytest.param((2, 333, 80), 0, 1, id="2x333x80-one-block-per-group-long-loop"),
        # a thread's jump (threads x vector width) is shorter than an anchor: 1024 of 2048
        # elements in float32; 2048 of 3000 in 16 bits (2048 is one whole anchor there)
        pytest.param((2, 20, 2048), 1, None, id="2x20x2048-jump-inside-an-anchor"),
        pytest.param((2, 12, 3000), 1, None, id="2x12x3000-16-bit-jump-inside-an-anchor"),
        pytest.param((4, 600, 80), 0, 600, id="4x600x80-600-blocks-per-group"),
        # 592 elements per group in ranges of 16: 37 items with elements, 63 without
        pytest.param((3, 37, 16), 0, 100, id="3x37x16-100-blocks-items-without-elements"),
    ],
)
def test_aligned_walks_match_float64(generator, monkeypatch, tmp_path, walk, dtype, label_dtype, shape, first_label, blocks_per_group):
    monkeypatch.setenv("DRLOSS_CUDA_FORWARD", walk)
    if blocks_per_group is not None:
        monkeypatch.setenv("DRLOSS_CUDA_BLOCKS_PER_GROUP", str(blocks_per_group))
    logits, labels = make_inputs(shape, dtype, first_label, label_dtype=label_dtype)
    check = lambda: assert_cuda_matches_cpu(logits, labels, first_label)  # noqa: E731
    _, kernels = launched_kernels(check, tmp_path / "trace.json")
    assert forward_kernel_ran(kernels, dtype, label_dtype) == walk


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_view_on_a_16_byte_boundary_takes_the_aligned_walk(generator, monkeypatch, tmp_path, walk, dtype):
    """Logits sliced out of a larger tensor 16 bytes in (one vector) are still aligned."""
    monkeypatch.setenv("DRLOSS_CUDA_FORWARD", walk)
    logits, labels = make_inputs((2, 301, 80), dtype, label_dtype=torch.int64)
    on_device = at_storage_offset(logits, "cuda", 16 // logits.element_size())
    check = lambda: assert_cuda_matches_cpu(logits, labels, 0, on_device)  # noqa: E731
    _, kernels = launched_kernels(check, tmp_path / "trace.json")
    assert forward_kernel_ran(kernels, dtype, torch.int64) == walk


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "hyper",
    [
        pytest.param((1 / 64, 1 / 64, 6.0, 4.0, 0.5), id="both-temperatures-1-64"),
        pytest.param((0.5, 0.05, 3.0, 2.0, 0.2), id="other-hyperparameters"),
    ],
)
def test_aligned_walks_with_other_fixed_shift_hyperparameters(generator, monkeypatch, tmp_path, walk, dtype, hyper):
    """Temperatures down to 1/64 keep both shifts fixed, so the aligned walks take them."""
    monkeypatch.setenv("DRLOSS_CUDA_FORWARD", walk)
    logits, labels = make_inputs((2, 333, 80), dtype, label_dtype=torch.int32)
    check = lambda: assert_cuda_matches_cpu(logits, labels, 0, hyper=hyper)  # noqa: E731
    _, kernels = launched_kernels(check, tmp_path / "trace.json")
    assert forward_kernel_ran(kernels, dtype, torch.int32) == walk


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize(
    "anchors, expected",
    [pytest.param((1 << 20) - 1, None, id="under-2^30-elements"), pytest.param(1 << 20, "general", id="2^30-elements")],
)
def test_groups_of_2_30_elements_or_more_run_the_general_walk(monkeypatch, tmp_path, walk, anchors, expected):
    """The walks keep a group's positions in 32 bits: a group of 2^30 elements or more runs the
    general walk. With every p equal to 1/2 the loss is known in closed form either way."""
    free_gpu_memory_or_skip(anchors * 1024 * 2 + (1 << 30))
    from drloss_cuda.ops import forward_op

    monkeypatch.setenv("DRLOSS_CUDA_FORWARD", walk)
    logits = torch.zeros(1, anchors, 1024, dtype=torch.bfloat16, device="cuda")
    labels = torch.arange(anchors, device="cuda") % 1024  # one positive per anchor
    (losses, _), kernels = launched_kernels(lambda: forward_op(logits, labels[None], *HYPER, 0), tmp_path / "trace.json")
    assert forward_kernel_ran(kernels, torch.bfloat16, torch.int64) == (expected or walk)
    assert losses.item() == pytest.approx(expected_loss(0.5, 0.5), rel=1e-6)


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize(
    "dtype, shape, offset, hyper, why",
    [
        pytest.param(torch.float32, (2, 50, 81), 0, HYPER, "C not a multiple of 4", id="float32-C81"),
        pytest.param(torch.bfloat16, (2, 50, 12), 0, HYPER, "C not a multiple of 8", id="bfloat16-C12"),
        pytest.param(torch.float16, (2, 301, 80), 3, HYPER, "logits off a 16-byte boundary", id="float16-offset-3"),
        pytest.param(torch.float64, (2, 50, 80), 0, HYPER, "float64 logits", id="float64"),
        pytest.param(torch.float32, (2, 50, 80), 0, (1e-3, 1e-3, 6.0, 4.0, 0.5), "a temperature below 1/64", id="running-max"),
    ],
)
def test_calls_the_aligned_walk_cannot_take_run_the_general_walk(generator, monkeypatch, tmp_path, walk, dtype, shape, offset, hyper, why):
    monkeypatch.setenv("DRLOSS_CUDA_FORWARD", walk)
    logits, labels = make_inputs(shape, dtype, label_dtype=torch.int64)
    on_device = at_storage_offset(logits, "cuda", offset) if offset else None
    check = lambda: assert_cuda_matches_cpu(logits, labels, 0, on_device, hyper=hyper)  # noqa: E731
    _, kernels = launched_kernels(check, tmp_path / "trace.json")
    assert forward_kernel_ran(kernels, dtype, torch.int64) == "general", why


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 1000, 80), (3, 37, 16), (2, 333, 80)], ids=lambda s: "x".join(map(str, s)))
def test_pipelined_walk_adds_exactly_what_the_aligned_walk_adds(generator, monkeypatch, tmp_path, dtype, shape):
    """Pipelining changes when a vector is loaded, not what is added in which order: with the
    same split of each group (the two kernels' one-wave grids differ), losses and statistics
    are bitwise equal; and each walk is bitwise reproducible."""
    monkeypatch.setenv("DRLOSS_CUDA_BLOCKS_PER_GROUP", "5")
    logits, labels = make_inputs(shape, dtype, device="cuda")
    runs = {}
    for walk in ("aligned", "pipelined", "pipelined"):
        monkeypatch.setenv("DRLOSS_CUDA_FORWARD", walk)
        run = lambda: run_ops(logits, labels, 0, grad_losses=torch.ones(shape[0]))  # noqa: E731
        (losses, stats, _, _), kernels = launched_kernels(run, tmp_path / "trace.json")
        assert forward_kernel_ran(kernels, dtype, labels.dtype) == walk
        if walk in runs:
            assert torch.equal(losses, runs[walk][0]) and torch.equal(stats, runs[walk][1]), "a rerun differs"
        runs[walk] = (losses, stats)
    assert torch.equal(runs["aligned"][0], runs["pipelined"][0])
    assert torch.equal(runs["aligned"][1], runs["pipelined"][1])


@pytest.mark.parametrize("walk", WALKS)
def test_graph_capture_with_an_aligned_walk(generator, monkeypatch, tmp_path, walk):
    """The walk is chosen at capture; each replay gives, bitwise, the eager result of the new
    logits under the same walk, writing every element of the loss and the gradient."""
    from drloss_cuda import sigmoid_dr_loss

    monkeypatch.setenv("DRLOSS_CUDA_FORWARD", walk)
    logits, labels = make_inputs((2, 1000, 80), torch.bfloat16, device="cuda")
    _, kernels = launched_kernels(lambda: sigmoid_dr_loss(logits, labels), tmp_path / "trace.json")
    assert forward_kernel_ran(kernels, torch.bfloat16, labels.dtype) == walk
    x = logits.clone().requires_grad_(True)
    graph, static_loss, static_grad = capture_loss_and_backward(x, labels)
    new_logits, _ = make_inputs(logits.shape, torch.bfloat16, device="cuda")
    with torch.no_grad():
        x.copy_(new_logits)
        static_loss.fill_(float("nan"))
        static_grad.fill_(float("nan"))
    graph.replay()
    eager = new_logits.clone().requires_grad_(True)
    eager_loss = sigmoid_dr_loss(eager, labels)
    eager_loss.backward()
    assert torch.equal(static_loss, eager_loss.detach())
    assert torch.equal(static_grad, eager.grad)

