"""The fused CPU kernels' ns per element at sizes that fit the caches and at the headline size.

If the forward waited on memory, the cache-resident sizes would take less per element. The
sizes are timed in turn, round after round, so that a change of the host's pace hits all alike.
Run from the repository root with the extension built:
    python benchmarks/results/cpu_xeon_20261127/forward_cache_vs_dram.py
Each figure: ns per element (wall, all threads), the min and the median over the rounds of each
round's mean over a batch of calls. The backward writes a fresh output on every call.
"""

import sys
import time

import torch

sys.path.insert(0, "benchmarks")

from drloss_cuda import _common  # noqa: E402
from drloss_cuda.ops import backward_op, forward_op  # noqa: E402
from bench.inputs import make_inputs  # noqa: E402

ROUNDS = 15
SIZES = ((2, 2000, 80), (2, 4000, 80), (2, 8000, 80), (2, 100000, 80))


def main():
    c = _common
    hyper = c.hyperparameters(c.DEFAULT_POS_LAMBDA, c.DEFAULT_NEG_LAMBDA, c.DEFAULT_L, c.DEFAULT_TAU, c.DEFAULT_MARGIN, 0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {ROUNDS} rounds")
    calls = {}
    for N, A, C in SIZES:
        logits, labels = make_inputs(N, A, C, torch.float32, "cpu", torch.Generator().manual_seed(0))
        x = logits.detach().clone()
        _, stats = forward_op(x, labels, *hyper)
        g, out = torch.ones(N), torch.empty_like(x)
        calls[A] = {
            "forward": lambda x=x, y=labels: forward_op(x, y, *hyper),
            "backward": lambda x=x, y=labels, s=stats, g=g: backward_op(g, x, y, s, *hyper),
            "copy into a used output": lambda x=x, o=out: o.copy_(x),
            "elements": x.numel(),
        }
    times = {(A, k): [] for A in calls for k in calls[A] if k != "elements"}
    for _ in range(ROUNDS):
        for A, fns in calls.items():
            n = fns["elements"]
            reps = max(1, 100_000_000 // (n * 40))
            for key, fn in fns.items():
                if key == "elements":
                    continue
                fn()
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                times[(A, key)].append((time.perf_counter() - t0) / reps / n * 1e9)
    for A, fns in calls.items():
        parts = []
        for key in fns:
            if key == "elements":
                continue
            t = sorted(times[(A, key)])
            parts.append(f"{key} {t[0]:.3f} / {t[len(t) // 2]:.3f}")
        print(f"A={A:>6} ({fns['elements'] * 4 / 2**20:5.1f} MiB of logits), min / median: " + " | ".join(parts))


if __name__ == "__main__":
    main()
