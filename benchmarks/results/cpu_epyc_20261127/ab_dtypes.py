"""Autograd forward+backward at the headline size (2x100000x80, 2 threads), float32, bfloat16 and
float16 logits in alternation, each a leaf with a fresh gradient every call: medians and p20-p80
of 40 rounds after 5 untimed.

    python ab_dtypes.py
"""
import time, torch, drloss_cuda
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
base = torch.randn(2, 100000, 80, generator=g)
y = torch.zeros(2, 100000, dtype=torch.long); y[:, ::100] = 7; y[:, 1::50] = -1
xs = {dt: base.to(dt).detach().clone().requires_grad_(True) for dt in (torch.float32, torch.bfloat16, torch.float16)}
times = {dt: [] for dt in xs}
for r in range(45):
    for dt, x in xs.items():
        t0 = time.perf_counter(); drloss_cuda.sigmoid_dr_loss(x, y).backward(); times[dt].append(time.perf_counter() - t0); x.grad = None
for dt, t in times.items():
    t = sorted(t[5:]); print(dt, f"forward+backward median {t[len(t)//2]*1e3:.2f} ms  p20 {t[len(t)//5]*1e3:.2f}  p80 {t[len(t)*4//5]*1e3:.2f}")
