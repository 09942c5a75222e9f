"""The benchmark (benchmarks/benchmark.py and its parts in benchmarks/bench/): its --quick run
prints one table and writes well-formed rows to its output folder, a run leaves the checkout
as it was unless --record asks, its correctness check rejects a provider that computes the
wrong loss or the wrong gradient, its timing interleaves providers and modes with the caches
flushed before each call, and its report flags figures that noise has made contradictory.
Timings are never asserted on."""

import csv
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import benchmark  # noqa: E402
from bench import checks, floor, memory, options, pace, peers, providers, table, timing  # noqa: E402
from bench.csv_rows import CSV_COLUMNS, append_csv  # noqa: E402
from bench.inputs import make_inputs  # noqa: E402

FIGURES = ["median_ms", "p20_ms", "p80_ms", "min_ms", "floor_bytes", "achieved_gbps", "copy_gbps", "floor_fraction", "loss"]
EAGER = [name for name, p in providers.PROVIDERS.items() if not p.compiled and not p.named_only]


def read_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        return list(reader)


def check_rows(rows, names, modes, sizes):
    assert sorted((r["provider"], r["mode"], int(r["N"]), int(r["A"]), int(r["C"])) for r in rows) == sorted(
        (p, m, n, a, c) for p in names for m in modes for n, a, c in sizes
    )
    for r in rows:
        for column in CSV_COLUMNS:
            assert r[column] != "", (column, r)
        for column in FIGURES:
            value = float(r[column])
            assert math.isfinite(value) and value > 0, (column, r)
        peak = float(r["peak_extra_mib"])
        assert math.isfinite(peak) and peak >= 0, r
        assert float(r["page_faults_per_call"]) >= 0, r
        assert math.isfinite(float(r["arithmetic_pace_ns"])) and float(r["arithmetic_pace_ns"]) > 0, r
        assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"]), r
        assert float(r["min_ms"]) <= float(r["p20_ms"]), r
        assert int(r["repeats"]) >= 1 and int(r["threads"]) >= 1
        assert r["dtype"] == "float32" and r["device"] == "cpu" and r["quick"] == "1"
        assert r["torch_version"] == torch.__version__
        loss_tol, grad_tol = providers.PROVIDERS[r["provider"]].tolerances[torch.float32]
        assert 0 <= float(r["loss_rel_err"]) <= loss_tol and 0 <= float(r["grad_rel_err"]) <= grad_tol
    # Every row of one run shares the run's identity.
    assert len({(r["run_id"], r["git_commit"], r["device_name"]) for r in rows}) == 1


# Words a CPU run must not print: it has no GPU, no CUDA and no "device" (drloss_cuda, the
# package's name, is not a word of its own).
GPU_WORDS = re.compile(r"\b(gpu|cuda|device|device-to-device)\b", re.IGNORECASE)


def test_quick_run_prints_one_table_in_cpu_words(tmp_path):
    """The README's command, `benchmark.py --quick`, run as a script with its output in a
    temporary folder: well-formed rows, one table with one line per row, each column explained
    once below it, the machine's state at the start and at the end, and no GPU word."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "benchmark.py"), "--quick", "--device", "cpu", "--sizes", "2x1500x80,1x1000x7", "--out-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_rows(out / "benchmark.csv")
    check_rows(rows, EAGER, timing.MODES, [(2, 1500, 80), (1, 1000, 7)])
    lines = result.stdout.splitlines()
    heads = [k for k, line in enumerate(lines) if line.startswith("| mode |")]
    assert len(heads) == 1, result.stdout  # one table
    head = heads[0]
    assert lines[head].startswith("| mode | N | A | C | dtype | provider | median ms | p20-p80 ms |")
    assert all(line.startswith("| ") for line in lines[head + 2 : head + 2 + len(rows)])
    assert sum(line.startswith("|") for line in lines) == len(rows) + 2
    # Each column is explained once, under the table.
    legend = table.column_legend(rows, "cpu")
    assert all(lines.count(entry) == 1 and lines.index(entry) > head for entry in legend)
    for column in ("median ms", "peak extra MiB", "page faults/call", "GB/s", "floor %", "fused speedup"):
        assert sum(entry.startswith(f"- {column}") or f", {column}" in entry.split(":")[0] for entry in legend) == 1, column
    assert not any(" median " in line and " ms " in line and not line.startswith("|") for line in lines)  # no result printed twice
    # The machine at the start (pace as in the rows) and at the end, the files last.
    start_pace = [line for line in lines if line.startswith("arithmetic pace: ")]
    assert len(start_pace) == 1 and f"{float(rows[0]['arithmetic_pace_ns']):.3f} ns per element" in start_pace[0]
    assert sum(line.startswith("memory copy bandwidth: ") for line in lines) == 1
    (end,) = [line for line in lines if line.startswith("at the end: ")]
    assert "memory copy bandwidth" in end and "arithmetic pace" in end
    assert lines[-1] == f"rows: {len(rows)} appended to {out / 'benchmark.csv'}"
    assert not GPU_WORDS.search(result.stdout + result.stderr), GPU_WORDS.search(result.stdout + result.stderr)
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.csv"]  # --quick draws no plots


def test_gpu_words_only_on_a_gpu():
    """The copy bandwidth and the floor column say 'memory' on the CPU, 'GPU' on a GPU."""
    cpu = floor.describe_copy("cpu", 256 << 20, 20e9) + " ".join(table.column_legend([], "cpu"))
    assert "memory copy bandwidth: 20.0 GB/s" in cpu and not GPU_WORDS.search(cpu)
    gpu = floor.describe_copy("cuda", 1 << 30, 3e12) + " ".join(table.column_legend([], "cuda"))
    assert "GPU copy bandwidth: 3000.0 GB/s (one 1024 MiB device-to-device copy" in gpu
    assert "page faults" not in gpu


def test_arithmetic_pace_is_a_cpu_figure():
    """The pace probe times the fused forward on the CPU (ns per element, positive) and says
    nothing for a GPU run."""
    assert pace.arithmetic_pace("cuda") is None
    ns = pace.arithmetic_pace("cpu")
    assert math.isfinite(ns) and 0 < ns < 1e4


def resolve(argv):
    return options.resolve_args(options.build_parser().parse_args(argv))


def test_results_go_to_one_named_folder_outside_the_checkout():
    """Without --out-dir, a run (quick or full) writes to one folder under the system's
    temporary directory, the same for every run; only --record names the committed CSV."""
    for argv in (["--quick"], []):
        args = resolve(argv + ["--device", "cpu"])
        assert args.out_dir == options.default_out_dir() and args.csv == args.out_dir / "benchmark.csv"
        assert REPO not in args.out_dir.resolve().parents and args.record is None
    assert options.default_out_dir().parent == Path(tempfile.gettempdir())
    quick, full = resolve(["--quick", "--device", "cpu"]), resolve(["--device", "cpu"])
    assert not quick.plot and full.plot
    assert all(not providers.PROVIDERS[n].compiled for n in quick.providers)
    assert {"dense_masked_compiled", "focal_compiled"} <= set(full.providers)
    assert (2, 100000, 80, "float32") in full.points
    assert resolve(["--device", "cpu", "--record"]).record == options.RECORD_CSV == REPO / "benchmarks" / "results" / "benchmark.csv"
    assert resolve(["--device", "cpu", "--record", "x.csv"]).record == Path("x.csv")


def test_forward_walk_variants_are_timed_only_where_named():
    """fused_aligned and fused_pipelined (the CUDA forward's walks, for an A/B) are left out of
    the default and --quick runs, and taken where --providers names them (--no-compile keeps
    them: they are not compiled)."""
    variants = {"fused_aligned", "fused_pipelined"}
    assert {n for n, p in providers.PROVIDERS.items() if p.named_only} == variants
    for argv in (["--quick"], [], ["--no-compile"]):
        assert not variants & set(resolve(argv + ["--device", "cpu"]).providers), argv
    named = resolve(["--device", "cpu", "--no-compile", "--providers", "fused,fused_aligned,fused_pipelined"])
    assert named.providers == ["fused", "fused_aligned", "fused_pipelined"]


@pytest.mark.parametrize("before", [None, "general"], ids=["unset", "set"])
def test_forward_walk_variant_sets_the_switch_for_its_calls_alone(before, monkeypatch):
    """Each call of a walk variant runs with DRLOSS_CUDA_FORWARD set to its walk; after the call,
    returned or raised, the variable is as it was."""
    if before is None:
        monkeypatch.delenv("DRLOSS_CUDA_FORWARD", raising=False)
    else:
        monkeypatch.setenv("DRLOSS_CUDA_FORWARD", before)
    seen = []

    def loss(logits, labels):
        seen.append(os.environ.get("DRLOSS_CUDA_FORWARD"))
        if labels is None:
            raise ValueError("no labels")
        return logits.sum()

    call = providers.with_forward_walk(loss, "pipelined")
    assert call(torch.ones(2), torch.zeros(2)).item() == 2.0
    assert os.environ.get("DRLOSS_CUDA_FORWARD") == before
    with pytest.raises(ValueError, match="no labels"):
        call(torch.ones(2), None)
    assert os.environ.get("DRLOSS_CUDA_FORWARD") == before
    assert seen == ["pipelined", "pipelined"]


def checkout_state():
    """`git status` of the checkout and the content of its tracked files under benchmarks/."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("the checkout is not a git work tree (or git is missing): its state cannot be read")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    tracked = subprocess.run(["git", "ls-files", "benchmarks"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return status, {name: hashlib.sha256((REPO / name).read_bytes()).hexdigest() for name in tracked if (REPO / name).is_file()}


@pytest.mark.parametrize("mode", [["--quick"], ["--repeats", "2", "--warmup", "0", "--no-compile"]], ids=["quick", "default"])
def test_a_run_leaves_the_checkout_unchanged(mode, tmp_path):
    """A --quick run and a default (full) run, at a small size, as scripts with the system's
    temporary directory in tmp_path: `git status` and every tracked file under benchmarks/ are
    the same after as before, and the rows are in the named folder there."""
    if mode != ["--quick"]:
        pytest.importorskip("matplotlib")  # a full run draws its plots
    before = checkout_state()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "benchmark.py"), "--device", "cpu", *mode, "--sizes", "1x600x5,1x1200x5", "--providers", "fused,dense_masked", "--modes", "forward"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert checkout_state() == before
    out = tmp_path / options.OUT_DIR_NAME
    assert len(read_rows(out / "benchmark.csv")) == 2 * 2
    assert f"rows: 4 appended to {out / 'benchmark.csv'}" in result.stdout.splitlines()
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.csv"] + ([] if mode == ["--quick"] else ["benchmark_cpu_forward_N1_C5_float32.png"])


def test_record_appends_to_the_committed_csv(tmp_path):
    """--record CSV appends the run's rows to CSV (the committed one's stand-in here, a copy of
    it), after the rows it held, as well as to the output folder's CSV."""
    committed = tmp_path / "committed.csv"
    shutil.copyfile(options.RECORD_CSV, committed)
    before = committed.read_text()
    out = tmp_path / "out"
    argv = ["--quick", "--device", "cpu", "--providers", "fused", "--sizes", "1x500x5", "--modes", "forward", "--repeats", "2", "--out-dir", str(out), "--record", str(committed)]
    assert benchmark.main(argv) == 0
    after = committed.read_text()
    assert after.startswith(before) and len(after.splitlines()) == len(before.splitlines()) + 1
    (row,) = read_rows(out / "benchmark.csv")
    assert read_rows(committed)[-1] == row


def test_budget(tmp_path, capsys):
    """A budget already spent skips every provider visibly (not a failure) and writes no rows;
    no log file is written unless --log names one, which then holds what was printed."""
    assert resolve(["--device", "cpu", "--out-dir", str(tmp_path)]).log is None
    log = tmp_path / "logs" / "run.log"
    code = benchmark.main(["--device", "cpu", "--providers", "fused,dense_masked", "--sizes", "1x500x5", "--budget", "0", "--no-plot", "--out-dir", str(tmp_path / "out"), "--log", str(log)])
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped fused: over the run's budget of 0 s" in out and "skipped dense_masked: over the run's budget of 0 s" in out
    assert not (tmp_path / "out").exists()
    assert log.read_text() == out  # --log gets everything printed


def test_rows_append_and_plots(tmp_path):
    """Two runs append to one CSV (one header); --plot draws one PNG per mode for a sweep over A."""
    pytest.importorskip("matplotlib")
    argv = ["--quick", "--device", "cpu", "--providers", "fused,dense_masked", "--modes", "forward", "--out-dir", str(tmp_path), "--repeats", "3"]
    assert benchmark.main(argv + ["--sizes", "1x800x5,1x1600x5", "--plot"]) == 0
    assert benchmark.main(argv + ["--sizes", "1x800x5"]) == 0
    rows = read_rows(tmp_path / "benchmark.csv")
    assert len(rows) == 2 * 2 + 2
    assert len({r["run_id"] for r in rows}) >= 1
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["benchmark_cpu_forward_N1_C5_float32.png"]
    assert (tmp_path / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_floor_chart_for_a_point_in_two_dtypes(tmp_path):
    """A point measured in two dtypes gets a bar chart of the fraction of the copy floor; every
    row says how it was timed (host wall clock on the CPU)."""
    pytest.importorskip("matplotlib")
    argv = ["--quick", "--device", "cpu", "--providers", "fused,dense_masked", "--sizes", "1x600x5", "--dtypes", "float32,float64", "--out-dir", str(tmp_path), "--repeats", "2", "--plot"]
    assert benchmark.main(argv) == 0
    rows = read_rows(tmp_path / "benchmark.csv")
    assert {r["timing"] for r in rows} == {"host"} and len(rows) == 2 * 2 * 2
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["benchmark_cpu_floor_N1_A600_C5.png"]


def test_cuda_timing_option():
    assert resolve(["--device", "cpu"]).cuda_timing == "queued"
    assert resolve(["--device", "cpu", "--cuda-timing", "idle"]).cuda_timing == "idle"
    with pytest.raises(SystemExit):
        resolve(["--device", "cpu", "--cuda-timing", "fast"])
    assert timing.timing_label("cuda", "queued") == "cuda_queued" and timing.timing_label("cpu", "idle") == "host"
    with pytest.raises(ValueError, match="cuda_timing"):
        timing.time_interleaved({}, timing.MODES, [], "cpu", 0, 1, 1.0, 1, cuda_timing="fast")


def _inputs(seed, A=700, C=6):
    """Two images of the benchmark's synthetic mix, drawn from `seed` (the `generator`
    fixture's, printed), made unlike by construction so that a wrong loss definition cannot
    agree with the right one by chance: image 0 has at least 8 positives (its first 8 anchors;
    several positives are what make a positives' temperature matter), image 1 none (its
    positive anchors turned to background). With both images' positive counts left to the
    draw, a pooled loss passed the per-image check about once in 2,300 draws (equal counts),
    and a wrong pos_lambda about once in 20,000 (at most one positive per image)."""
    logits, labels = make_inputs(2, A, C, torch.float32, "cpu", torch.Generator().manual_seed(seed))
    labels[0, :8] = torch.arange(8) % C
    labels[1] = torch.where((labels[1] >= 0) & (labels[1] < C), C, labels[1])
    return logits, labels


def test_timing_interleaves_providers_and_modes():
    """Round after round, every (provider, mode) pair gets one call in turn, on input set
    round mod K: a slow spell of the machine hits all pairs alike."""
    calls = []

    def recorder(name):
        def fn(logits, labels):
            calls.append((name, int(labels[0, 0])))
            return (logits * 1.0).sum()

        return fn

    input_sets = [(torch.randn(1, 3, 2, requires_grad=True), torch.full((1, 3), k)) for k in range(2)]
    times = timing.time_interleaved({"a": recorder("a"), "b": recorder("b")}, timing.MODES, input_sets, "cpu", warmup=1, repeats=3, max_seconds=60, min_repeats=1)
    assert {pair: len(t) for pair, t in times.items()} == {(n, m): 3 for n in "ab" for m in timing.MODES}
    timed = calls[4:]  # after one warm-up call of each pair
    assert timed == [(name, r % 2) for r in range(3) for name in "abab"]


def test_the_caches_are_flushed_before_each_timed_call():
    """Every timed call comes right after a flush (and no untimed one needs it); the flush
    writes over twice the largest cache (within its bounds), so that no call finds its inputs
    where the call before it left them."""
    events = []

    class Flush:
        def __call__(self):
            events.append("flush")

    def fn(logits, labels):
        events.append("call")
        return (logits * 1.0).sum()

    input_sets = [(torch.randn(1, 3, 2, requires_grad=True), torch.zeros(1, 3, dtype=torch.long))]
    timing.time_interleaved({"a": fn, "b": fn}, timing.MODES, input_sets, "cpu", warmup=1, repeats=3, max_seconds=60, min_repeats=1, flush=Flush())
    assert events == ["call"] * 4 + ["flush", "call"] * 12
    flush = timing.CacheFlush("cpu")
    cache = timing.largest_cache_bytes("cpu")
    expected = min(max(2 * cache, timing.FLUSH_MIN_BYTES), timing.FLUSH_MAX_BYTES) if cache else timing.FLUSH_FALLBACK_BYTES
    assert flush.nbytes == expected and flush.buffer.numel() * 4 == expected
    flush()
    flush()
    assert (flush.buffer == 2).all()  # each flush writes every element anew


@pytest.mark.skipif(timing.minor_page_faults() is None, reason="the OS gives no page-fault count (no `resource` module)")
def test_timing_counts_the_page_faults_of_each_call():
    """A call that writes to 64 MiB of freshly mapped memory is charged its page faults (at
    least one per 2 MiB, even where the OS gives huge pages), one that maps nothing is not."""
    import mmap

    def toucher(logits, labels):
        fresh = mmap.mmap(-1, 64 << 20)
        for offset in range(0, 64 << 20, 4096):
            fresh[offset] = 1
        fresh.close()
        return (logits * 1.0).sum()

    def idle(logits, labels):
        return (logits * 1.0).sum()

    input_sets = [(torch.randn(1, 3, 2, requires_grad=True), torch.zeros(1, 3, dtype=torch.long))]
    faults = {}
    times = timing.time_interleaved({"toucher": toucher, "idle": idle}, ["forward"], input_sets, "cpu", warmup=1, repeats=3, max_seconds=60, min_repeats=1, page_faults=faults)
    assert {pair: len(t) for pair, t in times.items()} == {pair: len(f) for pair, f in faults.items()}
    assert min(faults[("toucher", "forward")]) >= 32
    assert max(faults[("idle", "forward")]) < 32


def test_markdown_table_shows_page_faults_only_where_counted():
    def row(faults):
        return dict(provider="fused", mode="forward", N=2, A=100, C=8, dtype="float32", median_ms=1.0, p20_ms=0.9, p80_ms=1.1, peak_extra_mib=0.0, achieved_gbps=1.0, floor_fraction=0.5, page_faults_per_call=faults)

    cpu = table.markdown_table([row(812.4)]).splitlines()
    assert "| page faults/call |" in cpu[0] and "| 812 |" in cpu[2]
    cuda = table.markdown_table([row(None)]).splitlines()
    assert "page faults" not in cuda[0] and cuda[0].count("|") == cuda[2].count("|")


def test_noise_warnings_flag_a_forward_slower_than_forward_backward():
    def row(provider, mode, median, p20, p80):
        return dict(provider=provider, mode=mode, N=2, A=100, C=8, dtype="float32", median_ms=median, p20_ms=p20, p80_ms=p80)

    quiet = [row("fused", "forward", 1.0, 0.9, 1.1), row("fused", "forward_backward", 2.0, 1.9, 2.2)]
    assert table.noise_warnings(quiet) == []
    contradictory = [row("fused", "forward", 6.29, 6.0, 6.5), row("fused", "forward_backward", 2.34, 2.3, 2.4)]
    (warning,) = table.noise_warnings(contradictory)
    assert "fused" in warning and "forward 6.29 ms is slower than forward+backward 2.34 ms" in warning
    spread = [row("official_pooled", "forward", 10.0, 5.0, 20.0)]
    (warning,) = table.noise_warnings(spread)
    assert "noisy" in warning and warning.endswith(": official_pooled forward")
    two_points = spread + [dict(spread[0], A=200)]
    (warning,) = table.noise_warnings(two_points)
    assert warning.endswith(": official_pooled forward 2x100x8 float32, official_pooled forward 2x200x8 float32")


def test_floor_drift_restates_fused_floor_against_a_higher_end_bandwidth():
    def row(provider, mode, gbps, copy_gbps):
        return dict(provider=provider, mode=mode, N=2, A=100, C=8, dtype="float32", achieved_gbps=gbps, floor_fraction=gbps / copy_gbps)

    rows = [row("fused", "forward", 6.0, 12.0), row("fused", "forward_backward", 8.4, 12.0), row("focal", "forward", 0.3, 12.0)]
    assert table.floor_drift(rows, 12.0, 13.0) == []  # within FLOOR_DRIFT: nothing to restate
    assert table.floor_drift(rows, 16.8, 12.0) == []  # the start's is already the stricter floor
    head, forward, both = table.floor_drift(rows, 12.0, 16.8)
    assert head == "- copy bandwidth 12.0 GB/s at the start and 16.8 at the end: the floor % columns use the start's; against the end's:"
    assert forward == "  - fused forward N=2 A=100 C=8 float32: 35.7% of the floor (not 50.0%)"
    assert both == "  - fused forward_backward N=2 A=100 C=8 float32: 50.0% of the floor (not 70.0%)"


@pytest.mark.parametrize("bounds", [False, True], ids=["kernels", "kernels-and-bounds"])
def test_cpu_kernel_profile_prints_a_line_per_point_and_op(bounds):
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "profile_cpu_kernels.py"), "--sizes", "1x50x8,2x30x3", "--dtypes", "float32,bfloat16",
         "--threads", "1", "--seconds", "0.01", *(["--bounds"] if bounds else [])],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout.splitlines()
    assert out[0].startswith("torch ") and "copy" in out[0]
    rows = out[1:]
    ops = ("forward", "backward") + (("read", "copy_used", "copy_fresh") if bounds else ())
    assert len(rows) == 2 * 2 * len(ops), out
    for size in ("1x50x8", "2x30x3"):
        for dtype in ("float32", "bfloat16"):
            for op in ops:
                (row,) = [r for r in rows if r.startswith(f"{size} {dtype} threads 1") and f" {op} " in r]
                assert "ns/elem" in row and "% of copy" in row


def test_check_accepts_the_fused_loss(generator):
    logits, labels = _inputs(generator)
    expected = checks.reference_loss_and_grad("dr", "per_image", logits, labels)
    fused = providers.build_fused()
    loss, loss_err, grad_err = checks.check_provider("fused", fused, logits, labels, expected, checks.FUSED_TOLERANCES[torch.float32])
    assert math.isfinite(loss) and loss_err <= 1e-4 and grad_err <= 1e-3


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param(lambda fused: (lambda x, y: fused(x, y, margin=0.55)), id="wrong-margin"),
        pytest.param(lambda fused: (lambda x, y: fused(x, y) * 1.001), id="loss-off-by-0.1%"),
        # The right value with a gradient 2% too large: caught by the gradient comparison alone.
        pytest.param(lambda fused: (lambda x, y: fused(x, y) * 1.02 - 0.02 * fused(x, y).detach()), id="gradient-off-by-2%"),
        # The pooled loss where the per-image loss is expected (a different loss definition).
        pytest.param(lambda fused: (lambda x, y: fused(x.reshape(-1, x.shape[-1]), y.reshape(-1))), id="pooled-for-per-image"),
        # The gradient of one image dropped.
        pytest.param(lambda fused: (lambda x, y: 0.5 * (fused(x[:1], y[:1]) + fused(x[1:].detach(), y[1:]))), id="one-image-without-gradient"),
    ],
)
def test_check_rejects_a_wrong_provider(wrong, generator):
    logits, labels = _inputs(generator)
    expected = checks.reference_loss_and_grad("dr", "per_image", logits, labels)
    with pytest.raises(checks.CheckFailed):
        checks.check_provider("wrong", wrong(providers.fused_loss()), logits, labels, expected, checks.FUSED_TOLERANCES[torch.float32])


def test_check_rejects_a_wrong_focal_loss(generator):
    """At the peers' looser tolerance too."""
    logits, labels = _inputs(generator)
    expected = checks.reference_loss_and_grad("focal", "per_image", logits, labels)

    tolerances = providers.PROVIDERS["focal"].tolerances[torch.float32]
    right = lambda x, y: peers.sigmoid_focal_loss(x, y)  # noqa: E731
    checks.check_provider("focal", right, logits, labels, expected, tolerances)
    wrong = lambda x, y: peers.sigmoid_focal_loss(x, y, gamma=1.8)  # noqa: E731
    with pytest.raises(checks.CheckFailed):
        checks.check_provider("focal", wrong, logits, labels, expected, tolerances)
    wrong_alpha = lambda x, y: peers.sigmoid_focal_loss(x, y, alpha=0.3)  # noqa: E731
    with pytest.raises(checks.CheckFailed):
        checks.check_provider("focal", wrong_alpha, logits, labels, expected, tolerances)


def test_check_rejects_a_wrong_dense_peer_at_the_peer_tolerance(generator):
    logits, labels = _inputs(generator)
    expected = checks.reference_loss_and_grad("dr", "per_image", logits, labels)
    tolerances = providers.PROVIDERS["dense_masked"].tolerances[torch.float32]
    checks.check_provider("dense", lambda x, y: peers.dense_masked_dr_loss(x, y), logits, labels, expected, tolerances)
    with pytest.raises(checks.CheckFailed):
        checks.check_provider("dense", lambda x, y: peers.dense_masked_dr_loss(x, y, margin=0.7), logits, labels, expected, tolerances)
    with pytest.raises(checks.CheckFailed):  # positives weighted like negatives
        checks.check_provider("dense", lambda x, y: peers.dense_masked_dr_loss(x, y, pos_lambda=0.08), logits, labels, expected, tolerances)


def test_run_with_a_wrong_provider_fails_and_does_not_time_it(tmp_path, monkeypatch):
    """End to end: a provider whose loss is wrong is not timed, gets no row, and the run exits 1."""
    import drloss_cuda

    wrong = providers.Provider("wrong", "dr", "per_image", lambda: (lambda x, y: drloss_cuda.sigmoid_dr_loss(x, y, neg_lambda=0.1)))
    monkeypatch.setitem(providers.PROVIDERS, "wrong", wrong)
    code = benchmark.main(["--quick", "--device", "cpu", "--providers", "fused,wrong", "--sizes", "2x500x9", "--out-dir", str(tmp_path)])
    assert code == 1
    rows = read_rows(tmp_path / "benchmark.csv")
    assert {r["provider"] for r in rows} == {"fused"}


def test_dense_masked_peer_matches_reference_on_edge_groups():
    """The dense peer is the same loss as the reference, empty sets included: an image with
    every anchor ignored, one with no positive, one with no background and one ordinary."""
    from drloss_cuda import reference

    C = 5
    logits = torch.randn(4, 300, C, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(-1, C + 1, (4, 300))
    labels[0] = -1
    labels[1] = torch.where(torch.rand(300) < 0.5, -1, C)
    labels[2] = torch.randint(0, C, (300,))
    for reduction in ("none", "mean", "sum"):
        got = peers.dense_masked_dr_loss(logits, labels, reduction=reduction)
        want = reference.sigmoid_dr_loss(logits, labels, reduction=reduction)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        (g_got,) = torch.autograd.grad(got.sum(), logits)
        (g_want,) = torch.autograd.grad(want.sum(), logits)
        assert torch.isfinite(g_got).all()
        torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-14)
    assert (g_got[0] == 0).all()


def test_percentile_matches_numpy():
    np = pytest.importorskip("numpy")
    values = torch.rand(17).tolist()
    for q in (0, 20, 50, 80, 100):
        assert timing.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_cpu_peak_measures_allocations():
    """The CPU memory figure sees a known allocation: a provider that makes a 4 MiB temporary
    has a peak of at least that, and the fused forward (no temporary of the input's size) far less."""
    logits, labels = _inputs(1, 4000, 80)

    def wasteful(x, y):
        tmp = torch.empty(1 << 20)  # 4 MiB
        tmp.fill_(1.0)
        return (x * tmp[: x.numel()].view_as(x)).sum() * 0 + providers.build_fused()(x, y)

    assert memory.cpu_peak_bytes(wasteful, logits, labels, "forward") >= 4 << 20
    assert memory.cpu_peak_bytes(providers.build_fused(), logits, labels, "forward") < 64 << 10


def test_csv_with_other_columns_is_kept_aside(tmp_path):
    path = tmp_path / "bench.csv"
    path.write_text("a,b\n1,2\n")
    row = {c: "x" for c in CSV_COLUMNS}
    append_csv(path, [row])
    assert read_rows(path) == [row]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("bench.columns-")]
    assert len(kept) == 1 and kept[0].read_text() == "a,b\n1,2\n"
