"""Loss and gradient of the fused CUDA op on fixed random problems, saved for a bitwise
comparison between builds: python3 bitwise.py OUT.pt (the build on PYTHONPATH)."""
import sys
import torch
from drloss_cuda import sigmoid_dr_loss

gen = torch.Generator().manual_seed(20261127)
results = {}
shapes = [(2, 1000, 80), (3, 777, 7), (1, 5000, 1), (4, 333, 3), (2, 50001, 80), (1, 100, 1000), (8, 20160, 80), (0, 161280, 80)]  # N = 0: one pooled [M, C] group
hypers = [dict(), dict(neg_lambda=1e-3, pos_lambda=1e-3)]  # fixed shifts; running max
for si, (N, A, C) in enumerate(shapes):
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for ldtype in (torch.int64, torch.int32):
            for hi, hyper in enumerate(hypers):
                for offset in (0, 1):  # 1: the logits start off their 16-byte alignment
                    lead = (N, A) if N else (A,)
                    flat = (3 * torch.randn(A * C * max(N, 1) + offset, generator=gen)).to(dtype)
                    x = flat[offset:].view(*lead, C).cuda().requires_grad_()
                    y = torch.randint(-1, C + 1, lead, generator=gen).to(ldtype).cuda()
                    g = torch.rand(max(N, 1), generator=gen).cuda()
                    loss = sigmoid_dr_loss(x, y, reduction="none", **hyper)
                    (loss.reshape(-1) * g.to(loss.dtype)).sum().backward()
                    key = f"{N}x{A}x{C}/{dtype}/{ldtype}/h{hi}/o{offset}"
                    results[key] = (loss.detach().cpu(), x.grad.cpu())
torch.save(results, sys.argv[1])
print(len(results), "problems saved")
