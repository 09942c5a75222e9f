"""Bitwise determinism: the same inputs give the same loss and gradient from run to run and
whatever the thread count, and no chunk's labels leak into the next."""

import contextlib

import pytest
import torch

from drloss_cuda import sigmoid_dr_loss
from problems import (
    assert_matches_float64,
    loss_and_grad,
    make_inputs,
    poison_outputs,  # noqa: F401  (autouse fixture)
)


def test_bitwise_deterministic_across_runs(device, generator):
    logits, labels = make_inputs((2, 3000, 20), device)
    first = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
    for _ in range(3):
        again = loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none")
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@contextlib.contextmanager
def num_threads(n):
    """torch's intra-op thread count set to n inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_bitwise_deterministic_across_thread_counts(generator):
    """The threads take the chunks on demand (each its own range first, then what is left of the
    others'), so which thread computes a chunk changes from call to call. 8 threads on a machine
    with fewer cores start at different times and take over each other's ranges."""
    logits, labels = make_inputs((3, 5000, 20), "cpu")
    labels[:, 1000:1400] = -1  # ignored runs: the classification's marks must not leak
    results = []
    for n in (1, 2, 3, 8, 8):
        with num_threads(n):
            results.append(loss_and_grad(sigmoid_dr_loss, logits, labels, reduction="none"))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("C", [1, 3, 80])
def test_one_chunks_labels_do_not_leak_into_the_next(generator, C):
    """On one thread a single classification buffer walks every 2048-element chunk in turn and
    sets back only the marks the previous chunk cleared. Runs of ignored anchors and dense
    positives alternate with all-negative runs, over groups whose size is no multiple of 2048:
    a mark left over would drop (or count as positive) negatives of the next chunk."""
    A = 5000 // C + 7
    anchor = torch.arange(A)
    run = (anchor * C) // 1500  # runs of about 1500 entries, out of step with the chunks
    labels = torch.where(run % 3 == 0, -1, torch.where(run % 3 == 1, 0, C)).repeat(3, 1)
    labels[1] = labels[1].roll(A // 3)
    logits = torch.randn(3, A, C, dtype=torch.float64) * 3
    with num_threads(1):
        assert_matches_float64(logits.float(), labels, reduction="none")
