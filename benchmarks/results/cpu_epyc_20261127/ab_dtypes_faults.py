"""Like ab_dtypes.py, 25 rounds (5 untimed), with each call's minor page faults (getrusage).

    python ab_dtypes_faults.py float32,bfloat16,float16
"""
import time, torch, drloss_cuda, resource, sys
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
base = torch.randn(2, 100000, 80, generator=g)
y = torch.zeros(2, 100000, dtype=torch.long); y[:, ::100] = 7; y[:, 1::50] = -1
order = [getattr(torch, d) for d in sys.argv[1].split(",")]
xs = {dt: base.to(dt).detach().clone().requires_grad_(True) for dt in order}
res = {dt: [] for dt in xs}
for r in range(25):
    for dt, x in xs.items():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter(); drloss_cuda.sigmoid_dr_loss(x, y).backward(); t = time.perf_counter() - t0; x.grad = None
        res[dt].append((t, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))
for dt, v in res.items():
    v = v[5:]; ts = sorted(a for a, _ in v); fs = sorted(b for _, b in v)
    print(dt, f"median {ts[len(ts)//2]*1e3:.1f} ms, page faults per call median {fs[len(fs)//2]} (min {fs[0]}, max {fs[-1]})")
