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
from .table import floor_drift, headline, markdown_table, noise_warnings
from .timing import percentile, time_interleaved, timing_label


def run(args):
    """Measures every point of `args` (resolved by options). Returns the exit status: 1 when a
    provider failed its check or raised, else 0."""
    started = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    common = run_identity(args)
    print_header(args, common, seed)
    copy_bytes = floor.copy_bytes(args.device)
    copy_bw = floor.copy_bandwidth(args.device, copy_bytes)
    print(f"copy bandwidth ({copy_bytes >> 20} MiB device-to-device, read + write): {copy_bw / 1e9:.1f} GB/s")
    kernels_load = fused_unavailable(("fused",), args.device) is None
    common["arithmetic_pace_ns"] = pace.arithmetic_pace(args.device) if kernels_load else None
    if common["arithmetic_pace_ns"] is not None:
        print(f"arithmetic pace: {pace.describe(common['arithmetic_pace_ns'])}")
    print()

    generator = torch.Generator(device=args.device).manual_seed(seed)
    outcome = Outcome(unavailable=fused_unavailable(args.providers, args.device))
    deadline = None if args.budget is None else started + args.budget
    for N, A, C, dtype_name in args.points:
        point = (N, A, C, dtype_name)
        input_sets = [make_inputs(N, A, C, DTYPES[dtype_name], args.device, generator) for _ in range(args.input_sets)]
        passed = check_point(args, point, input_sets[0], outcome, deadline)
        rows = time_point(args, point, input_sets, passed, outcome.built, common, copy_bw)
        if rows:  # written point by point: a run stopped later keeps what it measured
            append_csv(args.csv, rows)
            outcome.rows += rows
        del input_sets
        if args.device == "cuda":
            torch.cuda.empty_cache()

    report(args, common, outcome, copy_bw)
    return 1 if outcome.failures else 0


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
    "host": "host wall clock around each call",
    "cuda_queued": "CUDA events around each call, the GPU's queue kept full (device time per call, as in training)",
    "cuda_idle": "CUDA events around each call on an idle GPU (latency, host launch overhead included)",
}


def print_header(args, common, seed):
    print(f"# drloss_cuda benchmark, run {common['run_id']}")
    print(f"device: {args.device} = {common['device_name']}; torch {torch.__version__}; threads {common['threads']}; commit {common['git_commit']}; python {platform.python_version()}; load average {common['load_avg_1m']}")
    print(f"providers: {', '.join(args.providers)}; modes: {', '.join(args.modes)}")
    budget = f"; budget {args.budget:g} s" if args.budget is not None else ""
    print(f"points (NxAxC dtype): {', '.join(f'{n}x{a}x{c} {dt}' for n, a, c, dt in args.points)}; warmup {args.warmup}, repeats {args.repeats} (at least {args.min_repeats}, at most {args.max_seconds:g} s a provider and mode), {args.input_sets} input sets, seed {seed}{budget}")
    print(f"timing: {TIMING_WORDS[common['timing']]}")
    print(f"labels: {POSITIVE_FRACTION:.0%} positive, {IGNORED_FRACTION:.0%} ignored, the rest background; logits ~ N(0, 1)")


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


def time_point(args, point, input_sets, passed, built, common, copy_bw):
    """Times the providers that passed (interleaved), measures their peak memory, and returns
    the point's rows; `common` holds the columns the run's rows share."""
    N, A, C, dtype_name = point
    fns = {name: built[name] for name in passed}
    if not fns:
        return []
    faults = {}
    times = time_interleaved(fns, args.modes, input_sets, args.device, args.warmup, args.repeats, args.max_seconds, args.min_repeats, args.cuda_timing, page_faults=faults)
    rows = []
    for mode in args.modes:
        for name, (loss, loss_err, grad_err) in passed.items():
            row = dict(common, provider=name, mode=mode, N=N, A=A, C=C, dtype=dtype_name, layout=PROVIDERS[name].layout, input_sets=len(input_sets), warmup=args.warmup)
            peak = memory.peak_bytes(fns[name], *input_sets[0], mode, args.device)
            row.update(figures(times[(name, mode)], peak, floor.floor_bytes(mode, *input_sets[0]), copy_bw))
            counts = faults.get((name, mode))
            row.update(memory_method=memory.method(args.device), loss=loss, loss_rel_err=loss_err, grad_rel_err=grad_err, page_faults_per_call=sum(counts) / len(counts) if counts else None)
            rows.append(row)
            print(
                f"{name:>22} N={N} A={A} C={C} {dtype_name} {mode:<16} median {row['median_ms']:9.3f} ms  (p20 {row['p20_ms']:.3f}, p80 {row['p80_ms']:.3f}, {row['repeats']} runs)"
                f"  peak extra {row['peak_extra_mib']:8.1f} MiB  {row['achieved_gbps']:6.1f} GB/s ({100 * row['floor_fraction']:.1f}% of copy)"
                + (f"  {row['page_faults_per_call']:.0f} page faults/call" if counts else "")
            )
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


def report(args, common, outcome, copy_bw):
    """Where the rows went, the plots, what was skipped or failed, the headline, the warnings
    on noisy figures, the machine's load, copy bandwidth and arithmetic pace at the end against
    the start (a run whose pace changed on the way has figures from two machines, in effect;
    where the copy bandwidth rose, fused's floor % against the end's figure) and, last, the
    table."""
    rows = outcome.rows
    if rows:
        print(f"\n{len(rows)} rows appended to {args.csv}")
        if args.plot:
            from .plots import plot_rows

            for path in plot_rows(rows, args.out_dir):
                print(f"plot: {path}")
    for name, reason in outcome.skipped:
        print(f"skipped {name}: {reason}")
    for failure in outcome.failures:
        print(f"FAILED: {failure}")
    lines = headline(rows)
    if lines:
        print("\nfused speedup, forward+backward (median time of the peer / median time of fused):")
        print("\n".join(lines))
    warnings = noise_warnings(rows)
    if warnings:
        print("\nnoisy timings (the machine was busy; rerun on a quiet machine before quoting them):")
        print("\n".join(warnings))
    print(f"load average at the end: {machine.load_average()} (at the start: {common['load_avg_1m']})")
    copy_bw_end = floor.copy_bandwidth(args.device, floor.copy_bytes(args.device))
    print(f"copy bandwidth at the end: {copy_bw_end / 1e9:.1f} GB/s (at the start: {copy_bw / 1e9:.1f})")
    drift = floor_drift(rows, copy_bw / 1e9, copy_bw_end / 1e9)
    if drift:
        print("\n".join(drift))
    pace_end = pace.arithmetic_pace(args.device) if common["arithmetic_pace_ns"] is not None else None
    if pace_end is not None:
        print(f"arithmetic pace at the end: {pace_end:.3f} ns per element (at the start: {common['arithmetic_pace_ns']:.3f})")
    print()
    print(markdown_table(rows))
