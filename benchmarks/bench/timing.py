"""Per-call times, interleaved across providers and modes."""

import math
import time
from pathlib import Path

import torch

try:
    import resource
except ImportError:  # Windows has no resource module
    resource = None

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


# How a CUDA call is timed (--cuda-timing):
#   queued: the device time of the call while the GPU's queue is kept full, as in a training
#           loop: each round starts with a short GPU busy-wait so that the host launches ahead, and
#           CUDA events around each call are read once the round is done. Host overhead shows
#           only where it exceeds the call's device time (or the call waits on the host).
#   idle:   the call's latency on an idle device: synchronized before, events around it, so
#           the host's launch overhead is included.
CUDA_TIMINGS = ("queued", "idle")
# About 2 ms of GPU busy-waiting at ~2 GHz (torch.cuda._sleep counts clock cycles): longer than
# the host takes to launch a round's first call.
QUEUE_HEAD_START_CYCLES = 4_000_000


def timing_label(device, cuda_timing):
    """The CSV's `timing` column: how the rows' times were taken."""
    return f"cuda_{cuda_timing}" if device == "cuda" else "host"


def minor_page_faults():
    """The process's minor page faults so far (all its threads), or None where the OS does not
    say. On the CPU most of them are the first touches of freshly mapped memory, which the OS
    zeroes: a call whose output is mapped anew pays them, one whose output reuses freed heap
    does not (glibc maps blocks above 32 MiB anew unless that much free heap is at hand)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else None


# The flush writes twice the largest cache, within these bounds (and FLUSH_FALLBACK_BYTES where
# the size is unknown): enough to replace every line an earlier call left in any level.
FLUSH_MIN_BYTES, FLUSH_MAX_BYTES, FLUSH_FALLBACK_BYTES = 8 << 20, 512 << 20, 64 << 20


def largest_cache_bytes(device):
    """The device's largest cache in bytes (the CPU's from Linux's sysfs, the GPU's L2), or None
    where it is not known."""
    if device == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size or None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = path.read_text().strip()
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except (OSError, ValueError, IndexError):
            continue
    return max(sizes) if sizes else None


class CacheFlush:
    """Writes over the caches before each timed call. Calls are interleaved, so without it a
    call that reads the inputs right after another one reads them from the cache where its
    predecessor left them, while the call after a peer with large temporaries reads them from
    memory: at sizes whose inputs fit the caches that, not the code, set their order."""

    def __init__(self, device):
        cache = largest_cache_bytes(device)
        self.nbytes = min(max(2 * cache, FLUSH_MIN_BYTES), FLUSH_MAX_BYTES) if cache else FLUSH_FALLBACK_BYTES
        self.buffer = torch.empty(self.nbytes // 4, dtype=torch.float32, device=device)
        self.count = 0

    def __call__(self):
        self.count += 1
        self.buffer.fill_(self.count)  # a new value each time: every line is written


class Round:
    """One round's timed calls: host wall clock on the CPU, with the page faults each call
    took; CUDA events on the GPU, read once the round is done (idle: the device synchronized
    before each call)."""

    def __init__(self, device, cuda_timing, flush=None):
        self.device, self.queued, self.flush = device, device == "cuda" and cuda_timing == "queued", flush
        self.host_ms, self.events, self.faults = [], [], []
        if self.queued:
            torch.cuda.synchronize()
            torch.cuda._sleep(QUEUE_HEAD_START_CYCLES)

    def time(self, key, fn, logits, labels, mode):
        """Runs and times one call of fn, under `key` (after the flush, which is not timed)."""
        if self.flush is not None:
            self.flush()
        if self.device != "cuda":
            f0 = minor_page_faults()
            t0 = time.perf_counter()
            out = run_once(fn, logits, labels, mode)
            self.host_ms.append((key, (time.perf_counter() - t0) * 1e3))
            if f0 is not None:
                self.faults.append((key, minor_page_faults() - f0))
            del out
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if not self.queued:
            torch.cuda.synchronize()
        start.record()
        out = run_once(fn, logits, labels, mode)
        end.record()
        del out
        self.events.append((key, start, end))

    def finish(self):
        """[(key, ms)] of the round's calls, in call order."""
        if self.events:
            torch.cuda.synchronize()
        return self.host_ms + [(key, start.elapsed_time(end)) for key, start, end in self.events]


def time_interleaved(fns, modes, input_sets, device, warmup, repeats, max_seconds, min_repeats, cuda_timing="queued", page_faults=None, flush=None):
    """Per-call times in ms, {(name, mode): [ms, ...]}, of every provider in `fns` ({name: fn})
    in every mode. After `warmup` untimed calls of each, the timed calls go round all the
    (provider, mode) pairs in turn (round i on input set i mod K), so that a slow spell of the
    machine hits all of them alike instead of the one measured then: on a loaded machine a
    provider's forward can otherwise come out slower than its forward+backward. A pair stops
    after `repeats` calls, or earlier, once it has `min_repeats` and its calls add up to more
    than `max_seconds`. On CUDA, `cuda_timing` (CUDA_TIMINGS) says how a call is timed. On the
    CPU a dict passed as `page_faults` receives each pair's minor page faults per timed call.
    `flush` (a CacheFlush), when given, runs before each timed call."""
    if cuda_timing not in CUDA_TIMINGS:
        raise ValueError(f"cuda_timing must be one of {CUDA_TIMINGS}, got {cuda_timing!r}")
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
        timed = Round(device, cuda_timing, flush)
        for pair in active:
            timed.time(pair, fns[pair[0]], logits, labels, pair[1])
        for pair, elapsed in timed.finish():
            times[pair].append(elapsed)
            spent[pair] += elapsed / 1e3
        if page_faults is not None:
            for pair, count in timed.faults:
                page_faults.setdefault(pair, []).append(count)
        i += 1
        active = [p for p in active if len(times[p]) < repeats and not (len(times[p]) >= min_repeats and spent[p] > max_seconds)]
    return times
