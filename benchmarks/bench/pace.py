"""The pace of the CPU's arithmetic at the start and at the end of a run.

On a shared machine the pace of vector arithmetic can change within a minute while the copy
bandwidth holds (docs/performance.md): the fused CPU kernels, whose time is
mostly arithmetic, then speed up and slow down against a floor that stays put. The probe says
which pace a run had: the fused float32 forward on logits that fit the caches, whose time is
its arithmetic alone."""

import time

import torch

from .inputs import make_inputs

PROBE_SIZE = (2, 4000, 80)  # N, A, C: 2.4 MiB of float32 logits
PROBE_CALLS = 20


def arithmetic_pace(device):
    """ns per element of the fused forward at PROBE_SIZE (float32, default hyperparameters),
    the best of PROBE_CALLS calls after one untimed call; None off the CPU. The caller makes
    sure the fused kernels load (run.fused_unavailable)."""
    if device != "cpu":
        return None
    import drloss_cuda
    logits, labels = make_inputs(*PROBE_SIZE, torch.float32, "cpu", torch.Generator().manual_seed(0))
    logits = logits.detach()
    best = float("inf")
    with torch.no_grad():
        for call in range(PROBE_CALLS + 1):
            start = time.perf_counter()
            drloss_cuda.sigmoid_dr_loss(logits, labels)
            if call:
                best = min(best, time.perf_counter() - start)
    return best / logits.numel() * 1e9


def describe(pace_ns):
    """The pace, what it is and what it is for, in one line (printed once, at a run's start)."""
    N, A, C = PROBE_SIZE
    return (
        f"{pace_ns:.3f} ns per element (the fused forward on {N}x{A}x{C} float32 logits that fit the caches, "
        f"best of {PROBE_CALLS} calls: the CPU's speed at arithmetic alone, which a busy or throttled machine "
        "lowers; compare two runs' times only at a similar pace)"
    )
