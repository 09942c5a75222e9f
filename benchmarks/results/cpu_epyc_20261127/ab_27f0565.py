"""Times drloss_cuda.sigmoid_dr_loss from the tree given as argv[1] (built in place), labelled
argv[2]: forward, and autograd forward+backward with a fresh gradient each call, at 2x4000x80
and at the headline 2x100000x80 (float32, 2 threads; medians and p20-p80 of the timed calls).

    git worktree add /tmp/old27 27f0565 && (cd /tmp/old27 && DRLOSS_CPU_ONLY=1 python setup.py build_ext --inplace)
    for i in 1 2; do python ab_27f0565.py /tmp/old27 old; python ab_27f0565.py /work/main new; done
"""
import sys, time, statistics
sys.path.insert(0, sys.argv[1])
import torch
import drloss_cuda
torch.set_num_threads(2)
torch.manual_seed(0)
def case(N, A, C, reps):
    x = torch.randn(N, A, C)
    y = torch.randint(0, 100, (N, A))
    labels = torch.where(y < 1, torch.randint(1, C + 1, (N, A)), torch.zeros_like(y))
    labels = torch.where(y >= 98, torch.full_like(y, -1), labels)
    xg = x.clone().requires_grad_(True)
    out = {}
    for mode in ("forward", "forward_backward"):
        ts = []
        for i in range(reps + 3):
            t0 = time.perf_counter()
            if mode == "forward":
                drloss_cuda.sigmoid_dr_loss(x, labels)
            else:
                drloss_cuda.sigmoid_dr_loss(xg, labels).backward()
                xg.grad = None
            ts.append(time.perf_counter() - t0)
        ts = sorted(ts[3:])
        out[mode] = (ts[len(ts) // 2] * 1e3, ts[len(ts) // 5] * 1e3, ts[len(ts) * 4 // 5] * 1e3)
    return out
for (N, A, C, reps) in [(2, 4000, 80, 200), (2, 100000, 80, 30)]:
    r = case(N, A, C, reps)
    print(f"{sys.argv[2]:>6} {N}x{A}x{C} " + "  ".join(f"{m} {v[0]:.3f} ms ({v[1]:.3f}-{v[2]:.3f})" for m, v in r.items()), flush=True)
