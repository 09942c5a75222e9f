"""Peak extra memory of one call: what it allocates beyond the inputs that exist before it."""

import torch

from .timing import run_once

CPU_METHOD = "profiler_alloc_events"
CUDA_METHOD = "cuda.max_memory_allocated"


def method(device):
    """The `memory_method` column: how peak_bytes measures on `device`."""
    return CUDA_METHOD if device == "cuda" else CPU_METHOD


def peak_bytes(fn, logits, labels, mode, device):
    return (cuda_peak_bytes if device == "cuda" else cpu_peak_bytes)(fn, logits, labels, mode)


def cpu_peak_bytes(fn, logits, labels, mode):
    """Peak of the bytes allocated during one call (outputs still alive at its end included),
    from the allocation and free events that torch.profiler records with profile_memory=True,
    summed in time order to a running total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = run_once(fn, logits, labels, mode)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    del out
    return peak


def cuda_peak_bytes(fn, logits, labels, mode):
    """torch.cuda.max_memory_allocated over one call, minus what was allocated before it (the
    inputs and anything else alive); outputs alive at its end (the gradient) included."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = run_once(fn, logits, labels, mode)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak
