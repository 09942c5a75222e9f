"""One run: the header, then for every point the check of each provider against float64, the
interleaved timing of those that passed, their peak memory, and the rows; the report last."""

import datetime
import os
import platform
import time
from dataclasses import dataclass, field

import torch

from . import floor, machine, memory, pace
from .checks import CheckFailed, check_provider, reference_loss_and_grad
from .csv_rows import append_csv
from .inputs import DTYPES, IGNORED_FRACTION, POSITIVE_FRACTION, make_inputs
from .providers import PROVIDERS
from .table import column_legend, floor_drift, markdown_table, noise_warnings
from .timing import CacheFlush, percentile, time_interleaved, timing_label


def run(args):
    """Measures every point of `args` (resolved by options). Returns the exit status: 1 when a
    provider failed its check or raised, else 0."""
    started = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    common = run_identity(args)
    kernels_load = fused_unavailable(("fused",), args.device) is None
    start = MachineState.measure(args.device, kernels_load)
    common["arithmetic_pace_ns"] = start.pace_ns
    flush = CacheFlush(args.device)
    print_header(args, common, seed, start, flush)

    generator = torch.Generator(device=args.device).manual_seed(seed)
    outcome = Outcome(unavailable=fused_unavailable(args.providers, args.device))
    deadline = None if args.budget is None else started + args.budget
    for N, A, C, dtype_name in args.points:
        point = (N, A, C, dtype_name)
        input_sets = [make_inputs(N, A, C, DTYPES[dtype_name], args.device, generator) for _ in range(args.input_sets)]
        passed = check_point(args, point, input_sets[0], outcome, deadline)
        rows = time_point(args, point, input_sets, passed, outcome.built, common, start.copy_bw, flush)
        if rows:  # written point by point: a run stopped later keeps what it measured
            for path in csv_paths(args):
                append_csv(path, rows)
            outcome.rows += rows
        del input_sets
        if args.device == "cuda":
            torch.cuda.empty_cache()

    report(args, common, outcome, start)
    return 1 if outcome.failures else 0


def csv_paths(args):
    """The CSVs a run appends its rows to: the one in --out-dir, and the --record one if asked."""
    return [args.csv] + ([args.record] if args.record and args.record != args.csv else [])


@dataclass
class MachineState:
    """What the machine could do at one moment: its load, its copy bandwidth (the floor's
    yardstick) and, on the CPU, its arithmetic pace (pace.py). Measured at a run's start and
    end: figures taken while these changed are not comparable with each other."""

    load: object
    copy_bytes: int
    copy_bw: float
    pace_ns: float = None

    @classmethod
    def measure(cls, device, kernels_load):
        nbytes = floor.copy_bytes(device)
        copy_bw = floor.copy_bandwidth(device, nbytes)
        pace_ns = pace.arithmetic_pace(device) if kernels_load else None
        return cls(machine.load_average(), nbytes, copy_bw, pace_ns)


@dataclass
class Outcome:
    """What a run has built, measured, skipped and seen fail so far."""

    unavailable: str = None  # why the fused providers cannot run here
    built: dict = field(default_factory=dict)  # provider name -> fn
    rows: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (provider name, reason)

    def skip(self, name, reason, where):
        if (name, reason) not in self.skipped:
            self.skipped.append((name, reason))
        print(f"{where}: skipped ({reason})")


TIMING_WORDS = {
    "host": "wall clock around each call",
    "cuda_queued": "CUDA events around each call, the GPU's queue kept full (GPU time per call, as in training)",
    "cuda_idle": "CUDA events around each call on an idle GPU (latency, host launch overhead included)",
}


def print_header(args, common, seed, start, flush):
    """What is measured, on what, and the machine's state at the start."""
    what = "GPU" if args.device == "cuda" else "CPU"
    print(f"# drloss_cuda benchmark, run {common['run_id']}")
    print(f"{what}: {common['device_name']}; {common['threads']} threads; torch {torch.__version__}; python {platform.python_version()}; commit {common['git_commit']}; load average {common['load_avg_1m']}")
    budget = f"; budget {args.budget:g} s" if args.budget is not None else ""
    print(f"providers: {', '.join(args.providers)}; modes: {', '.join(args.modes)}")
    print(f"sizes (NxAxC dtype): {', '.join(f'{n}x{a}x{c} {dt}' for n, a, c, dt in args.points)}; seed {seed}")
    print(f"timing: {TIMING_WORDS[common['timing']]}; warmup {args.warmup}, then {args.repeats} calls (at least {args.min_repeats}, at most {args.max_seconds:g} s a provider and mode), rotating through {args.input_sets} input sets; before each call the caches are flushed (a {flush.nbytes >> 20} MiB write, not timed){budget}")
    print(f"inputs: logits ~ N(0, 1); labels {POSITIVE_FRACTION:.0%} positive, {IGNORED_FRACTION:.0%} ignored, the rest background")
    print(floor.describe_copy(args.device, start.copy_bytes, start.copy_bw))
    if start.pace_ns is not None:
        print(f"arithmetic pace: {pace.describe(start.pace_ns)}")
    print()


def check_point(args, point, check_inputs, outcome, deadline):
    """Builds (once a run) and checks every provider on the point's first input set. Returns
    {name: (loss, loss_rel_err, grad_rel_err)} of those that passed; the others are recorded
    in `outcome` as failed or skipped."""
    N, A, C, dtype_name = point
    expected, passed = {}, {}
    for name in args.providers:
        provider = PROVIDERS[name]
        where = f"{name} N={N} A={A} C={C} {dtype_name}"
        if name.startswith("fused") and outcome.unavailable:
            outcome.skip(name, outcome.unavailable, where)
            continue
        if deadline is not None and time.monotonic() > deadline:
            outcome.skip(name, f"over the run's budget of {args.budget:g} s", where)
            continue
        try:
            if name not in outcome.built:
                outcome.built[name] = provider.build()
            key = (provider.kind, provider.layout)
            if key not in expected:
                expected[key] = reference_loss_and_grad(provider.kind, provider.layout, *check_inputs)
            t0 = time.perf_counter()
            passed[name] = check_provider(where, outcome.built[name], *check_inputs, expected[key], provider.tolerances[DTYPES[dtype_name]])
            first = time.perf_counter() - t0
        except CheckFailed as error:
            outcome.failures.append(str(error))
            print(f"{where}: CHECK FAILED, not timed: {error}")
            continue
        except Exception as error:  # a provider that cannot run here is reported, not fatal
            outcome.failures.append(f"{where}: {type(error).__name__}: {error}")
            print(f"{where}: ERROR, not timed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            continue
        loss, loss_err, grad_err = passed[name]
        print(f"{where}: check passed (loss {loss:.6g}, loss rel err {loss_err:.2g}, grad err {grad_err:.2g}; first call {first:.2f} s)")
    return passed


def time_point(args, point, input_sets, passed, built, common, copy_bw, flush):
    """Times the providers that passed (interleaved), measures their peak memory, and returns
    the point's rows; `common` holds the columns the run's rows share."""
    N, A, C, dtype_name = point
    fns = {name: built[name] for name in passed}
    if not fns:
        return []
    faults = {}
    times = time_interleaved(fns, args.modes, input_sets, args.device, args.warmup, args.repeats, args.max_seconds, args.min_repeats, args.cuda_timing, page_faults=faults, flush=flush)
    rows = []
    for mode in args.modes:
        for name, (loss, loss_err, grad_err) in passed.items():
            row = dict(common, provider=name, mode=mode, N=N, A=A, C=C, dtype=dtype_name, layout=PROVIDERS[name].layout, input_sets=len(input_sets), warmup=args.warmup)
            peak = memory.peak_bytes(fns[name], *input_sets[0], mode, args.device)
            row.update(figures(times[(name, mode)], peak, floor.floor_bytes(mode, *input_sets[0]), copy_bw))
            counts = faults.get((name, mode))
            row.update(memory_method=memory.method(args.device), loss=loss, loss_rel_err=loss_err, grad_rel_err=grad_err, page_faults_per_call=sum(counts) / len(counts) if counts else None)
            rows.append(row)
    return rows


def run_identity(args):
    """The columns every row of this run shares."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "run_id": now.strftime("%Y%m%dT%H%M%SZ"),
        "timestamp_utc": now.isoformat(timespec="seconds"),
        "device": args.device,
        "device_name": machine.device_name(args.device),
        "torch_version": torch.__version__,
        "git_commit": machine.git_commit(),
        "threads": torch.get_num_threads(),
        "load_avg_1m": machine.load_average(),
        "quick": int(bool(args.quick)),
        "timing": timing_label(args.device, args.cuda_timing),
    }


def fused_unavailable(providers, device):
    """Why the fused providers cannot run here, or None."""
    if not any(n.startswith("fused") for n in providers):
        return None
    try:
        import drloss_cuda

        if device == "cuda" and not drloss_cuda.build_info().get("cuda"):
            return "drloss_cuda was built without its CUDA kernels"
    except ImportError as error:
        return f"drloss_cuda._C could not be loaded ({error})"
    return None


def figures(times_ms, peak, floor_bytes, copy_bw):
    """The timing, memory and floor columns of a row."""
    median = percentile(times_ms, 50)
    achieved = floor_bytes / (median / 1e3)
    return dict(
        repeats=len(times_ms),
        median_ms=median,
        p20_ms=percentile(times_ms, 20),
        p80_ms=percentile(times_ms, 80),
        min_ms=min(times_ms),
        peak_extra_mib=peak / 2**20,
        floor_bytes=floor_bytes,
        achieved_gbps=achieved / 1e9,
        copy_gbps=copy_bw / 1e9,
        floor_fraction=achieved / copy_bw,
    )


def report(args, common, outcome, start):
    """The table, what its columns mean, the notes on its figures, the machine's state at the
    end against the start, what was skipped or failed, and where the rows and plots went."""
    rows = outcome.rows
    if rows:
        print()
        print(markdown_table(rows))
        print("\ncolumns:")
        print("\n".join(column_legend(rows, args.device)))
    end = MachineState.measure(args.device, start.pace_ns is not None)
    notes = noise_warnings(rows) + floor_drift(rows, start.copy_bw / 1e9, end.copy_bw / 1e9)
    if notes:
        print("\nnotes:")
        print("\n".join(notes))
    at_end = [f"load average {end.load} (start {start.load})", f"{floor.copy_words(args.device)} {end.copy_bw / 1e9:.1f} GB/s (start {start.copy_bw / 1e9:.1f})"]
    if end.pace_ns is not None:
        at_end.append(f"arithmetic pace {end.pace_ns:.3f} ns per element (start {start.pace_ns:.3f})")
    print(f"\nat the end: {'; '.join(at_end)}")
    for name, reason in outcome.skipped:
        print(f"skipped {name}: {reason}")
    for failure in outcome.failures:
        print(f"FAILED: {failure}")
    if rows:
        print(f"rows: {len(rows)} appended to {' and '.join(str(p) for p in csv_paths(args))}")
        if args.plot:
            from .plots import plot_rows

            for path in plot_rows(rows, args.out_dir):
                print(f"plot: {path}")
