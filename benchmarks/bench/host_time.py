"""Host cost per call (`benchmark.py --host-time`): at a tiny size, where the kernels take no
time, what one call costs the host, beside one native op (F.binary_cross_entropy_with_logits)
and torchvision's sigmoid focal loss formula (16 native ops) in the same run.

Each call gets fresh input tensors (cloned before the timed loop, so no check can be skipped for
an input it has seen) and non-default hyperparameters, some floats and some 0-dim tensors, as
training code passes them. A figure is the median over --host-reps rounds of the mean time of
--host-calls consecutive calls (forward, or forward then backward), the rounds of every case
interleaved. With --host-baseline DIR, another build of drloss_cuda (a checkout, or any folder
holding a `drloss_cuda` package with its extension built in place) is timed in the same run, by
a child process per round that imports drloss_cuda from DIR, so that both builds see the same
machine; its rows are named `... (baseline)`.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

SIZE = (2, 16, 4)  # N, A, C: small enough that the kernels' time is negligible
NATIVE = "binary_cross_entropy_with_logits"
FUSED_CASES = ("sigmoid_dr_loss", "SigmoidDRLoss")
PEER_CASES = (NATIVE, "focal loss (16 ops)")
MODES = ("forward", "forward_backward")


def hyperparameters(device):
    """Non-default values, floats and 0-dim tensors mixed."""
    return dict(
        pos_lambda=0.9,
        neg_lambda=torch.tensor(0.08, device=device),
        L=5.0,
        tau=torch.tensor(3.5, device=device),
        margin=0.4,
        first_label=1,
    )


def focal_loss(x, t, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss's formula, mean-reduced."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return (alpha_t * loss).mean()


def cases(device, names):
    """{name: loss function of the logits} for the cases in `names`."""
    generator = torch.Generator().manual_seed(0)
    n, a, c = SIZE
    labels = torch.randint(-1, c + 2, (n, a), generator=generator).to(device)
    targets = (torch.rand(n, a, c, generator=generator) > 0.9).float().to(device)
    made = {}
    if any(name in FUSED_CASES for name in names):
        import drloss_cuda

        hyper = hyperparameters(device)
        module = drloss_cuda.SigmoidDRLoss(**hyper)
        made["sigmoid_dr_loss"] = lambda x: drloss_cuda.sigmoid_dr_loss(x, labels, **hyper)
        made["SigmoidDRLoss"] = lambda x: module(x, labels)
    made[NATIVE] = lambda x: F.binary_cross_entropy_with_logits(x, targets)
    made["focal loss (16 ops)"] = lambda x: focal_loss(x, targets)
    return {name: made[name] for name in names}


def mean_call_us(fn, mode, calls, device):
    """Mean wall time of `calls` consecutive calls, each on its own fresh logits."""
    n, a, c = SIZE
    base = torch.randn(n, a, c, generator=torch.Generator().manual_seed(1)).to(device)
    inputs = [base.clone().requires_grad_(mode == "forward_backward") for _ in range(calls)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for x in inputs:
        loss = fn(x)
        if mode == "forward_backward":
            loss.backward()
    sync()
    return (time.perf_counter() - start) / calls * 1e6


def measure_round(names, device, calls, threads):
    """One round: {(name, mode): microseconds per call} for every case in this process."""
    torch.set_num_threads(threads)
    made = cases(device, names)
    out = {}
    for mode in MODES:
        for name, fn in made.items():
            mean_call_us(fn, mode, max(calls // 10, 10), device)  # warm-up
            out[(name, mode)] = mean_call_us(fn, mode, calls, device)
    return out


def baseline_round(folder, device, calls, threads):
    """One round of the fused cases in a child process that imports drloss_cuda from `folder`."""
    folder = os.path.abspath(folder)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "bench.host_time", folder, device, str(calls), str(threads)]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(command, cwd=here, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"host time: the baseline build in {folder} failed:\n{done.stderr[-2000:]}")
    return {(name, mode): value for name, mode, value in json.loads(done.stdout.splitlines()[-1])}


def add_arguments(parser):
    """The flags of this mode, on benchmark.py's parser."""
    group = parser.add_argument_group("host cost per call (--host-time)")
    group.add_argument("--host-time", action="store_true", help=f"time the host cost per call at N, A, C = {SIZE} beside the native op (this mode alone; --device and --threads apply, default 1 thread)")
    group.add_argument("--host-calls", type=int, default=2000, help="calls per round (default 2000)")
    group.add_argument("--host-reps", type=int, default=7, help="rounds; each figure is their median (default 7)")
    group.add_argument("--host-baseline", metavar="DIR", help="a folder holding another build's drloss_cuda package (extension built in place), timed in the same run")


def run(args):
    """The host-time mode of benchmark.py. Returns the exit status."""
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    threads = args.threads or 1
    calls, reps = args.host_calls, args.host_reps
    print(f"# host cost per call: torch {torch.__version__}, {device}, {threads} thread(s), "
          f"N, A, C = {SIZE}, median of {reps} rounds x {calls} calls, fresh logits per call")
    samples = {}
    for _ in range(reps):
        rounds = [measure_round(FUSED_CASES + PEER_CASES, device, calls, threads)]
        if args.host_baseline:
            base = baseline_round(args.host_baseline, device, calls, threads)
            rounds.append({(f"{name} (baseline)", mode): v for (name, mode), v in base.items()})
        for result in rounds:
            for key, value in result.items():
                samples.setdefault(key, []).append(value)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    print(table(medians))
    return 0


def table(medians):
    """Markdown: each case's forward and forward+backward time and its ratio to the native op."""
    native = {mode: medians[(NATIVE, mode)] for mode in MODES}
    names = list(dict.fromkeys(name for name, _ in medians))
    lines = [
        "| call | forward (us) | x native | forward+backward (us) | x native |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        cells = []
        for mode in MODES:
            value = medians[(name, mode)]
            cells += [f"{value:.1f}", f"{value / native[mode]:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # the child process of baseline_round
    import drloss_cuda

    folder, device_arg, calls_arg, threads_arg = sys.argv[1:5]
    where = os.path.dirname(os.path.dirname(os.path.abspath(drloss_cuda.__file__)))
    if where != folder:
        sys.exit(f"host time: drloss_cuda was imported from {where}, not from the baseline {folder}")
    result = measure_round(FUSED_CASES, device_arg, int(calls_arg), int(threads_arg))
    print(json.dumps([[name, mode, value] for (name, mode), value in result.items()]))
