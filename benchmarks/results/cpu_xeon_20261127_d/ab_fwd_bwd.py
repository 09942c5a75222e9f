"""Forward and forward+backward (autograd, as the benchmark times them) of the fused loss at the
headline size, two threads, from the checkout given as argv[1]; argv[2] calls per mode. Run with
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ raised, so that the gradient reuses freed heap
as in the full benchmark's runs (0 page faults per call there), not fresh pages:

    export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
    PYTHONPATH=<tree> python ab_fwd_bwd.py <tree> 60
"""
import statistics
import sys
import time

import torch

sys.path.insert(0, sys.argv[1] + "/benchmarks")
from bench.inputs import make_inputs  # noqa: E402

import drloss_cuda  # noqa: E402

torch.set_num_threads(2)
logits, labels = make_inputs(2, 100000, 80, torch.float32, "cpu", torch.Generator().manual_seed(0))


def forward_backward():
    loss = drloss_cuda.sigmoid_dr_loss(logits, labels)
    return torch.autograd.grad(loss, logits)[0]


def forward():
    with torch.no_grad():
        return drloss_cuda.sigmoid_dr_loss(logits, labels)


for f in (forward, forward_backward, forward_backward):
    f()
out = []
for name, f in (("fwd", forward), ("fwd+bwd", forward_backward)):
    ms = []
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter()
        r = f()
        ms.append((time.perf_counter() - t0) * 1e3)
        del r
    ms.sort()
    q = lambda a: ms[int(a * (len(ms) - 1))]  # noqa: E731
    out.append(f"{name} {statistics.median(ms):.2f} ({q(0.2):.2f}-{q(0.8):.2f})")
print(" ".join(out))
