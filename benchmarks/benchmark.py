#!/usr/bin/env python
"""Speed and memory of the fused sigmoid DR loss against its pure-PyTorch peers.

    python benchmarks/benchmark.py --quick          # a few seconds, small sizes, no CSV in the repo
    python benchmarks/benchmark.py                  # the full run on this machine's default device
    python benchmarks/benchmark.py --device cuda    # RetinaNet sizes, float32/bfloat16/float16

Every provider is checked against a float64 computation on the very inputs it is timed on
(loss and gradient) before it is timed, and the timed calls of the providers are interleaved; a provider that fails is not timed and the run exits
with status 1. Rows are appended to a CSV, PNG plots of time and memory against A are drawn,
and a Markdown table (with the speedup of `fused` over every provider, measured in this run) is
printed last. See benchmarks/README.md for what each column means.
"""

import argparse
import csv
import datetime
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Kineto prints a line at each profiler start and stop (the CPU memory figure uses the
# profiler); keep the output readable.
os.environ.setdefault("KINETO_LOG_LEVEL", "99")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # fallback when drloss_cuda is built in place but not installed

import peers  # noqa: E402
from drloss_cuda import reference  # noqa: E402

RESULTS = HERE / "results"
MODES = ("forward", "forward_backward")

# Label mix of the generated inputs (per anchor): 1% positive (class drawn uniformly), 2%
# ignored (label -1), the rest background (label C); first_label = 0. Close to a RetinaNet
# batch after anchor matching, where positives are rare and a thin IoU band is ignored.
POSITIVE_FRACTION = 0.01
IGNORED_FRACTION = 0.02

CSV_COLUMNS = [
    "run_id",
    "timestamp_utc",
    "device",
    "device_name",
    "torch_version",
    "git_commit",
    "threads",
    "load_avg_1m",
    "quick",
    "provider",
    "mode",
    "N",
    "A",
    "C",
    "dtype",
    "layout",
    "input_sets",
    "warmup",
    "repeats",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "min_ms",
    "peak_extra_mib",
    "memory_method",
    "floor_bytes",
    "achieved_gbps",
    "copy_gbps",
    "floor_fraction",
    "loss",
    "loss_rel_err",
    "grad_rel_err",
]

# (loss relative error, gradient error relative to the largest reference gradient entry)
TOLERANCES = {
    torch.float64: (1e-6, 1e-6),
    torch.float32: (1e-4, 1e-3),
    torch.bfloat16: (1e-3, 2e-2),
    torch.float16: (1e-3, 2e-2),
}

# The pure-PyTorch peers accumulate in float32 the way PyTorch does: the official code's softmax
# and sums over 8-16 million entries lose about 1e-3 of the loss at A = 100,000 (measured here:
# 1.4e-3 pooled, 6e-4 per image). They are checked against float64 at these looser tolerances;
# that they compute the exact same loss is tested in float64 by tests/test_benchmark.py.
PEER_TOLERANCES = {
    torch.float64: (1e-6, 1e-6),
    torch.float32: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 5e-2),
    torch.float16: (2e-2, 5e-2),
}

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------------------
# Providers


@dataclass
class Provider:
    name: str
    kind: str  # "dr" (checked against the DR reference) or "focal"
    layout: str  # "per_image": one group per image of [N, A, C]; "pooled": one group of [N*A, C]
    build: object  # () -> fn(logits [N, A, C], labels [N, A]) -> scalar loss
    compiled: bool = False
    description: str = ""

    @property
    def tolerances(self):
        """{dtype: (loss, gradient) tolerance}: the fused kernels' accuracy is part of the
        project's contract; the peers are held to what float32 PyTorch gives."""
        return TOLERANCES if self.name.startswith("fused") else PEER_TOLERANCES


def _fused():
    import drloss_cuda

    return drloss_cuda.sigmoid_dr_loss


def build_fused():
    fused = _fused()
    return lambda logits, labels: fused(logits, labels)


def build_fused_pooled():
    fused = _fused()
    return lambda logits, labels: fused(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def build_official_pooled():
    return lambda logits, labels: reference.sigmoid_dr_loss(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def build_per_image_loop():
    return lambda logits, labels: reference.sigmoid_dr_loss(logits, labels)


def build_dense_masked():
    return lambda logits, labels: peers.dense_masked_dr_loss(logits, labels)


def build_focal():
    return lambda logits, labels: peers.sigmoid_focal_loss(logits, labels)


def _compile(fn):
    # One static graph per shape (dynamic=False: the best case for the peer); a sweep over
    # sizes and dtypes needs more than dynamo's default 8 recompilations.
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))
    return torch.compile(fn, fullgraph=True, dynamic=False)


def build_dense_masked_compiled():
    return _compile(peers.dense_masked_dr_loss)


def build_focal_compiled():
    return _compile(peers.sigmoid_focal_loss)


PROVIDERS = {
    p.name: p
    for p in [
        Provider("fused", "dr", "per_image", build_fused, description="drloss_cuda.sigmoid_dr_loss on [N, A, C]"),
        Provider("fused_pooled", "dr", "pooled", build_fused_pooled, description="drloss_cuda.sigmoid_dr_loss on [N*A, C]"),
        Provider("official_pooled", "dr", "pooled", build_official_pooled, description="reference (official boolean-mask code) on [N*A, C]"),
        Provider("per_image_loop", "dr", "per_image", build_per_image_loop, description="reference on [N, A, C]: a Python loop over images"),
        Provider("dense_masked", "dr", "per_image", build_dense_masked, description="torch.where + logsumexp per image, eager"),
        Provider("dense_masked_compiled", "dr", "per_image", build_dense_masked_compiled, compiled=True, description="dense_masked under torch.compile"),
        Provider("focal", "focal", "per_image", build_focal, description="torchvision-style sigmoid focal loss, eager"),
        Provider("focal_compiled", "focal", "per_image", build_focal_compiled, compiled=True, description="focal under torch.compile"),
    ]
}


# ----------------------------------------------------------------------------------------------
# Inputs and the correctness check


def make_inputs(N, A, C, dtype, device, generator):
    """Logits ~ N(0, 1) in `dtype` (a leaf that requires grad) and int64 labels with the mix
    described at POSITIVE_FRACTION / IGNORED_FRACTION."""
    on = dict(device=device, generator=generator)  # generated where they are used
    logits = torch.randn(N, A, C, dtype=torch.float32, **on).to(dtype)
    u = torch.rand(N, A, **on)
    classes = torch.randint(0, C, (N, A), **on)
    labels = torch.full((N, A), C, dtype=torch.int64, device=device)
    labels = torch.where(u < POSITIVE_FRACTION, classes, labels)
    labels = torch.where((u >= POSITIVE_FRACTION) & (u < POSITIVE_FRACTION + IGNORED_FRACTION), -1, labels)
    return logits.requires_grad_(True), labels


class CheckFailed(AssertionError):
    pass


def reference_loss_and_grad(kind, layout, logits, labels):
    """The float64 value and gradient that a provider of this kind and layout must match."""
    x = logits.detach().double().requires_grad_(True)
    if kind == "focal":
        loss = peers.sigmoid_focal_loss_direct(x, labels)
    elif layout == "pooled":
        loss = reference.sigmoid_dr_loss(x.reshape(-1, x.shape[-1]), labels.reshape(-1))
    else:
        loss = reference.sigmoid_dr_loss(x, labels)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def check_provider(name, fn, logits, labels, expected, tolerances):
    """Run `fn` forward and backward on (logits, labels) and compare with `expected`
    (float64 loss and gradient). Returns (loss, loss_rel_err, grad_rel_err); raises CheckFailed
    when either error is over its tolerance or anything is not finite."""
    ref_loss, ref_grad = expected
    loss = fn(logits, labels)
    if loss.dim() != 0:
        raise CheckFailed(f"{name}: expected a scalar loss, got shape {list(loss.shape)}")
    (grad,) = torch.autograd.grad(loss, logits)
    if grad.shape != ref_grad.shape:
        raise CheckFailed(f"{name}: gradient shape {list(grad.shape)}, expected {list(ref_grad.shape)}")
    loss64 = loss.detach().double()
    loss_err = ((loss64 - ref_loss).abs() / ref_loss.abs().clamp_min(1e-12)).item()
    grad_scale = ref_grad.abs().max().clamp_min(1e-300)
    grad_err = ((grad.double() - ref_grad).abs().max() / grad_scale).item() if grad.numel() else 0.0
    loss_tol, grad_tol = tolerances
    if not (math.isfinite(loss_err) and loss_err <= loss_tol):
        raise CheckFailed(f"{name}: loss {loss64.item():.9g} vs float64 reference {ref_loss.item():.9g} (relative error {loss_err:.3g} > {loss_tol:g})")
    if not (math.isfinite(grad_err) and grad_err <= grad_tol):
        raise CheckFailed(f"{name}: gradient differs from the float64 reference by {grad_err:.3g} of its largest entry (> {grad_tol:g})")
    return loss64.item(), loss_err, grad_err


# ----------------------------------------------------------------------------------------------
# Measuring


def percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def run_once(fn, logits, labels, mode):
    loss = fn(logits, labels)
    if mode == "forward_backward":
        (grad,) = torch.autograd.grad(loss, logits)
        return loss, grad
    return loss, None


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_one_call(fn, logits, labels, mode, device):
    """One call's time in ms. CPU: time.perf_counter around the call. CUDA: a pair of CUDA
    events around the call, the device synchronized before it, so the figure is the call's
    latency on an idle device (launches and any host syncs of the provider included)."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        out = run_once(fn, logits, labels, mode)
        end.record()
        torch.cuda.synchronize()
        elapsed = start.elapsed_time(end)
    else:
        t0 = time.perf_counter()
        out = run_once(fn, logits, labels, mode)
        elapsed = (time.perf_counter() - t0) * 1e3
    del out
    return elapsed


def time_providers(fns, input_sets, mode, device, warmup, repeats, max_seconds, min_repeats=5):
    """Per-call times in ms of every provider in `fns` ({name: fn}), interleaved: after
    `warmup` untimed calls each, the timed calls go round the providers in turn (call i on input
    set i mod K), so that a slow spell of the machine hits all of them alike instead of the one
    measured then. A provider stops after `repeats` calls, or earlier, once it has at least
    `min_repeats` and its timed calls add up to more than `max_seconds`."""
    for name, fn in fns.items():
        for i in range(warmup):
            out = run_once(fn, *input_sets[i % len(input_sets)], mode)
            del out
    synchronize(device)
    times = {name: [] for name in fns}
    spent = {name: 0.0 for name in fns}
    active = list(fns)
    i = 0
    while active:
        logits, labels = input_sets[i % len(input_sets)]
        for name in active:
            elapsed = time_one_call(fns[name], logits, labels, mode, device)
            times[name].append(elapsed)
            spent[name] += elapsed / 1e3
        i += 1
        active = [n for n in active if len(times[n]) < repeats and not (len(times[n]) >= min_repeats and spent[n] > max_seconds)]
    return times


def cpu_peak_bytes(fn, logits, labels, mode):
    """Peak of the bytes allocated during one call (outputs still alive at its end included),
    from the allocation and free events that torch.profiler records with profile_memory=True,
    summed in time order to a running total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = run_once(fn, logits, labels, mode)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    del out
    return peak


def cuda_peak_bytes(fn, logits, labels, mode):
    """torch.cuda.max_memory_allocated over one call, minus what was allocated before it (the
    inputs and anything else alive); outputs alive at its end (the gradient) included."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = run_once(fn, logits, labels, mode)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def copy_bandwidth(device, nbytes, repeats=10):
    """Bytes/s of dst.copy_(src) (counting the read and the write) on `device`: the
    memory-bound ceiling the providers' achieved bytes/s is compared with."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            dst.copy_(src)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    return 2 * n * 4 / percentile(times, 50)


def floor_bytes(mode, logits, labels):
    """Memory-traffic floor of one call: the forward reads logits and labels once; the backward
    reads them once more and writes the gradient (logits' size) once."""
    x = logits.numel() * logits.element_size()
    y = labels.numel() * labels.element_size()
    forward = x + y
    backward = x + y + x
    return forward if mode == "forward" else forward + backward


# ----------------------------------------------------------------------------------------------
# Machine description


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count()


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_model()} ({cpu_cores()} cores)"


def load_average():
    """1-minute load average at the start of the run: other work on the machine skews CPU
    timings, and this says how much there was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return ""


def git_commit():
    """Short hash of HEAD, '+dirty' when tracked files differ from it (benchmarks/results,
    which the run itself writes, left out)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if status else "")


# ----------------------------------------------------------------------------------------------
# Command line


def parse_sizes(text):
    sizes = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.lower().split("x")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"size {item!r} is not NxAxC (e.g. 2x100000x80)")
        try:
            n, a, c = (int(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"size {item!r} is not NxAxC with integers") from None
        if n < 1 or a < 1 or c < 1:
            raise argparse.ArgumentTypeError(f"size {item!r}: N, A and C must be >= 1")
        sizes.append((n, a, c))
    if not sizes:
        raise argparse.ArgumentTypeError("no size given")
    return sizes


def default_points(device, quick):
    """(N, A, C, dtype) points measured when neither --sizes nor --dtypes is given."""
    if quick:
        return [(2, 4000, 80, "float32")] if device == "cpu" else [(2, 20000, 80, "float32")]
    if device == "cpu":
        # The headline case (N=2, A=100,000, C=80) and a sweep over A for the plots.
        return [(2, a, 80, "float32") for a in (10000, 25000, 50000, 100000)]
    # RetinaNet at 800x1333: A = 201,600, C = 80, N = 2, 8, 16, in float32, bfloat16 and
    # float16; a sweep over A at N = 2 in float32 for the plots.
    points = [(2, a, 80, "float32") for a in (25000, 50000, 100000, 201600)]
    points += [(n, 201600, 80, "float32") for n in (8, 16)]
    points += [(n, 201600, 80, dt) for dt in ("bfloat16", "float16") for n in (2, 8, 16)]
    return points


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="auto: cuda when a GPU is available, else cpu")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats, compiled providers skipped unless named; CSV to a temporary folder unless --csv/--out-dir")
    p.add_argument("--providers", help=f"comma-separated subset of: {', '.join(PROVIDERS)} (default: all; --quick: all but the compiled ones)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: forward, forward_backward")
    p.add_argument("--sizes", type=parse_sizes, help="comma-separated NxAxC, e.g. 2x100000x80,2x50000x80 (each measured in every --dtypes)")
    p.add_argument("--dtypes", help="comma-separated logits dtypes: float32, bfloat16, float16, float64 (default float32; with neither --sizes nor --dtypes on CUDA: float32 for every size, bfloat16 and float16 at A=201,600)")
    p.add_argument("--repeats", type=int, help="timed calls per point (default 20; --quick 5)")
    p.add_argument("--warmup", type=int, help="untimed calls before timing (default 3; --quick 1)")
    p.add_argument("--max-seconds", type=float, help="stop timing a point after this many seconds once 5 calls are timed (default 15; --quick 1)")
    p.add_argument("--input-sets", type=int, help="input sets the timed calls rotate through (default 4 on CUDA, 2 on CPU)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads before measuring (default: torch's default)")
    p.add_argument("--seed", type=int, help="seed of the inputs (default: a fresh one, printed)")
    p.add_argument("--compile", dest="compile", action="store_true", default=None, help="include the torch.compile providers (default on, off with --quick)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the torch.compile providers")
    p.add_argument("--out-dir", type=Path, help="folder for the CSV (unless --csv), plots and log (default benchmarks/results; --quick: a temporary folder)")
    p.add_argument("--csv", type=Path, help="CSV the rows are appended to (default OUT_DIR/benchmark.csv)")
    p.add_argument("--plot", dest="plot", action="store_true", default=None, help="draw PNG plots (default on, off with --quick)")
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument("--log", type=Path, help="also write everything printed to this file (default OUT_DIR/benchmark_<device>.log on full runs)")
    return p


def resolve_args(args):
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark: --device cuda but torch.cuda.is_available() is False")
    quick = args.quick
    defaults = default_points(args.device, quick)
    if args.sizes is None and args.dtypes is None:
        args.points = defaults
    else:
        sizes = args.sizes or list(dict.fromkeys((n, a, c) for n, a, c, _ in defaults))
        dtype_names = [d.strip() for d in args.dtypes.split(",") if d.strip()] if args.dtypes else ["float32"]
        for name in dtype_names:
            if name not in DTYPES:
                raise SystemExit(f"benchmark: unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
        args.points = [(n, a, c, dt) for n, a, c in sizes for dt in dtype_names]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in args.modes:
        if m not in MODES:
            raise SystemExit(f"benchmark: unknown mode {m!r} (choose from {', '.join(MODES)})")
    if args.compile is None:
        args.compile = not quick
    if args.providers:
        names = [n.strip() for n in args.providers.split(",") if n.strip()]
        for n in names:
            if n not in PROVIDERS:
                raise SystemExit(f"benchmark: unknown provider {n!r} (choose from {', '.join(PROVIDERS)})")
        if args.compile is False and not quick:
            names = [n for n in names if not PROVIDERS[n].compiled]
    else:
        names = [n for n, p in PROVIDERS.items() if args.compile or not p.compiled]
    args.providers = names
    args.repeats = args.repeats if args.repeats is not None else (5 if quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    args.max_seconds = args.max_seconds if args.max_seconds is not None else (1.0 if quick else 15.0)
    args.input_sets = args.input_sets if args.input_sets is not None else (4 if args.device == "cuda" else 2)
    if args.repeats < 1 or args.warmup < 0 or args.input_sets < 1:
        raise SystemExit("benchmark: --repeats and --input-sets must be >= 1, --warmup >= 0")
    if args.out_dir is None:
        args.out_dir = Path(tempfile.gettempdir()) / "drloss_cuda_benchmark_quick" if quick else RESULTS
    args.csv = args.csv or args.out_dir / "benchmark.csv"
    if args.plot is None:
        args.plot = not quick
    if args.log is None and not quick:
        args.log = args.out_dir / f"benchmark_{args.device}.log"
    return args


class Tee:
    def __init__(self, stream, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream, self.file = stream, open(path, "w")

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def close(self):
        self.file.close()


# ----------------------------------------------------------------------------------------------
# Output


def append_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    exists = path.exists() and path.stat().st_size > 0
    if exists:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
        if header != CSV_COLUMNS:
            # Written by a version with other columns: keep it beside, start a new file.
            kept = path.with_name(f"{path.stem}.columns-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}{path.suffix}")
            path.rename(kept)
            print(f"{path} had other columns than this version writes: moved to {kept}")
            exists = False
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if not exists:
            writer.writeheader()
        for row in rows:
            writer.writerow(row)


def fmt(value, digits=3):
    if value == "" or value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows):
    """One line per row, with `fused speedup` = this provider's median / fused's median on the
    same mode, size and dtype in this run; rows grouped by size, dtype and mode."""
    order = {name: i for i, name in enumerate(PROVIDERS)}
    modes = {m: i for i, m in enumerate(MODES)}
    rows = sorted(rows, key=lambda r: (r["N"], r["A"], r["C"], r["dtype"], modes[r["mode"]], order.get(r["provider"], len(order))))
    fused = {(r["mode"], r["N"], r["A"], r["C"], r["dtype"]): r["median_ms"] for r in rows if r["provider"] == "fused"}
    head = "| mode | N | A | C | dtype | provider | median ms | p20 ms | p80 ms | peak extra MiB | GB/s | floor % | fused speedup |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        key = (r["mode"], r["N"], r["A"], r["C"], r["dtype"])
        speedup = f"{r['median_ms'] / fused[key]:.2f}x" if key in fused else "-"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["mode"],
                    str(r["N"]),
                    str(r["A"]),
                    str(r["C"]),
                    r["dtype"],
                    r["provider"],
                    fmt(r["median_ms"]),
                    fmt(r["p20_ms"]),
                    fmt(r["p80_ms"]),
                    fmt(r["peak_extra_mib"]),
                    fmt(r["achieved_gbps"]),
                    fmt(100 * r["floor_fraction"], 2),
                    speedup,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def headline(rows, mode="forward_backward"):
    """Sentences with fused's speedup over the pooled official code and the compiled dense peer."""
    out = []
    by_key = {}
    for r in rows:
        by_key.setdefault((r["mode"], r["N"], r["A"], r["C"], r["dtype"]), {})[r["provider"]] = r["median_ms"]
    for (m, n, a, c, dt), times in by_key.items():
        if m != mode or "fused" not in times:
            continue
        parts = [f"{p} {times[p] / times['fused']:.1f}x" for p in times if p != "fused"]
        if "fused_pooled" in times and "official_pooled" in times:
            parts.append(f"(pooled vs pooled: fused_pooled over official_pooled {times['official_pooled'] / times['fused_pooled']:.1f}x)")
        out.append(f"- {m} N={n} A={a} C={c} {dt}: fused {times['fused']:.3g} ms; speedup of fused over " + ", ".join(parts))
    return out


# ----------------------------------------------------------------------------------------------
# Main


def main(argv=None):
    args = resolve_args(build_parser().parse_args(argv))
    tee = None
    if args.log is not None:
        tee = Tee(sys.stdout, args.log)
        sys.stdout = tee
    try:
        return _run(args)
    finally:
        if tee is not None:
            sys.stdout = tee.stream
            tee.close()


def _run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    now = datetime.datetime.now(datetime.timezone.utc)
    run_id = now.strftime("%Y%m%dT%H%M%SZ")
    common = {
        "run_id": run_id,
        "timestamp_utc": now.isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "threads": torch.get_num_threads(),
        "load_avg_1m": load_average(),
        "quick": int(bool(args.quick)),
    }
    fused_unavailable = None
    if any(n.startswith("fused") for n in args.providers):
        try:
            import drloss_cuda

            info = drloss_cuda.build_info()
            if device == "cuda" and not info.get("cuda"):
                fused_unavailable = "drloss_cuda was built without its CUDA kernels"
        except ImportError as error:
            fused_unavailable = f"drloss_cuda._C could not be loaded ({error})"
    print(f"# drloss_cuda benchmark, run {run_id}")
    print(f"device: {device} = {common['device_name']}; torch {torch.__version__}; threads {common['threads']}; commit {common['git_commit']}; python {platform.python_version()}; load average {common['load_avg_1m']}")
    print(f"providers: {', '.join(args.providers)}; modes: {', '.join(args.modes)}")
    print(f"points (NxAxC dtype): {', '.join(f'{n}x{a}x{c} {dt}' for n, a, c, dt in args.points)}; warmup {args.warmup}, repeats {args.repeats} (max {args.max_seconds:g} s a point), {args.input_sets} input sets, seed {seed}")
    print(f"labels: {POSITIVE_FRACTION:.0%} positive, {IGNORED_FRACTION:.0%} ignored, the rest background; logits ~ N(0, 1)")
    memory_method = "cuda.max_memory_allocated" if device == "cuda" else "profiler_alloc_events"
    copy_bytes = (1 << 30) if device == "cuda" else (256 << 20)
    copy_bw = copy_bandwidth(device, copy_bytes)
    print(f"copy bandwidth ({copy_bytes >> 20} MiB device-to-device, read + write): {copy_bw / 1e9:.1f} GB/s")
    print()

    generator = torch.Generator(device=device).manual_seed(seed)
    built = {}
    rows = []
    failures = []
    skipped = []
    for N, A, C, dtype_name in args.points:
        dtype = DTYPES[dtype_name]
        input_sets = [make_inputs(N, A, C, dtype, device, generator) for _ in range(args.input_sets)]
        expected = {}
        passed = {}
        for name in args.providers:
            provider = PROVIDERS[name]
            point = f"{name} N={N} A={A} C={C} {dtype_name}"
            if name.startswith("fused") and fused_unavailable:
                if (name, fused_unavailable) not in skipped:
                    skipped.append((name, fused_unavailable))
                print(f"{point}: skipped ({fused_unavailable})")
                continue
            try:
                if name not in built:
                    built[name] = provider.build()
                fn = built[name]
                key = (provider.kind, provider.layout)
                if key not in expected:
                    expected[key] = reference_loss_and_grad(provider.kind, provider.layout, *input_sets[0])
                t0 = time.perf_counter()
                loss, loss_err, grad_err = check_provider(point, fn, *input_sets[0], expected[key], provider.tolerances[dtype])
                first = time.perf_counter() - t0
            except CheckFailed as error:
                failures.append(str(error))
                print(f"{point}: CHECK FAILED, not timed: {error}")
                continue
            except Exception as error:  # a provider that cannot run here is reported, not fatal
                failures.append(f"{point}: {type(error).__name__}: {error}")
                print(f"{point}: ERROR, not timed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
                continue
            print(f"{point}: check passed (loss {loss:.6g}, loss rel err {loss_err:.2g}, grad err {grad_err:.2g}; first call {first:.2f} s)")
            passed[name] = (fn, loss, loss_err, grad_err)
        for mode in args.modes:
            times = time_providers({n: v[0] for n, v in passed.items()}, input_sets, mode, device, args.warmup, args.repeats, args.max_seconds)
            for name, (fn, loss, loss_err, grad_err) in passed.items():
                peak = (cuda_peak_bytes if device == "cuda" else cpu_peak_bytes)(fn, *input_sets[0], mode)
                median = percentile(times[name], 50)
                fb = floor_bytes(mode, *input_sets[0])
                achieved = fb / (median / 1e3)
                row = dict(common)
                row.update(
                    provider=name,
                    mode=mode,
                    N=N,
                    A=A,
                    C=C,
                    dtype=dtype_name,
                    layout=PROVIDERS[name].layout,
                    input_sets=len(input_sets),
                    warmup=args.warmup,
                    repeats=len(times[name]),
                    median_ms=median,
                    p20_ms=percentile(times[name], 20),
                    p80_ms=percentile(times[name], 80),
                    min_ms=min(times[name]),
                    peak_extra_mib=peak / 2**20,
                    memory_method=memory_method,
                    floor_bytes=fb,
                    achieved_gbps=achieved / 1e9,
                    copy_gbps=copy_bw / 1e9,
                    floor_fraction=achieved / copy_bw,
                    loss=loss,
                    loss_rel_err=loss_err,
                    grad_rel_err=grad_err,
                )
                rows.append(row)
                print(
                    f"{name:>22} N={N} A={A} C={C} {dtype_name} {mode:<16} median {median:9.3f} ms  (p20 {row['p20_ms']:.3f}, p80 {row['p80_ms']:.3f}, {len(times[name])} runs)"
                    f"  peak extra {row['peak_extra_mib']:8.1f} MiB  {row['achieved_gbps']:6.1f} GB/s ({100 * row['floor_fraction']:.1f}% of copy)"
                )
        del input_sets, expected
        if device == "cuda":
            torch.cuda.empty_cache()

    if rows:
        append_csv(args.csv, rows)
        print(f"\n{len(rows)} rows appended to {args.csv}")
        if args.plot:
            import plot

            for path in plot.plot_rows(rows, args.out_dir):
                print(f"plot: {path}")
    for name, reason in skipped:
        print(f"skipped {name}: {reason}")
    for failure in failures:
        print(f"FAILED: {failure}")
    lines = headline(rows)
    if lines:
        print("\nfused speedup, forward+backward (median time of the peer / median time of fused):")
        print("\n".join(lines))
    print(f"load average at the end: {load_average()} (at the start: {common['load_avg_1m']})")
    print()
    print(markdown_table(rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
