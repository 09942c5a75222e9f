"""Largest |grad - float64| / bound over random problems, float32 and float64 logits."""
import sys, math, torch
sys.path.insert(0, sys.argv[1] + "/tests")
from tolerances import dense_float64, DEFAULTS
from test_properties import oracle
import drloss_cuda
from drloss_cuda import sigmoid_dr_loss
print(drloss_cuda.__file__)
g = torch.Generator().manual_seed(int(sys.argv[2]))
worst = {torch.float32: 0.0, torch.float64: 0.0}
for trial in range(int(sys.argv[3])):
    N = int(torch.randint(1, 4, (1,), generator=g)); A = int(torch.randint(1, 400, (1,), generator=g)); C = int(torch.randint(1, 12, (1,), generator=g))
    scale = float(torch.empty(1).uniform_(0.5, 12, generator=g))
    neg_lambda = float(10 ** torch.empty(1).uniform_(-2.5, 0.5, generator=g)); pos_lambda = float(10 ** torch.empty(1).uniform_(-2.5, 0.5, generator=g))
    L = float(torch.empty(1).uniform_(1, 20, generator=g)); margin = float(torch.empty(1).uniform_(-1, 1, generator=g))
    x64 = torch.randn(N, A, C, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, C + 1, (N, A), generator=g); u = torch.rand(N, A, generator=g)
    labels[u < 0.05] = -1
    if trial % 4 == 0: labels[:] = 0  # dense positives
    hp = dict(pos_lambda=pos_lambda, neg_lambda=neg_lambda, L=L, tau=4.0, margin=margin)
    for dt in (torch.float32, torch.float64):
        x = x64.to(dt).requires_grad_()
        sigmoid_dr_loss(x, labels, reduction="sum", **hp).backward()
        ref = dense_float64(x.detach().double(), labels, first_label=0, **hp)
        tol = ref.bound.tolerance(dt)
        _, want = oracle(x.detach().double(), labels, first_label=0, grad_losses=torch.ones(N, dtype=torch.float64), **hp)
        r = ((x.grad.double() - want).abs() / tol.clamp(min=1e-300)).max().item()
        worst[dt] = max(worst[dt], r)
        if r > 1: print(trial, dt, "ratio", round(r,1), "shape", (N, A, C), "scale", round(scale,2), {k: round(v, 4) for k, v in hp.items()}, "dense" if trial % 4 == 0 else "")
print({str(k): round(v, 4) for k, v in worst.items()})
