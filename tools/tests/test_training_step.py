"""benchmarks/training_step.py at a tiny size on the CPU: it trains torchvision's RetinaNet
ResNet-50 FPN with each loss in each dtype, prints the table with its provenance, checks the
fused loss against the float64 reference (and fails the run when they differ), and documents
every option. Skips visibly without torchvision; the GPU figures come from the device check.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "training_step.py"
TINY = ["--device", "cpu", "--batch", "1", "--size", "64x64", "--steps", "1", "--warmup", "0", "--loss-repeats", "1", "--boxes", "2"]

pytest.importorskip("torchvision", reason="the training step needs torchvision")


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture
def training_step(monkeypatch):
    """benchmarks/training_step.py as a module (its bench imports resolve as when run)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("training_step_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_loss_and_dtype_at_a_tiny_size():
    result = run_script(*TINY)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.splitlines()
    header = lines.index("| loss | dtype | step ms | loss ms | loss share % |")
    rows = [line.strip("| ").split(" | ") for line in lines[header + 2 :] if line.startswith("| ")]
    assert [(r[0], r[1]) for r in rows] == [(loss, dtype) for dtype in ("float32", "bfloat16") for loss in ("focal", "official", "fused")], output
    for loss, dtype, step_ms, loss_ms, share in rows:
        step_ms, loss_ms, share = float(step_ms), float(loss_ms), float(share)
        assert step_ms > 0 and loss_ms > 0, (loss, dtype)
        assert share == pytest.approx(100 * loss_ms / step_ms, abs=0.01), (loss, dtype)
    provenance = lines[header - 2]
    for part in ("device: ", "torch ", "torchvision ", "commit ", "batch 1, 64x64", "anchors", "C = 91"):
        assert part in provenance, (part, provenance)
    # The fused loss was checked against float64 in both dtypes; the bfloat16 model fed it bfloat16 logits.
    checks = [line for line in lines if line.startswith("fused ") and "fused against the float64 reference" in line]
    assert len(checks) == 2 and "(logits bfloat16)" in checks[1], output
    assert lines[-1].startswith("training step N=1 64x64: focal float32 ")


def test_a_fused_loss_that_differs_from_the_reference_fails_the_run(training_step, monkeypatch, capsys):
    import drloss_cuda

    right = drloss_cuda.sigmoid_dr_loss
    monkeypatch.setattr(drloss_cuda, "sigmoid_dr_loss", lambda logits, labels: right(logits, labels) * (1 + 1e-3))
    assert training_step.main([*TINY, "--losses", "fused", "--dtypes", "float32"]) == 1
    out = capsys.readouterr().out
    assert "fused float32: FAILED: fused: loss" in out and "| fused | float32 | check failed |" in out


def test_help_documents_every_option(training_step):
    help_text = run_script("--help").stdout
    for action in training_step.build_parser()._actions:
        for flag in action.option_strings:
            assert flag in help_text
        assert action.help and re.sub(r"\s+", "", action.help) in re.sub(r"\s+", "", help_text), action.option_strings
    for loss in ("focal", "official", "fused"):
        assert re.search(rf"^  {loss} ", help_text, re.M), loss


@pytest.mark.parametrize("bad", [["--size", "64"], ["--losses", "dice"], ["--dtypes", "float16"], ["--steps", "0"], ["--boxes", "-1"]])
def test_bad_options_are_refused(bad):
    result = run_script("--device", "cpu", *bad)
    assert result.returncode == 2 and "error:" in result.stderr, result.stderr


def test_max_seconds_reports_what_was_not_measured():
    """Past --max-seconds no configuration starts; each is reported as not measured, in the table
    and first in the headline."""
    result = run_script(*TINY, "--max-seconds", "0", "--dtypes", "float32")
    assert result.returncode == 0, result.stdout + result.stderr
    for loss in ("focal", "official", "fused"):
        assert f"| {loss} | float32 | skipped: out of time | | |" in result.stdout
    assert result.stdout.splitlines()[-1] == "training step N=1 64x64 (not measured: focal float32, official float32, fused float32): nothing measured"
