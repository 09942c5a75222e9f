"""The command line: flags, the default points of each device, and what --quick changes."""

import argparse
import tempfile
from pathlib import Path

import torch

from .inputs import DTYPES
from .providers import PROVIDERS
from .timing import CUDA_TIMINGS, MODES

RESULTS = Path(__file__).resolve().parents[1] / "results"

# --quick: one small point, eager providers, under 30 s even on a heavily loaded 2-core machine
# (where the peers take 0.3-0.5 s a call). The fused providers get 30 timed calls; the peers,
# 10-100 times slower, stop after 0.75 s once they have 3. The calls of all providers and both
# modes are interleaved, and each provider's check (a forward and backward call just before
# the timing) is its warm-up.
QUICK = dict(repeats=30, warmup=0, max_seconds=0.75, min_repeats=3)
FULL = dict(repeats=20, warmup=3, max_seconds=15.0, min_repeats=5)


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
        return [(2, 3000, 80, "float32")] if device == "cpu" else [(2, 20000, 80, "float32")]
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
    p = argparse.ArgumentParser(description="Speed and memory of the fused sigmoid DR loss against its pure-PyTorch peers (see benchmarks/README.md).")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="auto: cuda when a GPU is available, else cpu")
    p.add_argument("--quick", action="store_true", help="one small size, eager providers unless named, no plots or log; CSV to a fresh temporary folder unless --csv/--out-dir")
    p.add_argument("--providers", help=f"comma-separated subset of: {', '.join(PROVIDERS)} (default: all; --quick: all but the compiled ones)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: forward, forward_backward")
    p.add_argument("--sizes", type=parse_sizes, help="comma-separated NxAxC, e.g. 2x100000x80,2x50000x80 (each measured in every --dtypes)")
    p.add_argument("--dtypes", help="comma-separated logits dtypes: float32, bfloat16, float16, float64 (default float32; with neither --sizes nor --dtypes on CUDA: float32 for every size, bfloat16 and float16 at A=201,600)")
    p.add_argument("--repeats", type=int, help=f"timed calls per provider and mode (default {FULL['repeats']}; --quick {QUICK['repeats']})")
    p.add_argument("--warmup", type=int, help=f"untimed calls before timing (default {FULL['warmup']}; --quick {QUICK['warmup']})")
    p.add_argument("--max-seconds", type=float, help=f"stop timing a provider in a mode after this many seconds once --min-repeats calls are timed (default {FULL['max_seconds']:g}; --quick {QUICK['max_seconds']:g})")
    p.add_argument("--min-repeats", type=int, help=f"timed calls a provider gets in each mode before --max-seconds can stop it (default {FULL['min_repeats']}; --quick {QUICK['min_repeats']})")
    p.add_argument("--cuda-timing", choices=CUDA_TIMINGS, default="queued", help="queued (default): each call's device time with the GPU's queue kept full, as in training; idle: each call's latency on an idle GPU, the host's launch overhead included")
    p.add_argument("--input-sets", type=int, help="input sets the timed calls rotate through (default 4 on CUDA, 2 on CPU)")
    p.add_argument("--budget", type=float, help="seconds: no provider's check starts later than this after the run's start; the providers left are reported as skipped (default: no limit)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads before measuring (default: torch's default)")
    p.add_argument("--seed", type=int, help="seed of the inputs (default: a fresh one, printed)")
    p.add_argument("--compile", dest="compile", action="store_true", default=None, help="include the torch.compile providers (default on, off with --quick)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the torch.compile providers")
    p.add_argument("--out-dir", type=Path, help="folder for the CSV (unless --csv), plots and log (default benchmarks/results; --quick: a fresh temporary folder)")
    p.add_argument("--csv", type=Path, help="CSV the rows are appended to (default OUT_DIR/benchmark.csv)")
    p.add_argument("--plot", dest="plot", action="store_true", default=None, help="draw PNG plots (default on, off with --quick)")
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument("--log", type=Path, help="also write everything printed to this file (default OUT_DIR/benchmark_<device>.log on full runs)")
    p.add_argument("--no-log", dest="log", action="store_const", const=False, help="write no log file")
    return p


def comma_list(text, allowed, what):
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in allowed:
            raise SystemExit(f"benchmark: unknown {what} {n!r} (choose from {', '.join(allowed)})")
    return names


def resolve_args(args):
    """Fills in every default that depends on the device and --quick. The output folder of a
    --quick run without --out-dir/--csv is left to output_paths (a fresh one per run)."""
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
        dtype_names = comma_list(args.dtypes, DTYPES, "dtype") if args.dtypes else ["float32"]
        args.points = [(n, a, c, dt) for n, a, c in sizes for dt in dtype_names]
    args.modes = comma_list(args.modes, MODES, "mode")
    if args.compile is None:
        args.compile = not quick
    if args.providers:
        names = comma_list(args.providers, PROVIDERS, "provider")
        if args.compile is False and not quick:
            names = [n for n in names if not PROVIDERS[n].compiled]
    else:
        names = [n for n, p in PROVIDERS.items() if args.compile or not p.compiled]
    args.providers = names
    timing = QUICK if quick else FULL
    for name, value in timing.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.input_sets is None:
        args.input_sets = 4 if args.device == "cuda" else 2
    if args.repeats < 1 or args.min_repeats < 1 or args.warmup < 0 or args.input_sets < 1:
        raise SystemExit("benchmark: --repeats, --min-repeats and --input-sets must be >= 1, --warmup >= 0")
    if args.budget is not None and args.budget < 0:
        raise SystemExit("benchmark: --budget must be >= 0")
    if args.out_dir is None and not quick:
        args.out_dir = RESULTS
    if args.out_dir is not None:
        args.csv = args.csv or args.out_dir / "benchmark.csv"
    if args.plot is None:
        args.plot = not quick
    if args.log is None and not quick:
        args.log = args.out_dir / f"benchmark_{args.device}.log"
    if args.log is False:
        args.log = None
    return args


def output_paths(args):
    """Gives a --quick run without --out-dir a fresh temporary folder (so that runs from
    different clones or at different times never add to each other's CSV)."""
    if args.out_dir is None:
        args.out_dir = Path(tempfile.mkdtemp(prefix="drloss_cuda_benchmark_quick_")) if args.csv is None else args.csv.parent
    if args.csv is None:
        args.csv = args.out_dir / "benchmark.csv"
    return args
