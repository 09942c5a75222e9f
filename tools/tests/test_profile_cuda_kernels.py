"""tools/profile_cuda_kernels.py without a GPU: its options, and the A/B of the forward walks
with the profiler's timings replaced (the GPU run is the device check's forward_walks step)."""

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "profile_cuda_kernels.py"


@pytest.fixture
def profiler(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import profile_cuda_kernels

    # The profiler sets these for its calls; monkeypatch restores them after the test.
    for name in ("DRLOSS_CUDA_FORWARD", "DRLOSS_CUDA_BLOCKS_PER_GROUP"):
        monkeypatch.setenv(name, "")
    return profile_cuda_kernels


def test_help_lists_the_walk_options_with_their_defaults():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--forward-walks" in out and "(default general)" in out
    assert "--rounds" in out and "(default 1)" in out


def test_unknown_walk_is_refused_before_any_gpu_is_needed():
    done = subprocess.run([sys.executable, str(SCRIPT), "--forward-walks", "general,fast"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown walk" in done.stderr


def test_walks_are_timed_in_turn_over_every_round(profiler, monkeypatch, capsys):
    """Each round times every walk once, with DRLOSS_CUDA_FORWARD set for its calls; a walk's
    figure is the median over all its rounds' launches; each walk's loss is printed against the
    general walk's first."""
    order = []

    def fake_kernel_times(fn, repeats):
        fn()
        walk = profiler.os.environ["DRLOSS_CUDA_FORWARD"]
        order.append(walk)
        forward_us = {"general": 200.0, "aligned": 190.0, "pipelined": 180.0}[walk] + len(order) % 2
        return {f"forward_aligned_kernel<{walk}>": [forward_us] * repeats, "finalize_kernel": [4.0] * repeats}

    monkeypatch.setattr(profiler, "kernel_times", fake_kernel_times)
    monkeypatch.setattr(profiler, "host_launch_us", lambda fn, calls=50: 10.0)
    from bench.floor import pass_bytes
    from bench.inputs import DTYPES, make_inputs

    x, y = make_inputs(2, 100, 80, DTYPES["float32"], "cpu", torch.Generator().manual_seed(0))
    walks = ["general", "aligned", "pipelined"]
    args = types.SimpleNamespace(rounds=3, repeats=4)
    medians = profiler.profile_layout("2x100x80 float32 per_image", x, y, pass_bytes(x, y), 1e12, walks, [0], args)
    assert order == walks * 3
    assert set(medians) == set(walks) and medians["pipelined"] < medians["aligned"] < medians["general"]
    out = capsys.readouterr().out
    for walk in walks:
        assert f"forward walk {walk:<9} loss" in out
        assert re.search(rf"walk {walk} +blocks/group auto forward +12 launches", out), out
