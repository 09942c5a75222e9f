# A/B of the fused CPU ops between two in-place builds, each in its own process, alternated.
import subprocess, sys
trees = {"head": "/work/main", "exp": sys.argv[1] if len(sys.argv) > 1 else "/work/exp"}
code = r'''
import time, statistics, torch, sys
sys.path.insert(0, "/work/main/benchmarks")
from bench.inputs import make_inputs
import drloss_cuda
from drloss_cuda.ops import forward_op, backward_op
assert drloss_cuda.__file__.startswith(TREE), drloss_cuda.__file__
H = (drloss_cuda.DEFAULT_POS_LAMBDA, drloss_cuda.DEFAULT_NEG_LAMBDA, drloss_cuda.DEFAULT_L, drloss_cuda.DEFAULT_TAU, drloss_cuda.DEFAULT_MARGIN, 0)
for threads, (N, A, C), n in ((1, (2, 4000, 80), 300), (2, (2, 4000, 80), 300), (2, (2, 100000, 80), 25)):
    torch.set_num_threads(threads)
    x, y = make_inputs(N, A, C, torch.float32, "cpu", torch.Generator().manual_seed(0))
    x = x.detach()
    losses, st = forward_op(x, y, *H)[:2]
    go = torch.ones_like(losses)
    def t(f):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
        return min(ts) / x.numel() * 1e9, statistics.median(ts) / x.numel() * 1e9
    f = t(lambda: forward_op(x, y, *H)); b = t(lambda: backward_op(go, x, y, st, *H))
    print(f"{N}x{A}x{C} threads {threads}: forward min {f[0]:.3f} med {f[1]:.3f}  backward min {b[0]:.3f} med {b[1]:.3f} ns/elem")
'''
for rnd in range(int(sys.argv[2]) if len(sys.argv) > 2 else 3):
    for name, tree in trees.items():
        out = subprocess.run([sys.executable, "-c", f"TREE={tree!r}\n" + code], capture_output=True, text=True,
                             env={"PYTHONPATH": tree, "PATH": "/usr/bin:/bin"}, cwd="/tmp")
        for line in (out.stdout + out.stderr).strip().splitlines():
            print(f"round {rnd} {name:5s} {line}", flush=True)
