"""The benchmark's host-time mode (benchmarks/bench/host_time.py): its table has every case in
both modes, with the native op as the unit, and a baseline build timed in the same run. Timings
are never asserted on."""

import re
import subprocess
import sys
from pathlib import Path

import drloss_cuda

REPO = Path(__file__).resolve().parents[2]
ROWS = ["sigmoid_dr_loss", "SigmoidDRLoss", "binary_cross_entropy_with_logits", "focal loss (16 ops)"]


def run_host_time(*extra):
    command = [sys.executable, str(REPO / "benchmarks" / "benchmark.py"), "--host-time", "--host-calls", "5", "--host-reps", "1", *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table_rows(text):
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"[\d.]+", cells[1]):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


def test_host_time_table_has_every_case_relative_to_the_native_op():
    rows = table_rows(run_host_time("--device", "cpu"))
    assert list(rows) == ROWS
    assert rows["binary_cross_entropy_with_logits"][1] == 1.0 and rows["binary_cross_entropy_with_logits"][3] == 1.0
    assert all(v > 0 for values in rows.values() for v in values)


def test_a_baseline_build_is_timed_in_the_same_run():
    # The installed package's own folder serves as the baseline: a child process imports it
    # from there.
    folder = Path(drloss_cuda.__file__).resolve().parents[1]
    rows = table_rows(run_host_time("--device", "cpu", "--host-baseline", str(folder)))
    assert list(rows) == ROWS + ["sigmoid_dr_loss (baseline)", "SigmoidDRLoss (baseline)"]


def test_the_focal_loss_row_names_the_ops_it_dispatches():
    """The focal loss case's label counts the aten ops its formula dispatches per forward."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench.host_time import PEER_CASES, focal_loss

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 16, 4)
    t = (torch.rand(2, 16, 4) > 0.9).float()
    with Recorder() as recorder:
        focal_loss(x, t)
    label = next(name for name in PEER_CASES if name.startswith("focal loss"))
    assert label == f"focal loss ({len(recorder.ops)} ops)", recorder.ops
