"""Device time of each fused CUDA kernel, read from torch.profiler, against the memory floor; the
host time to launch a call; and the forward and backward kernels' time over other splits of each
group into blocks (DRLOSS_CUDA_BLOCKS_PER_GROUP). It separates the kernels' own speed from what
the benchmark's per-call times add (launches, allocation, the Python layers).

    python tools/profile_cuda_kernels.py [--sizes 8x201600x80] [--dtypes float32,bfloat16]
                                          [--blocks 0,66,132,264,528] [--repeats 20]

Prints one line per (size, dtype, layout, blocks per group, kernel): launches, median kernel
time, bytes the kernel must move (forward: logits and labels read once; backward: those read and
the gradient written once), achieved GB/s and its fraction of the copy bandwidth measured in
the same run. Blocks 0 is the launcher's own choice.
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
    p.add_argument("--repeats", type=int, default=20, help="profiled calls per point, layout and split (default 20)")
    args = p.parse_args()
    if not torch.cuda.is_available() or not drloss_cuda.build_info()["cuda"]:
        raise SystemExit("profile_cuda_kernels: needs a GPU and drloss_cuda built with its CUDA kernels")
    copy_bw = copy_bandwidth("cuda", 2**30)
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}; copy {copy_bw / 1e9:.1f} GB/s")
    generator = torch.Generator(device="cuda").manual_seed(0)
    for n, a, c in args.sizes:
        for dtype_name in args.dtypes.split(","):
            logits, labels = make_inputs(n, a, c, DTYPES[dtype_name], "cuda", generator)
            passes = pass_bytes(logits, labels)
            for layout, (x, y) in {"per_image": (logits, labels), "pooled": (logits.reshape(-1, c), labels.reshape(-1))}.items():
                x = x.detach().requires_grad_(True)

                def forward():
                    drloss_cuda.sigmoid_dr_loss(x, y)

                def forward_backward():
                    torch.autograd.grad(drloss_cuda.sigmoid_dr_loss(x, y), x)

                where = f"{n}x{a}x{c} {dtype_name} {layout}"
                print(f"{where}: host launch {host_launch_us(forward):.0f} us forward, {host_launch_us(forward_backward):.0f} us forward+backward")
                for blocks in (int(b) for b in args.blocks.split(",")):
                    os.environ["DRLOSS_CUDA_BLOCKS_PER_GROUP"] = str(blocks) if blocks else ""
                    for name, times in sorted(kernel_times(forward_backward, args.repeats).items()):
                        kind = short_name(name)
                        moved = passes.get(kind, 0)
                        us = statistics.median(times)
                        rate = f"{moved / (us * 1e-6) / 1e9:7.1f} GB/s ({100 * moved / (us * 1e-6) / copy_bw:5.1f}% of copy)" if moved else ""
                        print(f"  blocks/group {blocks or 'auto':>4} {kind:<9} {len(times):3d} launches  median {us:8.1f} us  {rate}")
                os.environ.pop("DRLOSS_CUDA_BLOCKS_PER_GROUP", None)


if __name__ == "__main__":
    main()
