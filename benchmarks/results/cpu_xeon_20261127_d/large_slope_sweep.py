"""Random problems with huge slopes (upstream gradients up to 1e38, tau up to 1e40): the float32
fused gradient against the tests' float64 evaluation and its per-element bound
(tests/tolerances.py), element by element, leaving out the elements docs/design.md (policy 3)
says may overflow: those whose share of the slope, or that times 1 + s (p - E), passes 3e38.

    PYTHONPATH=. python benchmarks/results/cpu_xeon_20261127_d/large_slope_sweep.py SEED CASES [DEVICE]

DEVICE (default cpu) runs the fused loss there; the float64 evaluation stays on the CPU.
"""
import random, sys, torch
sys.path.insert(0, "tests")
from tolerances import dense_float64
from drloss_cuda import sigmoid_dr_loss as F
torch.set_num_threads(2)
rng = random.Random(int(sys.argv[1]))
device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
bad = cases = 0
for case in range(int(sys.argv[2])):
    N, A, C = rng.randint(1, 3), rng.randint(1, 60), rng.randint(1, 6)
    x = (rng.choice([-40, -20, -5, 0, 5, 20]) + rng.uniform(0.1, 3) * torch.randn(N, A, C)).float()
    y = torch.randint(-1, C + 1, (N, A))
    hyper = dict(neg_lambda=rng.choice([1e-4, 1 / 64, 0.1, 1.0]), pos_lambda=rng.choice([1e-4, 1 / 64, 1.0]),
                 L=10 ** rng.uniform(-3, 8), tau=10 ** rng.uniform(-5, 40), margin=rng.uniform(-3, 3), first_label=0)
    g = torch.tensor([10 ** rng.uniform(-10, 38) * rng.choice([1, -1]) for _ in range(N)], dtype=torch.float32)
    try:
        xa = x.to(device).requires_grad_()
        losses = F(xa, y.to(device), reduction="none", **hyper)
    except ValueError:
        continue
    if not torch.isfinite(losses).all():
        continue  # the loss itself beyond float's range
    (losses * g.to(device)).sum().backward()
    ev = dense_float64(x, y, grad_losses=g, **hyper)
    want, got = ev.grad, xa.grad.double().cpu()
    tol = ev.bound.tolerance(torch.float32)
    # The documented exception: an element whose share of the slope times its factor passes float's max.
    p = x.double().sigmoid()
    pos = (y.unsqueeze(-1) == torch.arange(C)) & (y.unsqueeze(-1) >= 0)
    s = torch.where(pos, -1 / hyper["pos_lambda"], 1 / hyper["neg_lambda"])
    E = torch.where(pos, ev.stats[:, 5].view(N, 1, 1), ev.stats[:, 2].view(N, 1, 1))
    f = (1 + s * (p - E)).abs()
    share_f = ev.bound.value / (p * (1 - p)).clamp_min(1e-300)
    share = share_f / f.clamp_min(1e-300)
    fits = (share < 3e38) & (share_f < 3e38)
    wrong = fits & ~((got - want).abs() <= tol)
    cases += 1
    if wrong.any():
        bad += 1
        i = tuple(wrong.nonzero()[0].tolist())
        share = (ev.bound.value[i] / (x.double()[i].sigmoid() * (1 - x.double()[i].sigmoid()))).item(); print("case", case, "share*factor %.3g" % share, "elem", i, "got", got[i].item(), "want", want[i].item(), "tol", tol[i].item(), "wrong", int(wrong.sum()), "of", int(fits.sum()))
print("cases", cases, "with a wrong element:", bad)
