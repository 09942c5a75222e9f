"""The command line: flags, the default points of each device, and what --quick changes."""

import argparse
import tempfile
from pathlib import Path

import torch

from . import host_time
from .inputs import DTYPES
from .providers import PROVIDERS
from .timing import CUDA_TIMINGS, MODES

# The committed CSV, written by --record only.
RECORD_CSV = Path(__file__).resolve().parents[1] / "results" / "benchmark.csv"
OUT_DIR_NAME = "drloss_cuda_benchmark"


def default_out_dir():
    """Where a run's CSV and plots go unless --out-dir says: one folder under the system's
    temporary directory, reused by every run, so that runs leave neither the checkout nor a
    trail of folders behind."""
    return Path(tempfile.gettempdir()) / OUT_DIR_NAME


# --quick: one small point, eager providers, under a minute even on a heavily loaded 2-core machine
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
    """The command line, in three groups (what to measure, how to time it, where results go);
    a new mode adds its flags with an add_*_arguments function of its own."""
    p = argparse.ArgumentParser(
        description="Speed and memory of the fused sigmoid DR loss against its pure-PyTorch peers, side by "
        "side in one run. Prints one table; writes its rows and plots to --out-dir, outside the checkout "
        "unless told otherwise.",
        epilog=f"Results go to {default_out_dir()} unless --out-dir names another folder (the CSV there is "
        "appended to, run after run); only --record writes into the checkout. benchmarks/README.md "
        "explains every column.",
    )
    add_measure_arguments(p.add_argument_group("what to measure"))
    add_timing_arguments(p.add_argument_group("timing"))
    add_output_arguments(p.add_argument_group("output"))
    host_time.add_arguments(p)
    return p


def add_measure_arguments(g):
    g.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="where to run (default auto: cuda when a GPU is available, else cpu)")
    g.add_argument("--quick", action="store_true", help="the demo: one small size (2x3000x80 on the CPU, 2x20000x80 on CUDA), eager providers unless named, short timing, no plots")
    g.add_argument("--providers", metavar="NAMES", help=f"comma-separated subset of: {', '.join(PROVIDERS)} (default: all but the named-only variants; --quick: all but those and the compiled ones)")
    g.add_argument("--modes", default=",".join(MODES), metavar="MODES", help="comma-separated subset of: forward (the loss alone), forward_backward (the loss and its gradient); default both")
    g.add_argument("--sizes", type=parse_sizes, metavar="NxAxC[,...]", help="comma-separated NxAxC (N images, A anchors per image, C classes), e.g. 2x100000x80,2x50000x80; each is measured in every --dtypes (default: the device's sizes, see benchmarks/README.md)")
    g.add_argument("--dtypes", metavar="DTYPES", help="comma-separated logits dtypes from: float32, bfloat16, float16, float64 (default float32; with neither --sizes nor --dtypes on CUDA, bfloat16 and float16 are added at A=201600)")
    g.add_argument("--compile", dest="compile", action="store_true", default=None, help="include the torch.compile providers (default on, off with --quick)")
    g.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the torch.compile providers")
    g.add_argument("--threads", type=int, metavar="T", help="torch.set_num_threads before measuring (default: torch's default)")
    g.add_argument("--seed", type=int, metavar="S", help="seed of the inputs (default: a fresh one, printed)")


def add_timing_arguments(g):
    g.add_argument("--repeats", type=int, metavar="R", help=f"timed calls per provider and mode (default {FULL['repeats']}; --quick {QUICK['repeats']})")
    g.add_argument("--warmup", type=int, metavar="W", help=f"untimed calls before timing (default {FULL['warmup']}; --quick {QUICK['warmup']})")
    g.add_argument("--max-seconds", type=float, metavar="S", help=f"stop timing a provider in a mode after this many seconds once --min-repeats calls are timed (default {FULL['max_seconds']:g}; --quick {QUICK['max_seconds']:g})")
    g.add_argument("--min-repeats", type=int, metavar="M", help=f"timed calls a provider gets in each mode before --max-seconds can stop it (default {FULL['min_repeats']}; --quick {QUICK['min_repeats']})")
    g.add_argument("--input-sets", type=int, metavar="K", help="input sets the timed calls rotate through (default 4 on CUDA, 2 on the CPU); each timed call also starts with the caches flushed")
    g.add_argument("--cuda-timing", choices=CUDA_TIMINGS, default="queued", help="CUDA only. queued (default): each call's GPU time with the GPU's queue kept full, as in training; idle: each call's latency on an idle GPU, the host's launch overhead included")
    g.add_argument("--budget", type=float, metavar="S", help="seconds: no provider's check starts later than this after the run's start; the providers left are reported as skipped (default: no limit)")


def add_output_arguments(g):
    g.add_argument("--out-dir", type=Path, metavar="DIR", help=f"folder for benchmark.csv (rows appended) and the plots (default {default_out_dir()}, the same folder for every run)")
    g.add_argument("--record", nargs="?", type=Path, const=RECORD_CSV, metavar="CSV", help=f"also append the rows to CSV, by default the committed {RECORD_CSV.relative_to(RECORD_CSV.parents[2])}: the one way a run writes into the checkout, on purpose")
    g.add_argument("--plot", dest="plot", action="store_true", default=None, help="draw PNG plots of time and memory against A into --out-dir (default on, off with --quick)")
    g.add_argument("--no-plot", dest="plot", action="store_false", help="draw no plots")
    g.add_argument("--log", type=Path, metavar="PATH", help="also write everything printed to this file (default: none)")


def comma_list(text, allowed, what):
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in allowed:
            raise SystemExit(f"benchmark: unknown {what} {n!r} (choose from {', '.join(allowed)})")
    return names


def resolve_args(args):
    """Fills in every default that depends on the device and --quick."""
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
        names = [n for n, p in PROVIDERS.items() if (args.compile or not p.compiled) and not p.named_only]
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
    if args.out_dir is None:
        args.out_dir = default_out_dir()
    args.csv = args.out_dir / "benchmark.csv"
    if args.plot is None:
        args.plot = not quick
    return args
