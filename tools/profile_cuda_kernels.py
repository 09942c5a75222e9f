"""Device time of each fused CUDA kernel, read from torch.profiler, against the memory floor; the
host time to launch a call; and the kernels' time over other splits of each group into blocks
(DRLOSS_CUDA_BLOCKS_PER_GROUP) and over the forward's walks (DRLOSS_CUDA_FORWARD). It separates
the kernels' own speed from what the benchmark's per-call times add (launches, allocation, the
Python layers).

    python tools/profile_cuda_kernels.py [--sizes 8x201600x80] [--dtypes float32,bfloat16]
                                          [--blocks 0,66,132,264,528] [--repeats 20]
                                          [--forward-walks general,aligned,pipelined] [--rounds 3]

Prints one line per (size, dtype, layout, forward walk, blocks per group, kernel): launches,
median kernel time, bytes the kernel must move (forward: logits and labels read once; backward:
those read and the gradient written once), achieved GB/s and its fraction of the copy bandwidth
measured in the same run. Blocks 0 is the launcher's own choice. The configurations are timed in
turn, `--rounds` times over (an A/B on one warm GPU: a slow spell hits all of them alike), and
each walk's loss is compared with the general walk's before it is timed.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench.floor import copy_bandwidth, pass_bytes  # noqa: E402
from bench.inputs import DTYPES, make_inputs  # noqa: E402
from bench.options import parse_sizes  # noqa: E402

import drloss_cuda  # noqa: E402


def kernel_times(fn, repeats):
    """{kernel name: [device µs per launch]} of `repeats` calls of fn, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    times = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and "drloss" in event.name:
            times.setdefault(event.name, []).append(event.time_range.elapsed_us())
    return times


def short_name(name):
    for word in ("finalize", "forward", "backward"):
        if word in name:
            return word
    return name[:40]


def host_launch_us(fn, calls=50):
    """Host µs to issue one call while the GPU is kept busy (no synchronization in between)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(50_000_000)  # ~25 ms of GPU busy-waiting: the launches never wait on the GPU
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - t0
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes("8x201600x80"), metavar="NxAxC[,...]", help="comma-separated sizes: N images, A anchors per image, C classes (default 8x201600x80)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated logits dtypes from: float32, bfloat16, float16, float64 (default float32,bfloat16)")
    p.add_argument("--blocks", default="0,66,132,264,528", help="comma-separated blocks per group to try (0: the launcher's choice; default 0,66,132,264,528)")
    p.add_argument("--repeats", type=int, default=20, help="profiled calls per configuration and round (default 20)")
    p.add_argument("--forward-walks", default="general", help="comma-separated forward walks to time (DRLOSS_CUDA_FORWARD) from: general, aligned, pipelined (default general)")
    p.add_argument("--rounds", type=int, default=1, help="rounds over all configurations of a point and layout (default 1)")
    args = p.parse_args()
    walks = args.forward_walks.split(",")
    if not set(walks) <= {"general", "aligned", "pipelined"}:
        p.error(f"--forward-walks: unknown walk in {args.forward_walks}")
    if not torch.cuda.is_available() or not drloss_cuda.build_info()["cuda"]:
        raise SystemExit("profile_cuda_kernels: needs a GPU and drloss_cuda built with its CUDA kernels")
    copy_bw = copy_bandwidth("cuda", 2**30)
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}; copy {copy_bw / 1e9:.1f} GB/s")
    generator = torch.Generator(device="cuda").manual_seed(0)
    blocks_list = [int(b) for b in args.blocks.split(",")]
    forward_us = {}  # where -> {walk: median forward kernel us at the launcher's split}
    try:
        for n, a, c in args.sizes:
            for dtype_name in args.dtypes.split(","):
                logits, labels = make_inputs(n, a, c, DTYPES[dtype_name], "cuda", generator)
                passes = pass_bytes(logits, labels)
                for layout, (x, y) in {"per_image": (logits, labels), "pooled": (logits.reshape(-1, c), labels.reshape(-1))}.items():
                    where = f"{n}x{a}x{c} {dtype_name} {layout}"
                    forward_us[where] = profile_layout(where, x, y, passes, copy_bw, walks, blocks_list, args)
    finally:
        for name in ("DRLOSS_CUDA_BLOCKS_PER_GROUP", "DRLOSS_CUDA_FORWARD"):
            os.environ.pop(name, None)
    if len(walks) > 1:  # one line to compare the walks by
        print("forward kernel median us by walk: " + "; ".join(
            f"{where}: " + ", ".join(f"{walk} {us:.1f}" for walk, us in by_walk.items()) for where, by_walk in forward_us.items()))


def set_configuration(walk, blocks):
    os.environ["DRLOSS_CUDA_FORWARD"] = walk
    os.environ["DRLOSS_CUDA_BLOCKS_PER_GROUP"] = str(blocks) if blocks else ""


def profile_layout(where, x, y, passes, copy_bw, walks, blocks_list, args):
    x = x.detach().requires_grad_(True)

    def forward():
        return drloss_cuda.sigmoid_dr_loss(x, y)

    def forward_backward():
        torch.autograd.grad(drloss_cuda.sigmoid_dr_loss(x, y), x)

    set_configuration("general", 0)
    print(f"{where}: host launch {host_launch_us(forward):.0f} us forward, {host_launch_us(forward_backward):.0f} us forward+backward")
    general_loss = forward().item()
    for walk in walks:
        set_configuration(walk, 0)
        loss = forward().item()
        print(f"  forward walk {walk:<9} loss {loss:.9g} (relative difference to the general walk's {abs(loss - general_loss) / abs(general_loss):.2e})")
    times = {}  # (walk, blocks, kernel) -> [us]
    for _ in range(args.rounds):
        for walk in walks:
            for blocks in blocks_list:
                set_configuration(walk, blocks)
                for name, launches in kernel_times(forward_backward, args.repeats).items():
                    times.setdefault((walk, blocks, short_name(name)), []).extend(launches)
    forward_us = {}
    for (walk, blocks, kind), launches in times.items():
        if kind == "forward" and blocks == blocks_list[0]:
            forward_us[walk] = statistics.median(launches)
        moved = passes.get(kind, 0)
        us = statistics.median(launches)
        rate = f"{moved / (us * 1e-6) / 1e9:7.1f} GB/s ({100 * moved / (us * 1e-6) / copy_bw:5.1f}% of copy)" if moved else ""
        print(f"  walk {walk:<9} blocks/group {blocks or 'auto':>4} {kind:<9} {len(launches):3d} launches  median {us:8.1f} us  {rate}")
    return forward_us


if __name__ == "__main__":
    main()
