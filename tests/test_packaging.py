"""Packaging: the version has one source, and the sdist carries every file a build needs."""

import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import pytest
import torch

import drloss_cuda
from drloss_cuda._build_sources import SOURCE_SUFFIXES, source_digest, source_files, source_root
from problems import expected_loss

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_version_matches_the_installed_metadata():
    try:
        installed = importlib.metadata.version("drloss_cuda")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("drloss_cuda is imported from the source tree without being installed")
    assert drloss_cuda.__version__ == installed


def test_sdist_carries_every_source_and_header(tmp_path):
    pytest.importorskip("build", reason="the `build` package is needed to make an sdist")
    if not (ROOT / "setup.py").exists():
        pytest.skip("not run from a source tree")
    # --no-isolation: the sdist is made with the torch installed here (setup.py imports it)
    # instead of a freshly downloaded one; -x skips the check of build-system.requires, which
    # only matter for building a wheel.
    out = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "-x", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (sdist,) = tmp_path.glob("drloss_cuda-*.tar.gz")
    assert sdist.name == f"drloss_cuda-{drloss_cuda.__version__}.tar.gz"
    with tarfile.open(sdist) as archive:
        packed = {pathlib.PurePosixPath(*pathlib.PurePosixPath(name).parts[1:]) for name in archive.getnames()}

    needed = {pathlib.PurePosixPath(p.relative_to(ROOT).as_posix()) for p in (ROOT / "csrc").rglob("*") if p.suffix in SOURCE_SUFFIXES}
    needed |= {pathlib.PurePosixPath(p.relative_to(ROOT).as_posix()) for p in (ROOT / "drloss_cuda").glob("*.py")}
    needed |= {pathlib.PurePosixPath(name) for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "LICENSE", "CHANGELOG.md")}
    assert any(p.suffix == ".cu" for p in needed) and any(p.suffix == ".h" for p in needed)
    assert sorted(map(str, needed - packed)) == []
    built = [p for p in packed if p.suffix in {".so", ".o", ".pyd"} or "__pycache__" in p.parts]
    assert built == [], "the sdist must not carry build outputs"
    results = [p for p in packed if p.parts[:2] == ("benchmarks", "results") or p.parts[:1] == ("tools",)]
    assert results == [], "the sdist ships no measured results and no development tools"


def test_installed_metadata_declares_the_license():
    try:
        metadata = importlib.metadata.metadata("drloss_cuda")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("drloss_cuda is imported from the source tree without being installed")
    # License-Expression from setuptools 77 on, License before (setup.py's license_metadata).
    assert (metadata.get("License-Expression") or metadata.get("License")) == "BSD-3-Clause"
    assert "LICENSE" in (metadata.get_all("License-File") or [])



# Runs `setup.py --name` once per case in one process (importing torch once): torch's CUDA
# version, torch's CUDA_HOME guess and the environment are set per case, and no GPU is visible.
SETUP_DRIVER = """
import contextlib, io, json, os, runpy, sys
import torch, torch.utils.cpp_extension as cpp_extension
torch.cuda.device_count = lambda: 0
cuda_extensions = []  # setup.py's CUDAExtension calls: whether it chose the CUDA build
make_cuda_extension = cpp_extension.CUDAExtension
def recording_cuda_extension(*args, **kwargs):
    cuda_extensions.append(args[0])
    return make_cuda_extension(*args, **kwargs)
cpp_extension.CUDAExtension = recording_cuda_extension
results = []
for case in json.loads(sys.argv[1]):
    for name in ("FORCE_CUDA", "DRLOSS_CPU_ONLY", "TORCH_CUDA_ARCH_LIST"):
        os.environ.pop(name, None)
    os.environ.update(case["env"])
    torch.version.cuda = case["torch_cuda"]
    cpp_extension.CUDA_HOME = case["cuda_home"]
    sys.argv = ["setup.py", "--name"]
    out, err, status = io.StringIO(), io.StringIO(), 0
    cuda_extensions.clear()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path("setup.py", run_name="__main__")
        except SystemExit as stop:
            status = stop.code or 0
    results.append({"status": status, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "cuda": bool(cuda_extensions)})
print(json.dumps(results))
"""

# (case, torch.version.cuda, toolkit, TORCH_CUDA_ARCH_LIST, why CUDA cannot be built)
CANNOT_BUILD_CUDA = [
    ("torch without CUDA", None, "complete", "9.0", "was built without CUDA"),
    ("no toolkit", "13.0", None, "9.0", "no CUDA toolkit was found"),
    ("CUDA_HOME above a wrapper nvcc", "13.0", "no headers", "9.0", "has no include/cuda_runtime.h"),
    ("no GPU and no architecture", "13.0", "complete", "", "set TORCH_CUDA_ARCH_LIST"),
]


def fake_toolkit(root, kind):
    if kind is None:
        return None
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "nvcc").write_text("")
    if kind == "complete":
        (root / "include").mkdir()
        (root / "include" / "cuda_runtime.h").write_text("")
    return str(root)


@pytest.fixture(scope="module")
def setup_outcomes(tmp_path_factory):
    """{(case, forced): {"status", "stdout", "stderr", "cuda"}}: setup.py's choice in every case."""
    import json

    if not (ROOT / "setup.py").exists():
        pytest.skip("not run from a source tree")
    tmp = tmp_path_factory.mktemp("toolkits")
    cases, keys = [], []
    for index, (case, torch_cuda, toolkit, arch_list, _) in enumerate(CANNOT_BUILD_CUDA):
        cuda_home = fake_toolkit(tmp / str(index), toolkit)
        for forced in (True, False):
            env = {"TORCH_CUDA_ARCH_LIST": arch_list, **({"FORCE_CUDA": "1"} if forced else {})}
            cases.append({"env": env, "torch_cuda": torch_cuda, "cuda_home": cuda_home})
            keys.append((case, forced))
    complete = fake_toolkit(tmp / "buildable", "complete")
    cases.append({"env": {"TORCH_CUDA_ARCH_LIST": "9.0", "FORCE_CUDA": "1"}, "torch_cuda": "13.0", "cuda_home": complete})
    keys.append(("buildable", True))
    out = subprocess.run([sys.executable, "-c", SETUP_DRIVER, json.dumps(cases)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(zip(keys, json.loads(out.stdout.splitlines()[-1])))


@pytest.mark.parametrize("case, expected", [(c[0], c[-1]) for c in CANNOT_BUILD_CUDA], ids=[c[0] for c in CANNOT_BUILD_CUDA])
def test_setup_says_why_it_cannot_build_cuda(setup_outcomes, case, expected):
    forced = setup_outcomes[(case, True)]  # FORCE_CUDA=1: stop, with the reason
    assert isinstance(forced["status"], str), forced
    assert "FORCE_CUDA=1 but the CUDA kernels cannot be built" in forced["status"]
    assert expected in forced["status"]
    automatic = setup_outcomes[(case, False)]  # otherwise: the CPU kernels only, and why
    assert automatic["status"] == 0, automatic
    assert automatic["stdout"].split() == ["drloss_cuda"]
    assert not automatic["cuda"]
    assert "building the CPU kernels only" in automatic["stderr"]
    assert expected in automatic["stderr"]


def test_setup_builds_cuda_with_a_toolkit_and_an_architecture(setup_outcomes):
    outcome = setup_outcomes[("buildable", True)]
    assert outcome["status"] == 0, outcome
    assert outcome["stdout"].split() == ["drloss_cuda"]
    assert outcome["cuda"]
    assert "cannot be built" not in outcome["stderr"] and "CPU kernels only" not in outcome["stderr"]


def test_reference_imports_without_the_extension():
    code = (
        "import sys, torch\n"
        "import drloss_cuda.reference as r\n"
        "assert 'drloss_cuda._C' not in sys.modules, 'reference loaded the extension'\n"
        "x = torch.zeros(1, 2, 3); y = torch.zeros(1, 2, dtype=torch.long)\n"
        "print(float(r.sigmoid_dr_loss(x, y)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == pytest.approx(expected_loss(0.5, 0.5), rel=1e-6)


def test_build_info_says_what_was_built():
    info = drloss_cuda.build_info()
    assert set(info) == {"openmp", "cuda", "torch", "torch_cuda", "cuda_archs", "cuda_absent_reason", "sources"}
    assert re.fullmatch("[0-9a-f]{64}", info["sources"]), info["sources"]
    if sys.platform.startswith("linux"):
        assert info["openmp"], "the CPU kernels were built without OpenMP: they would run on one core"
    assert info["torch"] == torch.__version__, "the extension was built against another torch"
    assert info["torch_cuda"] == torch.version.cuda
    if info["cuda"]:
        assert info["cuda_archs"] and info["cuda_absent_reason"] is None
    else:
        assert info["cuda_archs"] is None and info["cuda_absent_reason"]


def test_python_m_drloss_cuda_prints_the_build():
    info = drloss_cuda.build_info()
    out = subprocess.run([sys.executable, "-m", "drloss_cuda"], capture_output=True, text=True, check=True).stdout
    assert f"drloss_cuda {drloss_cuda.__version__}" in out
    assert f"built against torch {info['torch']}" in out
    assert f"built from sources {info['sources'][:12]}" in out
    if info["cuda"]:
        assert f"CUDA kernels: yes, for architectures {info['cuda_archs']}" in out
    else:
        assert f"CUDA kernels: no, because {info['cuda_absent_reason']}" in out
        assert "FORCE_CUDA=1 pip install --no-build-isolation" in out


def test_the_build_records_the_sources_it_was_compiled_from():
    root = source_root(os.path.dirname(drloss_cuda.__file__))
    if root is None:
        pytest.skip("an installed package: the sources it was built from are not beside it")
    info = drloss_cuda.build_info()
    assert info["sources"] == source_digest(root, info["cuda"]), (
        f"the extension was built from other sources than those in {root}: rebuild it"
    )


def make_source_tree(root, files):
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def test_the_source_digest_covers_every_source_and_nothing_else(tmp_path):
    files = {"setup.py": "setup()", "csrc/a.h": "ab", "csrc/b.h": "c", "csrc/cuda/k.cu": "kernel", "csrc/notes.md": "x", "csrc/k.o": "\0"}
    tree = make_source_tree(tmp_path / "tree", files)
    assert source_files(tree) == ["csrc/a.h", "csrc/b.h", "csrc/cuda/k.cu", "setup.py"]
    built = source_digest(tree)
    assert re.fullmatch("[0-9a-f]{64}", built)
    changes = {
        "a kernel edited": {"csrc/cuda/k.cu": "kernel2"},
        "setup.py edited": {"setup.py": "setup(x)"},
        "bytes moved between files": {"csrc/a.h": "a", "csrc/b.h": "bc"},
        "a source added": {"csrc/cpu/new.cpp": ""},
    }
    for change, edits in changes.items():
        changed = make_source_tree(tmp_path / change.replace(" ", "_"), {**files, **edits})
        assert source_digest(changed) != built, change
    renamed = {("csrc/c.h" if path == "csrc/b.h" else path): text for path, text in files.items()}
    assert source_digest(make_source_tree(tmp_path / "renamed", renamed)) != built
    not_sources = {**files, "csrc/notes.md": "edited", "csrc/k.o": "rebuilt", "README.md": "new"}
    assert source_digest(make_source_tree(tmp_path / "not_sources", not_sources)) == built
    # A build without the CUDA kernels compiles nothing under csrc/cuda/.
    assert source_files(tree, with_cuda=False) == ["csrc/a.h", "csrc/b.h", "setup.py"]
    cpu_built = source_digest(tree, with_cuda=False)
    assert cpu_built != built
    assert source_digest(tmp_path / "a_kernel_edited", with_cuda=False) == cpu_built
    assert source_digest(tmp_path / "setup.py_edited", with_cuda=False) != cpu_built


def test_python_m_drloss_cuda_says_when_the_sources_changed_since_the_build(tmp_path, monkeypatch):
    import drloss_cuda.__main__ as cli

    tree = make_source_tree(tmp_path, {"setup.py": "setup()", "csrc/a.h": "a", "csrc/cuda/k.cu": "kernel"})
    built = source_digest(tree)
    cpu_built = source_digest(tree, with_cuda=False)
    monkeypatch.setattr(cli, "source_root", lambda package_dir: str(tree))
    assert cli.describe_sources(built, True) == [f"built from sources {built[:12]}, those in {tree}"]
    # A kernel edited: the CUDA build is stale, a CPU-only build is not.
    (tree / "csrc" / "cuda" / "k.cu").write_text("edited")
    assert cli.describe_sources(cpu_built, False) == [f"built from sources {cpu_built[:12]}, those in {tree}"]
    lines = cli.describe_sources(built, True)
    assert lines[0] == f"built from sources {built[:12]}"
    assert lines[1].startswith(f"warning: the sources in {tree} have changed since this build: rebuild")
    (tree / "csrc" / "a.h").write_text("edited")
    assert cli.describe_sources(cpu_built, False)[1].startswith(f"warning: the sources in {tree} have changed")
    monkeypatch.setattr(cli, "source_root", lambda package_dir: None)  # an installed package
    assert cli.describe_sources(built, True) == [f"built from sources {built[:12]}"]


@pytest.mark.parametrize(
    "capability, cuda_archs, expected",
    [
        ((9, 0), "9.0", True),
        ((9, 0), "8.0 9.0", True),
        ((8, 6), "8.0", True),  # machine code runs on later minor versions of its major
        ((8, 0), "8.6", False),
        ((9, 0), "8.0;8.6", False),
        ((9, 0), "8.0+PTX", True),  # PTX, which the driver compiles for a later GPU
        ((7, 5), "8.0+PTX", False),
        ((9, 0), "9.0a", True),
        ((10, 0), "9.0a", False),  # architecture-specific code runs on that architecture only
        ((9, 0), "Hopper", None),  # a name: not judged
        ((9, 0), None, None),
    ],
)
def test_which_gpus_a_build_has_kernels_for(capability, cuda_archs, expected):
    from drloss_cuda.ops import build_runs_on

    assert build_runs_on(capability, cuda_archs) is expected


def test_python_m_drloss_cuda_warns_of_a_gpu_the_build_has_no_kernels_for(monkeypatch):
    import drloss_cuda.__main__ as cli

    gpus = [((9, 0), "NVIDIA H100"), ((8, 6), "NVIDIA A10")]
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli.torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(cli.torch.cuda, "get_device_capability", lambda index: gpus[index][0])
    monkeypatch.setattr(cli.torch.cuda, "get_device_name", lambda index: gpus[index][1])
    assert cli.describe_gpus("8.0") == [
        "warning: cuda:0 (NVIDIA H100, compute capability 9.0) has no kernels in this build: "
        'rebuild with TORCH_CUDA_ARCH_LIST="9.0" pip install --no-build-isolation -e .'
    ]
    assert cli.describe_gpus("8.0;9.0") == []
    assert cli.describe_gpus("Hopper") == []


def test_cuda_tensors_in_a_build_without_cuda_kernels_are_told_why():
    """The kernels registered for CUDA tensors in a CPU-only build, called through the dispatcher
    as a CUDA tensor would call them (no GPU is needed to reach them)."""
    info = drloss_cuda.build_info()
    if info["cuda"]:
        pytest.skip("this build has the CUDA kernels: the stand-ins are not registered")
    logits, labels = torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long)
    hyper = (1.0, 0.1, 6.0, 4.0, 0.5, 0)
    cuda = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    forward = torch.ops.drloss_cuda.sigmoid_dr_loss_forward.default
    backward = torch.ops.drloss_cuda.sigmoid_dr_loss_backward.default
    stats = torch.zeros(1, 6)
    for call in (lambda: forward.redispatch(cuda, logits, labels, *hyper),
                 lambda: backward.redispatch(cuda, torch.ones(1), logits, labels, stats, *hyper)):
        with pytest.raises(RuntimeError) as error:
            call()
        message = str(error.value)
        assert "this build of drloss_cuda has no CUDA kernels" in message
        assert info["cuda_absent_reason"] in message and "python -m drloss_cuda" in message
    # CPU logits with labels elsewhere (a CUDA tensor among CPU ones reaches these kernels too):
    # the device mismatch is what is wrong, and what the error says.
    with pytest.raises(RuntimeError, match="device") as error:
        forward.redispatch(cuda, logits, labels.to("meta"), *hyper)
    assert "no CUDA kernels" not in str(error.value)


def test_build_without_torch_fails_with_a_message_not_a_traceback():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    # `sys.modules["torch"] = None` makes `import torch` fail as in an environment without torch.
    code = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None\n"
        "sys.argv = ['setup.py', '--name']\n"
        "runpy.run_path('setup.py', run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode != 0
    assert "PyTorch must be installed before drloss_cuda is built" in out.stderr
    assert "--no-build-isolation" in out.stderr
    assert "Traceback" not in out.stderr
