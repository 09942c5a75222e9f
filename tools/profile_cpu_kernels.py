"""Time of the fused CPU forward and backward ops alone (no autograd, no reduction), per element
and against the memory floor, at a cache-resident size and at the benchmark's headline size. The
small size stays in the L2 cache and shows the kernels' arithmetic; the large one adds memory
and, in the backward, the page faults of the fresh gradient (see docs/design.md, "CPU kernels").

    python tools/profile_cpu_kernels.py [--sizes 1x4000x80,2x100000x80]
                                        [--dtypes float32,bfloat16,float16]
                                        [--threads 1,2] [--seconds 1.5] [--bounds]

Prints one line per (size, dtype, threads, op): the minimum and median ns per element over the
timed calls (the minimum is the steadiest figure on a shared machine), and the median's GB/s
and fraction of the copy bandwidth measured in the same run, counting the bytes as the
benchmark's floor does (forward: logits and labels read once; backward: those read and the
gradient written once). The points are timed round-robin, so a change in the machine's load
touches them all alike. The backward allocates its output, as in training: where the allocator
hands it fresh pages (large outputs always; small ones depending on what was freed before),
their faults are part of its time.

--bounds adds, per point, three plain PyTorch operations on the same logits, timed in the same
rounds: `read` (logits.sum(): the forward's traffic with no arithmetic), `copy_used` (a copy into
an output allocated once: the backward's traffic with no arithmetic and no page faults) and
`copy_fresh` (logits.clone(): the same into a newly allocated output, as the backward's). They
bound what the kernels can reach on the machine. `copy_fresh` pays the faults of fresh memory
only when the allocator maps new memory for it, as glibc does for blocks above 32 MiB unless
that much free heap is at hand; freed blocks of other sizes (several --dtypes in one run) can
leave it at hand, so time one dtype for this row. Unlike the backward, it gets no huge-page
hint.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench.floor import copy_bandwidth, copy_bytes, pass_bytes  # noqa: E402
from bench.inputs import DTYPES, make_inputs  # noqa: E402
from bench.options import parse_sizes  # noqa: E402

import drloss_cuda  # noqa: E402
from drloss_cuda.ops import backward_op, forward_op  # noqa: E402

HYPER = (
    drloss_cuda.DEFAULT_POS_LAMBDA,
    drloss_cuda.DEFAULT_NEG_LAMBDA,
    drloss_cuda.DEFAULT_L,
    drloss_cuda.DEFAULT_TAU,
    drloss_cuda.DEFAULT_MARGIN,
    0,  # first_label
)


class Point:
    """One (size, dtype, threads) with its inputs and the two timed calls."""

    def __init__(self, size, dtype_name, threads, generator):
        n, a, c = size
        logits, labels = make_inputs(n, a, c, DTYPES[dtype_name], "cpu", generator)
        self.x, self.y = logits.detach(), labels
        self.threads = threads
        self.name = f"{n}x{a}x{c} {dtype_name} threads {threads}"
        self.elements = self.x.numel()
        self.bytes = pass_bytes(self.x, self.y)
        torch.set_num_threads(threads)
        losses, self.stats = forward_op(self.x, self.y, *HYPER)
        self.grad_losses = torch.ones_like(losses)
        self.used_output = torch.empty_like(self.x)
        x_bytes = self.x.numel() * self.x.element_size()
        self.bytes.update(read=x_bytes, copy_used=2 * x_bytes, copy_fresh=2 * x_bytes)
        self.times = {}

    def call(self, op):
        torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        if op == "forward":
            forward_op(self.x, self.y, *HYPER)
        elif op == "backward":
            backward_op(self.grad_losses, self.x, self.y, self.stats, *HYPER)
        elif op == "read":
            self.x.sum()
        elif op == "copy_used":
            self.used_output.copy_(self.x)
        else:
            self.x.clone()
        self.times.setdefault(op, []).append(time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes("1x4000x80,2x100000x80"), metavar="NxAxC[,...]", help="comma-separated sizes: N images, A anchors per image, C classes (default 1x4000x80,2x100000x80)")
    p.add_argument("--dtypes", default="float32,bfloat16,float16", help="comma-separated logits dtypes from: float32, bfloat16, float16, float64 (default float32,bfloat16,float16)")
    p.add_argument("--threads", default=f"1,{torch.get_num_threads()}", help=f"comma-separated thread counts to time each point with (default 1,{torch.get_num_threads()}: one and torch's default)")
    p.add_argument("--seconds", type=float, default=1.5, help="timed seconds per point and op, on average (at least 5 calls each; default 1.5)")
    p.add_argument("--bounds", action="store_true", help="also time read, copy_used and copy_fresh (see above)")
    args = p.parse_args()
    ops = ("forward", "backward") + (("read", "copy_used", "copy_fresh") if args.bounds else ())
    threads = sorted({int(t) for t in args.threads.split(",")})
    copy_bw = copy_bandwidth("cpu", copy_bytes("cpu"))
    print(f"torch {torch.__version__}; drloss_cuda {drloss_cuda.build_info()}; copy {copy_bw / 1e9:.1f} GB/s")
    generator = torch.Generator().manual_seed(0)
    points = [Point(s, d, t, generator) for s in args.sizes for d in args.dtypes.split(",") for t in threads]
    for op in ops:
        for point in points:  # warm-up, and the time of one call
            point.call(op)
        # As many rounds as fit in `seconds` per point, on average.
        rounds = max(5, int(args.seconds * len(points) / sum(pt.times[op][-1] for pt in points)))
        for point in points:
            point.times[op].clear()
        for _ in range(rounds):
            for point in points:
                point.call(op)
    for point in points:
        for op, times in point.times.items():
            median = statistics.median(times)
            rate = point.bytes[op] / median
            print(
                f"{point.name:<34} {op:<10} min {min(times) / point.elements * 1e9:6.3f} ns/elem  "
                f"median {median / point.elements * 1e9:6.3f} ns/elem ({median * 1e3:8.3f} ms, {len(times)} calls)  "
                f"{rate / 1e9:5.1f} GB/s ({100 * rate / copy_bw:5.1f}% of copy)"
            )


if __name__ == "__main__":
    main()
