"""Builds drloss_cuda._C: the CPU kernels always, the CUDA kernels when they can be built.

CUDA is built when the installed torch has CUDA, the CUDA toolkit is found (CUDA_HOME, or
torch's guess from the nvcc on PATH) and the GPU architectures are known (a visible GPU, or
TORCH_CUDA_ARCH_LIST), unless DRLOSS_CPU_ONLY=1. Where it cannot be, the CPU kernels are built
and the reason printed; FORCE_CUDA=1 makes that an error. The build uses ninja when it is
installed (MAX_JOBS sets its parallelism); DRLOSS_USE_NINJA=0 turns it off.
"""

import glob
import importlib.util
import json
import os
import sys

import setuptools
from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import (
        CUDA_HOME,
        BuildExtension,
        CppExtension,
        CUDAExtension,
    )
except ImportError:
    sys.exit(
        "drloss_cuda: PyTorch must be installed before drloss_cuda is built, and pip must not "
        "build it in an isolated environment (which would not see your torch). Install torch "
        "first, then run:\n    pip install --no-build-isolation -e ."
    )

HERE = os.path.dirname(os.path.abspath(__file__))


def load_build_sources():
    """drloss_cuda/_build_sources.py, by its path: importing the package needs the extension."""
    path = os.path.join(HERE, "drloss_cuda", "_build_sources.py")
    spec = importlib.util.spec_from_file_location("drloss_cuda_build_sources", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env_flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def env_flag_default_on(name):
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def cuda_toolkit_problem():
    """Why the CUDA toolkit torch found cannot build the kernels, or None if it can."""
    if CUDA_HOME is None:
        return "no CUDA toolkit was found (set CUDA_HOME to its root, the folder above bin/nvcc)"
    if not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")):
        # torch guesses CUDA_HOME as the folder above the first nvcc on PATH, which is wrong
        # when that nvcc is a wrapper script or a symlink outside the toolkit.
        return (
            f"CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h (is the nvcc on PATH a "
            "wrapper outside the toolkit?): set CUDA_HOME to the toolkit's root"
        )
    return None


def cuda_arch_problem():
    """Why the GPU architectures to build for are unknown, or None if they are known."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        return None
    # Without the variable torch builds for the GPUs it sees, and fails when it sees none.
    if torch.cuda.device_count() == 0:
        return 'no GPU is visible: set TORCH_CUDA_ARCH_LIST to the architectures to build for, e.g. "8.0;9.0"'
    return None


def cuda_build_plan():
    """(build the CUDA kernels?, why not when they are not built)."""
    if env_flag("DRLOSS_CPU_ONLY"):
        return False, "DRLOSS_CPU_ONLY=1 was set when it was built"
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} was built without CUDA"
    else:
        problem = cuda_toolkit_problem() or cuda_arch_problem()
    if env_flag("FORCE_CUDA"):
        if problem is not None:
            sys.exit(f"drloss_cuda: FORCE_CUDA=1 but the CUDA kernels cannot be built: {problem}.")
        return True, None
    if problem is not None:
        # pip shows this only with -v; `python -m drloss_cuda` and the CUDA kernels' stand-ins
        # (csrc/no_cuda_kernels.cpp) say it again from the built extension.
        print(f"drloss_cuda: building the CPU kernels only: {problem}.", file=sys.stderr)
        return False, problem
    return True, None


def cuda_archs():
    """The architectures torch's builder targets: TORCH_CUDA_ARCH_LIST, else the visible GPUs'."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if archs:
        return archs
    return ";".join(sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}))


def hex_macro(name, text):
    # Build facts travel as hex: a string macro with spaces and quotes does not survive the
    # shell and ninja quoting of every toolchain; the extension decodes it.
    return (name, text.encode().hex() or "0")


def build_record(with_cuda, cuda_absent_reason):
    """What `python -m drloss_cuda` prints about the build, compiled into the extension."""
    return json.dumps(
        {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_archs": cuda_archs() if with_cuda else None,
            "cuda_absent_reason": cuda_absent_reason,
            "sources": load_build_sources().source_digest(HERE, with_cuda),
        }
    )


def extension():
    csrc = "csrc"
    # The op (schemas, CPU registration), its checks, Meta kernels and autograd, the CPU kernels.
    ops = ["ops.cpp", "checks.cpp", "meta.cpp", "autograd.cpp"]
    sources = [os.path.join(csrc, name) for name in ops] + sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    define_macros = []
    # -fno-trapping-math lets the compiler turn the kernels' selects into vector blends (the
    # kernels never read floating-point exception flags); it changes no result. Without it the
    # AVX2 clone's loops are not vectorized at all (docs/design.md, "CPU kernels").
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math"]
    link_flags = ["-fopenmp"]
    if sys.platform == "darwin":  # Apple clang has no -fopenmp: fall back to serial kernels
        cxx_flags.remove("-fopenmp")
        link_flags.remove("-fopenmp")
    with_cuda, cuda_absent_reason = cuda_build_plan()
    define_macros.append(hex_macro("DRLOSS_BUILD_RECORD_HEX", build_record(with_cuda, cuda_absent_reason)))
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        define_macros.append(("DRLOSS_WITH_CUDA", None))
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(
            "drloss_cuda._C",
            sources,
            include_dirs=[os.path.join(HERE, csrc)],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    sources.append(os.path.join(csrc, "no_cuda_kernels.cpp"))
    define_macros.append(hex_macro("DRLOSS_CUDA_ABSENT_REASON_HEX", cuda_absent_reason))
    return CppExtension(
        "drloss_cuda._C",
        sources,
        include_dirs=[os.path.join(HERE, csrc)],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


def license_metadata():
    """BSD-3-Clause as each setuptools takes it: an SPDX expression from 77 on, where the older
    `license` field is deprecated; the plain field before, which does not know the expression."""
    major = int(setuptools.__version__.split(".")[0])
    field = "license_expression" if major >= 77 else "license"
    return {field: "BSD-3-Clause", "license_files": ["LICENSE"]}


setup(
    **license_metadata(),
    packages=find_packages(include=["drloss_cuda", "drloss_cuda.*"]),
    ext_modules=[extension()],
    # torch's builder falls back to plain setuptools (one file at a time) when ninja is missing.
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=env_flag_default_on("DRLOSS_USE_NINJA"))},
)
