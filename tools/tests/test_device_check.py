"""The device check's plumbing (tools/device_check.sh), on a machine without a GPU: its CPU
mode runs end to end with the installed extension and reports the GPU-only steps as skipped;
a step that fails or hangs fails the run, and the deadline stops a hung step and skips the rest.
The GPU work itself (build, CUDA tests, sanitizer, CUDA benchmark) runs only on a GPU machine.
"""

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "device_check.sh"
STEPS = ["environment", "build", "cuda_tests", "retinanet", "memcheck", "racecheck", "initcheck", "synccheck", "benchmark", "training_step", "forward_walks", "benchmark_compiled"]
LOGS = {"environment.log", "build.log", "cuda_tests.log", "retinanet.log", "sanitizer.log", "benchmark.log", "benchmark.csv", "summary.md"}

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="the device check needs bash and timeout (coreutils)"
)


def device_check(out, python=sys.executable, deadline=None, timeout=300, path=None, steps=None):
    env = dict(os.environ, OUT=str(out), PYTHON=str(python))
    env.pop("DEVICE_CHECK_STEPS", None)
    if steps is not None:
        env["DEVICE_CHECK_STEPS"] = steps
    if python is None:
        del env["PYTHON"]
    if path is not None:
        env["PATH"] = path
    env.pop("DEVICE_CHECK_CPU", None)
    if deadline is not None:
        env["DEVICE_CHECK_DEADLINE"] = str(deadline)
    started = time.monotonic()
    result = subprocess.run(["bash", str(SCRIPT), "--cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


def summary(out):
    """{step: (status, seconds, last line)} from summary.md, in the order written."""
    rows = {}
    for line in (out / "summary.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("step", "---"):
            rows[cells[0]] = (cells[1], cells[2], cells[3])
    return rows


def test_cpu_mode_runs_end_to_end(tmp_path):
    result, elapsed = device_check(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert elapsed < 120, f"the CPU mode took {elapsed:.0f} s"
    rows = summary(tmp_path)
    assert list(rows) == STEPS, output
    retinanet = "skipped: no GPU" if (REPO / "tests" / "test_integrations.py").exists() else "missing"
    expected = dict.fromkeys(STEPS, "skipped: no GPU")
    expected.update(environment="ok", benchmark="ok", retinanet=retinanet)
    assert {step: status for step, (status, _, _) in rows.items()} == expected, output
    for step, (_, seconds, last) in rows.items():
        assert int(seconds) >= 0 and last, (step, last)
    assert rows["benchmark"][2].startswith("forward_backward N=1 A=2000 C=80"), rows["benchmark"]
    # The summary is what the run prints last.
    printed = result.stdout.rstrip().splitlines()
    assert printed[-1].startswith("total ") and str(tmp_path) in printed[-1]
    assert "| benchmark_compiled | skipped: no GPU |" in printed[-3]

    # At most 8 files, every step's section in its log.
    assert {p.name for p in tmp_path.iterdir()} == LOGS
    logs = {name: (tmp_path / name).read_text() for name in LOGS}
    sections = [("environment", "environment.log"), ("build", "build.log"), ("benchmark", "benchmark.log"), ("training_step", "retinanet.log"), ("benchmark_compiled", "benchmark.log")]
    sections += [(tool, "sanitizer.log") for tool in ("memcheck", "racecheck", "initcheck", "synccheck")]
    for step, log in sections:
        assert f"=== {step} (limit " in logs[log] and f"=== {step}: {expected[step]}, " in logs[log], step
    assert "torch " in logs["environment.log"]
    assert "Driver Version" in logs["environment.log"] or "nvidia-smi: not found" in logs["environment.log"]
    assert "installed extension: {" in logs["build.log"]
    # The prebuilt-extension check runs (and, for a build without CUDA kernels, declines).
    assert re.search(r"not reusing \S+: it has no CUDA kernels", logs["build.log"]), logs["build.log"]
    assert "| mode | N | A | C | dtype | provider | median ms |" in logs["benchmark.log"]
    with open(tmp_path / "benchmark.csv", newline="") as f:
        bench = list(csv.DictReader(f))
    assert sorted({(r["provider"], r["mode"], r["dtype"]) for r in bench}) == sorted(
        (p, m, d) for p in ("fused", "fused_pooled", "official_pooled", "dense_masked") for m in ("forward", "forward_backward") for d in ("float32", "bfloat16")
    )
    assert len(bench) == 16 and {r["device"] for r in bench} == {"cpu"}


def test_every_provider_the_gpu_steps_name_exists():
    """The GPU-only steps' benchmark runs (never run here) name providers the benchmark has: a
    misspelt one would cost the GPU session its step."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench.providers import PROVIDERS

    named = re.findall(r"(?:--providers |providers=)([\w,]+)", SCRIPT.read_text())
    assert len(named) >= 3, named  # benchmark (a variable), forward_walks, benchmark_compiled
    for names in named:
        assert set(names.split(",")) <= set(PROVIDERS), names


def test_a_failing_step_fails_the_run(tmp_path):
    """With a Python that fails at once, every step that runs it fails, visibly, and the exit
    status says so."""
    result, _ = device_check(tmp_path, python=shutil.which("false") or "/bin/false")
    assert result.returncode == 1, result.stdout
    rows = summary(tmp_path)
    for step in ("environment", "build", "benchmark"):
        assert rows[step][0] == "FAILED (exit 1)", (step, rows[step])
    assert rows["cuda_tests"][0] == "skipped: no GPU"


def test_the_deadline_stops_a_hung_step_and_skips_the_rest(tmp_path):
    hung = tmp_path / "hung_python"
    hung.write_text("#!/bin/sh\nsleep 60\n")
    hung.chmod(0o755)
    out = tmp_path / "out"
    result, elapsed = device_check(out, python=hung, deadline=6)
    assert result.returncode == 1, result.stdout
    assert elapsed < 30, f"took {elapsed:.0f} s: the hung step was not stopped at its limit"
    rows = summary(out)
    assert rows["environment"][0] == "FAILED: timeout after 6 s", rows["environment"]
    for step in STEPS[1:]:
        assert rows[step][0] == "skipped: out of time", (step, rows[step])


@pytest.fixture
def sanitizer_case(monkeypatch):
    """tools/sanitizer_case.py as a module; the poisoning it switches on is undone after."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    monkeypatch.setenv("DRLOSS_POISON_OUTPUTS", "1")
    import sanitizer_case

    return sanitizer_case


def test_sanitizer_case_matches_float64(sanitizer_case, generator, capsys):
    """The cases compute the right values on the CPU kernels (the device check runs them on
    CUDA under compute-sanitizer)."""
    assert sanitizer_case.main(["--device", "cpu", "--seed", str(generator % 2**32)]) == 0
    out = capsys.readouterr().out
    runs = sanitizer_case.case_runs()
    assert f"{len(runs)} of {len(runs)} cases match float64" in out and "WRONG" not in out
    assert out.count(": ok (") == len(runs)


def test_sanitizer_cases_cover_the_paths_only_some_inputs_reach(sanitizer_case):
    """The case list holds float16 and bfloat16 logits with C = 80 at storage offsets 1-7, a
    temperature below 1/64 with C = 80 and with C below a 16-bit vector, and more work items
    than any one-wave grid has blocks (8 per multiprocessor, at most 300 of them); and the
    forward's aligned and pipelined walks in every dtype they take, the pipelined one with
    several items per block."""
    runs = sanitizer_case.case_runs()
    for dtype in (torch.float16, torch.bfloat16):
        offsets = {case.offset for d, _, case in runs if d == dtype and case.shape[-1] == 80}
        assert set(range(1, 8)) <= offsets, (dtype, offsets)
    running = [case for _, _, case in runs if max(1 / case.hyper[0], 1 / case.hyper[1]) > 64]
    assert {case.shape[-1] >= 8 for case in running} == {True, False}
    items = [case.shape[0] * case.blocks_per_group for _, _, case in runs if case.blocks_per_group and case.shape[-1] == 80]
    assert items and max(items) > 8 * 300
    assert {label_dtype for _, label_dtype, _ in runs} == {torch.int32, torch.int64}
    walks = {(case.forward_walk, dtype) for dtype, _, case in runs if case.forward_walk}
    assert {(walk, dtype) for walk in ("aligned", "pipelined") for dtype in (torch.float32, torch.float16, torch.bfloat16)} <= walks
    assert any(case.forward_walk == "pipelined" and case.blocks_per_group for _, _, case in runs)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda losses, grad: (losses, grad.flatten().index_fill(0, torch.tensor([grad.numel() // 2]), float("nan")).view_as(grad)), id="one-gradient-element-unwritten"),
        pytest.param(lambda losses, grad: (losses, grad.flatten().index_put((torch.tensor([7]),), grad.flatten()[7] * 1.05 + 1e-3 * grad.abs().max()).view_as(grad)), id="one-gradient-element-off"),
        pytest.param(lambda losses, grad: (losses * (1 + 1e-3), grad), id="losses-off-by-0.1%"),
        pytest.param(lambda losses, grad: (losses, grad.to(torch.float64)), id="gradient-in-the-wrong-dtype"),
        # most of a gradient lies far below its largest element: each is checked against its own bound
        pytest.param(lambda losses, grad: (losses, torch.where(grad.abs() < 1e-4 * grad.abs().max(), 0, grad)), id="small-gradient-elements-zeroed"),
    ],
)
def test_sanitizer_case_rejects_wrong_values(sanitizer_case, monkeypatch, capsys, damage):
    """Finite but wrong results fail the case: values are compared element by element."""
    right = sanitizer_case.run_kernels

    def damaged(logits, labels, grad_losses, first_label, hyper=sanitizer_case.HYPER):
        losses, stats, grad, g = right(logits, labels, grad_losses, first_label, hyper)
        if grad.numel() == 0 or logits.dtype == torch.float64:  # damage the other dtypes
            return losses, stats, grad, g
        losses, grad = damage(losses, grad)
        return losses, stats, grad, g

    monkeypatch.setattr(sanitizer_case, "run_kernels", damaged)
    assert sanitizer_case.main(["--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "WRONG" in out and "DIFFER" in out


def test_selected_steps_run_and_the_others_are_reported_not_selected(tmp_path):
    """DEVICE_CHECK_STEPS runs a subset (a rerun in the same lease); the summary still lists every
    step, in order."""
    result, _ = device_check(tmp_path, steps="environment,benchmark")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = summary(tmp_path)
    assert list(rows) == STEPS
    assert rows["environment"][0] == "ok" and rows["benchmark"][0] == "ok"
    for step in set(STEPS) - {"environment", "benchmark"}:
        assert rows[step][0] == "skipped: not selected", (step, rows[step])


def test_unknown_selected_step_is_refused(tmp_path):
    result, _ = device_check(tmp_path, steps="environment,bench")
    assert result.returncode == 2 and "names no step 'bench'" in result.stderr


def test_python3_found_on_path_is_the_one_used_throughout(tmp_path):
    """With PYTHON unset the check runs the python3 first on PATH (a virtual environment's, as on
    the GPU machine) in every step, also after it puts the CUDA toolkit's and the environment's
    folders on PATH; the interpreter a venv's python3 links to lacks the venv's torch."""
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "python3").exists():
        pytest.skip(f"{venv_bin} has no python3")
    result, _ = device_check(tmp_path, python=None, path=f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    rows = summary(tmp_path)
    assert rows["environment"][0] == "ok" and rows["benchmark"][0] == "ok", output
    assert f"torch {torch.__version__}" in (tmp_path / "environment.log").read_text()


# A python3 that runs nothing: it prints what it was asked to run (with the forward walk its
# environment sets), and what pytest and the kernel profiler print last.
STUB_PYTHON = """#!/usr/bin/env bash
echo "stub: DRLOSS_CUDA_FORWARD=${DRLOSS_CUDA_FORWARD:-unset} $*"
case "$*" in
  *"-m pytest"*) echo "185 passed in 1.00s" ;;
  *profile_cuda_kernels.py*) echo "forward kernel median us by walk: (stub)" ;;
esac
"""


@pytest.mark.parametrize("limit", [180, 40])
def test_forward_walks_step_measures_first_and_tests_as_time_allows(tmp_path, limit):
    """The forward_walks step (GPU only: here with a stub python) times the walks' whole calls
    in one benchmark run and their kernels, then reruns tests/test_cuda.py with the pipelined
    walk when 60 s of the step's limit are left, and ends with the walks' comparison line."""
    stub = tmp_path / "python3"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    env = dict(os.environ, PYTHON=str(stub), STEP_LIMIT=str(limit))
    for name in ("DEVICE_CHECK_CPU", "DRLOSS_CUDA_FORWARD"):
        env.pop(name, None)
    result = subprocess.run(["bash", str(SCRIPT), "--step", "forward_walks"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    runs = [line.split(" ", 2)[1:] for line in lines if line.startswith("stub: ") and "import xdist" not in line]
    assert runs[0][0] == "DRLOSS_CUDA_FORWARD=unset" and "benchmarks/benchmark.py" in runs[0][1]
    assert "--providers fused,fused_aligned,fused_pipelined" in runs[0][1]
    assert runs[1][0] == "DRLOSS_CUDA_FORWARD=unset" and "tools/profile_cuda_kernels.py" in runs[1][1]
    assert "--forward-walks general,aligned,pipelined" in runs[1][1]
    if limit >= 60:
        assert len(runs) == 3 and runs[2] == ["DRLOSS_CUDA_FORWARD=pipelined", "-m pytest -q -rs -m cuda -n 4 tests/test_cuda.py"], runs
    else:
        assert len(runs) == 2, runs
        assert any("tests/test_cuda.py with DRLOSS_CUDA_FORWARD=pipelined: not run" in line for line in lines)
    assert lines[-1] == "forward kernel median us by walk: (stub)"


# A python3 for the build step: the GPU's capability, the prebuilt-extension check's verdict
# (PREBUILT_RC), and no real build. What it was asked to run goes to stderr, apart from what the
# step reads.
BUILD_STUB_PYTHON = """#!/usr/bin/env bash
echo "stub: $*" >&2
echo "PYTHONPATH: $PYTHONPATH" >&2
case "$*" in
  *get_device_capability*) echo "9.0" ;;
  *prebuilt_extension.py*) echo "prebuilt check: exit $PREBUILT_RC"; exit "$PREBUILT_RC" ;;
esac
"""


@pytest.mark.parametrize("reusable", [True, False])
def test_build_step_reuses_a_matching_prebuilt_extension_instead_of_building(tmp_path, reusable):
    """The build step (GPU only: here with a stub python) asks tools/prebuilt_extension.py
    first, for the GPU's own architecture; pip builds only when the check declines."""
    stub = tmp_path / "python3"
    stub.write_text(BUILD_STUB_PYTHON)
    stub.chmod(0o755)
    env = dict(os.environ, PYTHON=str(stub), PREBUILT_RC="0" if reusable else "1")
    env.pop("DEVICE_CHECK_CPU", None)
    result = subprocess.run(["bash", str(SCRIPT), "--step", "build"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [line[len("stub: "):] for line in result.stderr.splitlines() if line.startswith("stub: ")]
    assert "get_device_capability" in runs[0]
    assert runs[1] == "tools/prebuilt_extension.py --arch 9.0"
    # A reused extension is not pip-installed: every step finds the checkout's package first.
    paths = {line.split(": ", 1)[1].split(":")[0] for line in result.stderr.splitlines() if line.startswith("PYTHONPATH: ")}
    assert paths == {str(REPO)}, paths
    if reusable:
        assert len(runs) == 2, runs
        assert result.stdout.rstrip().splitlines()[-1] == "prebuilt check: exit 0"
    else:
        assert runs[2].startswith("-m pip install --no-index --no-build-isolation --no-deps -v -e ."), runs
        assert "assert info['cuda']" in runs[3] and len(runs) == 4, runs

