"""tools/prebuilt_extension.py: when the device check may reuse an extension built elsewhere
instead of building one. Every condition is checked alone against a build record that meets all
the others; the script itself runs against this machine's build."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import drloss_cuda

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

from prebuilt_extension import has_machine_code_for, reasons_not_to_reuse  # noqa: E402

DIGEST = "ab" * 32
EXTENSION = REPO / "drloss_cuda" / "_C.cpython-312-x86_64-linux-gnu.so"
GOOD = {"cuda": True, "cuda_archs": "9.0", "torch": "2.11.0+cu130", "sources": DIGEST, "cuda_absent_reason": None}


def reasons(info=None, extension=EXTENSION, torch_version="2.11.0+cu130", arch="9.0", digest=DIGEST):
    return reasons_not_to_reuse({**GOOD, **(info or {})}, extension, torch_version, arch, digest, repo=REPO)


def test_a_build_from_these_sources_for_this_torch_and_gpu_is_reused():
    assert reasons() == []
    assert reasons({"cuda_archs": "8.0;9.0+PTX"}) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"info": {"cuda": False, "cuda_archs": None, "cuda_absent_reason": "DRLOSS_CPU_ONLY=1"}}, "no CUDA kernels (DRLOSS_CPU_ONLY=1)"),
        ({"arch": "10.0"}, "built for CUDA architectures 9.0, not 10.0"),
        ({"info": {"cuda_archs": "8.0;8.6"}}, "built for CUDA architectures 8.0;8.6, not 9.0"),
        ({"torch_version": "2.11.0+cu128"}, "built against torch 2.11.0+cu130, this is torch 2.11.0+cu128"),
        ({"digest": "cd" * 32}, "other sources than this checkout's"),
        ({"info": {"sources": None}}, "other sources than this checkout's"),
        ({"extension": Path("/elsewhere/drloss_cuda/_C.so")}, "is not this checkout's"),
    ],
)
def test_any_mismatch_means_a_build(change, expected):
    found = reasons(**change)
    assert len(found) == 1 and expected in found[0], found


def test_only_machine_code_for_the_gpu_itself_counts():
    assert has_machine_code_for("7.5;8.0 9.0+PTX", "9.0") and has_machine_code_for("9.0a", "9.0")
    assert not has_machine_code_for("8.0", "8.6")  # runs there, but not as a native build would
    assert not has_machine_code_for("8.0+PTX", "9.0")  # compiled by the driver at load
    assert not has_machine_code_for("Hopper", "9.0") and not has_machine_code_for(None, "9.0")


def test_the_script_judges_this_machines_build():
    info = drloss_cuda.build_info()
    arch = info["cuda_archs"].split(";")[0].removesuffix("+PTX") if info["cuda"] else "9.0"
    out = subprocess.run([sys.executable, str(REPO / "tools" / "prebuilt_extension.py"), "--arch", arch], capture_output=True, text=True)
    if info["cuda"] and info["torch"] == torch.__version__:
        assert out.returncode == 0 and out.stdout.startswith("reused "), out.stdout + out.stderr
    else:
        assert out.returncode == 1 and out.stdout.startswith("not reusing "), out.stdout + out.stderr
