"""Per-call times, interleaved across providers and modes."""

import math
import time

import torch

MODES = ("forward", "forward_backward")


def percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def run_once(fn, logits, labels, mode):
    """One call: the loss ("forward") or the loss and its gradient ("forward_backward")."""
    loss = fn(logits, labels)
    if mode == "forward_backward":
        (grad,) = torch.autograd.grad(loss, logits)
        return loss, grad
    return loss, None


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_one_call(fn, logits, labels, mode, device):
    """One call's time in ms. CPU: time.perf_counter around the call. CUDA: a pair of CUDA
    events around the call, the device synchronized before it, so the figure is the call's
    latency on an idle device (launches and any host syncs of the provider included)."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        out = run_once(fn, logits, labels, mode)
        end.record()
        torch.cuda.synchronize()
        elapsed = start.elapsed_time(end)
    else:
        t0 = time.perf_counter()
        out = run_once(fn, logits, labels, mode)
        elapsed = (time.perf_counter() - t0) * 1e3
    del out
    return elapsed


def time_interleaved(fns, modes, input_sets, device, warmup, repeats, max_seconds, min_repeats):
    """Per-call times in ms, {(name, mode): [ms, ...]}, of every provider in `fns` ({name: fn})
    in every mode. After `warmup` untimed calls of each, the timed calls go round all the
    (provider, mode) pairs in turn (round i on input set i mod K), so that a slow spell of the
    machine hits all of them alike instead of the one measured then: on a loaded machine a
    provider's forward can otherwise come out slower than its forward+backward. A pair stops
    after `repeats` calls, or earlier, once it has `min_repeats` and its calls add up to more
    than `max_seconds`."""
    pairs = [(name, mode) for mode in modes for name in fns]
    for name, mode in pairs:
        for i in range(warmup):
            out = run_once(fns[name], *input_sets[i % len(input_sets)], mode)
            del out
    synchronize(device)
    times = {pair: [] for pair in pairs}
    spent = {pair: 0.0 for pair in pairs}
    active = list(pairs)
    i = 0
    while active:
        logits, labels = input_sets[i % len(input_sets)]
        for pair in active:
            elapsed = time_one_call(fns[pair[0]], logits, labels, pair[1], device)
            times[pair].append(elapsed)
            spent[pair] += elapsed / 1e3
        i += 1
        active = [p for p in active if len(times[p]) < repeats and not (len(times[p]) >= min_repeats and spent[p] > max_seconds)]
    return times
