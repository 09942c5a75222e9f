"""Builds drloss_cuda._C: the CPU kernels always, the CUDA kernels when they can be built.

CUDA is built when the installed torch has CUDA, the CUDA toolkit is found (CUDA_HOME, or
torch's guess from the nvcc on PATH) and the GPU architectures are known (a visible GPU, or
TORCH_CUDA_ARCH_LIST), unless DRLOSS_CPU_ONLY=1. Where it cannot be, the CPU kernels are built
and the reason printed; FORCE_CUDA=1 makes that an error. The build uses ninja when it is
installed (MAX_JOBS sets its parallelism); DRLOSS_USE_NINJA=0 turns it off.
"""

import glob
import os
import sys

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


def want_cuda():
    if env_flag("DRLOSS_CPU_ONLY"):
        return False
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} was built without CUDA"
    else:
        problem = cuda_toolkit_problem() or cuda_arch_problem()
    if env_flag("FORCE_CUDA"):
        if problem is not None:
            sys.exit(f"drloss_cuda: FORCE_CUDA=1 but the CUDA kernels cannot be built: {problem}.")
        return True
    if problem is not None:
        print(f"drloss_cuda: building the CPU kernels only: {problem}.", file=sys.stderr)
        return False
    return True


def extension():
    csrc = "csrc"
    sources = [os.path.join(csrc, "ops.cpp")] + sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    define_macros = []
    # -fno-trapping-math lets the compiler turn the kernels' selects into vector blends (the
    # kernels never read floating-point exception flags); it changes no result. Without it the
    # AVX2 clone's loops are not vectorized at all (docs/design.md, "CPU kernels").
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math"]
    link_flags = ["-fopenmp"]
    if sys.platform == "darwin":  # Apple clang has no -fopenmp: fall back to serial kernels
        cxx_flags.remove("-fopenmp")
        link_flags.remove("-fopenmp")
    if want_cuda():
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
    return CppExtension(
        "drloss_cuda._C",
        sources,
        include_dirs=[os.path.join(HERE, csrc)],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


setup(
    packages=find_packages(include=["drloss_cuda", "drloss_cuda.*"]),
    ext_modules=[extension()],
    # torch's builder falls back to plain setuptools (one file at a time) when ninja is missing.
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=env_flag_default_on("DRLOSS_USE_NINJA"))},
)
