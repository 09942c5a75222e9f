import torch, drloss_cuda, sys
sys.path.insert(0, "benchmarks")
from bench.inputs import DTYPES, make_inputs
g = torch.Generator(device="cuda").manual_seed(0)
for dt in ("float32", "bfloat16"):
    x, y = make_inputs(8, 201600, 80, DTYPES[dt], "cuda", g)
    x.requires_grad_(True)
    torch.autograd.grad(drloss_cuda.sigmoid_dr_loss(x, y), x)
torch.cuda.synchronize()
print("ncu case done")
