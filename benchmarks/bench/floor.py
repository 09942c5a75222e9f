"""The memory-traffic floor of a call and the device's copy bandwidth it is compared with."""

import time

import torch

from .timing import percentile


def pass_bytes(logits, labels):
    """Memory-traffic floor of each pass, {"forward": bytes, "backward": bytes}: the forward reads
    logits and labels once; the backward reads them once more and writes the gradient (logits'
    size) once."""
    x = logits.numel() * logits.element_size()
    y = labels.numel() * labels.element_size()
    return {"forward": x + y, "backward": x + y + x}


def floor_bytes(mode, logits, labels):
    """Memory-traffic floor of one call in `mode`: the forward pass, or both passes."""
    passes = pass_bytes(logits, labels)
    return passes["forward"] if mode == "forward" else passes["forward"] + passes["backward"]


COPY_REPEATS = 10


def copy_bytes(device):
    """Size of the copy that measures bandwidth: large enough to leave every cache."""
    return (1 << 30) if device == "cuda" else (256 << 20)


def copy_words(device):
    """What the copy that measures bandwidth is called on `device` (a CPU run says nothing of
    GPUs)."""
    return "GPU copy bandwidth" if device == "cuda" else "memory copy bandwidth"


def describe_copy(device, nbytes, bandwidth):
    """One line: the bandwidth and how it was measured."""
    what = "device-to-device copy" if device == "cuda" else "copy in memory"
    return f"{copy_words(device)}: {bandwidth / 1e9:.1f} GB/s (one {nbytes >> 20} MiB {what}, read + write counted, median of {COPY_REPEATS})"


def copy_bandwidth(device, nbytes, repeats=COPY_REPEATS):
    """Bytes/s of dst.copy_(src) (counting the read and the write) on `device`, the median of
    `repeats` copies: the memory-bound ceiling the providers' achieved bytes/s is compared with."""
    n = nbytes // 4
    src = torch.arange(n, dtype=torch.float32, device=device)  # any non-zero values do; cheaper than drawing them
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            dst.copy_(src)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    return 2 * n * 4 / percentile(times, 50)
