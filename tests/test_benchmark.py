"""The benchmark script: its --quick run writes well-formed rows, and its correctness check
rejects a provider that computes the wrong loss or the wrong gradient. Timings are never
asserted on."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import benchmark  # noqa: E402

FIGURES = ["median_ms", "p20_ms", "p80_ms", "min_ms", "floor_bytes", "achieved_gbps", "copy_gbps", "floor_fraction", "loss"]
EAGER = [name for name, p in benchmark.PROVIDERS.items() if not p.compiled]


def read_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == benchmark.CSV_COLUMNS
        return list(reader)


def check_rows(rows, providers, modes, sizes):
    assert sorted((r["provider"], r["mode"], int(r["N"]), int(r["A"]), int(r["C"])) for r in rows) == sorted(
        (p, m, n, a, c) for p in providers for m in modes for n, a, c in sizes
    )
    for r in rows:
        for column in benchmark.CSV_COLUMNS:
            assert r[column] != "", (column, r)
        for column in FIGURES:
            value = float(r[column])
            assert math.isfinite(value) and value > 0, (column, r)
        peak = float(r["peak_extra_mib"])
        assert math.isfinite(peak) and peak >= 0, r
        assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"]), r
        assert float(r["min_ms"]) <= float(r["p20_ms"]), r
        assert int(r["repeats"]) >= 1 and int(r["threads"]) >= 1
        assert r["dtype"] == "float32" and r["device"] == "cpu" and r["quick"] == "1"
        assert r["torch_version"] == torch.__version__
        loss_tol, grad_tol = benchmark.PROVIDERS[r["provider"]].tolerances[torch.float32]
        assert 0 <= float(r["loss_rel_err"]) <= loss_tol and 0 <= float(r["grad_rel_err"]) <= grad_tol
    # Every row of one run shares the run's identity.
    assert len({(r["run_id"], r["git_commit"], r["device_name"]) for r in rows}) == 1


def test_quick_run_writes_well_formed_rows(tmp_path):
    """The README's command, `benchmark.py --quick`, run as a script into a temporary folder."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "benchmark.py"), "--quick", "--device", "cpu", "--sizes", "2x1500x80,1x1000x7", "--out-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_rows(out / "benchmark.csv")
    check_rows(rows, EAGER, benchmark.MODES, [(2, 1500, 80), (1, 1000, 7)])
    # The Markdown table comes last, with one line per row.
    tail = result.stdout.rstrip().splitlines()
    table = tail[-len(rows) - 2 :]
    assert table[0].startswith("| mode | N | A | C | dtype | provider | median ms")
    assert all(line.startswith("| ") for line in table[2:])
    assert not (out / "benchmark_cpu.log").exists()  # --quick writes no log unless asked


def test_quick_csv_defaults_outside_the_repository():
    args = benchmark.resolve_args(benchmark.build_parser().parse_args(["--quick", "--device", "cpu"]))
    assert benchmark.RESULTS not in args.csv.parents and not args.plot and args.log is None
    assert all(not benchmark.PROVIDERS[n].compiled for n in args.providers)
    full = benchmark.resolve_args(benchmark.build_parser().parse_args(["--device", "cpu"]))
    assert full.csv == benchmark.RESULTS / "benchmark.csv" and full.plot
    assert {"dense_masked_compiled", "focal_compiled"} <= set(full.providers)
    assert (2, 100000, 80, "float32") in full.points


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


def _inputs(N=2, A=700, C=6):
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    return benchmark.make_inputs(N, A, C, torch.float32, "cpu", generator)


def test_check_accepts_the_fused_loss():
    logits, labels = _inputs()
    expected = benchmark.reference_loss_and_grad("dr", "per_image", logits, labels)
    fused = benchmark.build_fused()
    loss, loss_err, grad_err = benchmark.check_provider("fused", fused, logits, labels, expected, benchmark.TOLERANCES[torch.float32])
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
def test_check_rejects_a_wrong_provider(wrong):
    logits, labels = _inputs()
    expected = benchmark.reference_loss_and_grad("dr", "per_image", logits, labels)
    with pytest.raises(benchmark.CheckFailed):
        benchmark.check_provider("wrong", wrong(benchmark._fused()), logits, labels, expected, benchmark.TOLERANCES[torch.float32])


def test_check_rejects_a_wrong_focal_loss():
    """At the peers' looser tolerance too."""
    logits, labels = _inputs()
    expected = benchmark.reference_loss_and_grad("focal", "per_image", logits, labels)
    import peers

    tolerances = benchmark.PROVIDERS["focal"].tolerances[torch.float32]
    right = lambda x, y: peers.sigmoid_focal_loss(x, y)  # noqa: E731
    benchmark.check_provider("focal", right, logits, labels, expected, tolerances)
    wrong = lambda x, y: peers.sigmoid_focal_loss(x, y, gamma=1.8)  # noqa: E731
    with pytest.raises(benchmark.CheckFailed):
        benchmark.check_provider("focal", wrong, logits, labels, expected, tolerances)
    wrong_alpha = lambda x, y: peers.sigmoid_focal_loss(x, y, alpha=0.3)  # noqa: E731
    with pytest.raises(benchmark.CheckFailed):
        benchmark.check_provider("focal", wrong_alpha, logits, labels, expected, tolerances)


def test_check_rejects_a_wrong_dense_peer_at_the_peer_tolerance():
    import peers

    logits, labels = _inputs()
    expected = benchmark.reference_loss_and_grad("dr", "per_image", logits, labels)
    tolerances = benchmark.PROVIDERS["dense_masked"].tolerances[torch.float32]
    benchmark.check_provider("dense", lambda x, y: peers.dense_masked_dr_loss(x, y), logits, labels, expected, tolerances)
    with pytest.raises(benchmark.CheckFailed):
        benchmark.check_provider("dense", lambda x, y: peers.dense_masked_dr_loss(x, y, margin=0.7), logits, labels, expected, tolerances)
    with pytest.raises(benchmark.CheckFailed):  # positives weighted like negatives
        benchmark.check_provider("dense", lambda x, y: peers.dense_masked_dr_loss(x, y, pos_lambda=0.08), logits, labels, expected, tolerances)


def test_run_with_a_wrong_provider_fails_and_does_not_time_it(tmp_path, monkeypatch):
    """End to end: a provider whose loss is wrong is not timed, gets no row, and the run exits 1."""
    import drloss_cuda

    wrong = benchmark.Provider("wrong", "dr", "per_image", lambda: (lambda x, y: drloss_cuda.sigmoid_dr_loss(x, y, neg_lambda=0.1)))
    monkeypatch.setitem(benchmark.PROVIDERS, "wrong", wrong)
    code = benchmark.main(["--quick", "--device", "cpu", "--providers", "fused,wrong", "--sizes", "2x500x9", "--out-dir", str(tmp_path)])
    assert code == 1
    rows = read_rows(tmp_path / "benchmark.csv")
    assert {r["provider"] for r in rows} == {"fused"}


def test_dense_masked_peer_matches_reference_on_edge_groups():
    """The dense peer is the same loss as the reference, empty sets included: an image with
    every anchor ignored, one with no positive, one with no background and one ordinary."""
    import peers
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
        assert benchmark.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_cpu_peak_measures_allocations():
    """The CPU memory figure sees a known allocation: a provider that makes a 4 MiB temporary
    has a peak of at least that, and the fused forward (no temporary of the input's size) far less."""
    logits, labels = _inputs(1, 4000, 80)

    def wasteful(x, y):
        tmp = torch.empty(1 << 20)  # 4 MiB
        tmp.fill_(1.0)
        return (x * tmp[: x.numel()].view_as(x)).sum() * 0 + benchmark.build_fused()(x, y)

    assert benchmark.cpu_peak_bytes(wasteful, logits, labels, "forward") >= 4 << 20
    assert benchmark.cpu_peak_bytes(benchmark.build_fused(), logits, labels, "forward") < 64 << 10


def test_csv_with_other_columns_is_kept_aside(tmp_path):
    path = tmp_path / "bench.csv"
    path.write_text("a,b\n1,2\n")
    row = {c: "x" for c in benchmark.CSV_COLUMNS}
    benchmark.append_csv(path, [row])
    assert read_rows(path) == [row]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("bench.columns-")]
    assert len(kept) == 1 and kept[0].read_text() == "a,b\n1,2\n"
