"""Builds drloss_cuda._C: the CPU kernels always, the CUDA kernels when they can be built.

CUDA is built when the installed torch has CUDA and nvcc is found (CUDA_HOME), unless
DRLOSS_CPU_ONLY=1. FORCE_CUDA=1 builds the CUDA kernels even when no GPU is visible (for
example in a container build), and fails loudly if that is impossible.
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


def want_cuda():
    if env_flag("DRLOSS_CPU_ONLY"):
        return False
    can_build = torch.version.cuda is not None and CUDA_HOME is not None
    if env_flag("FORCE_CUDA"):
        if not can_build:
            sys.exit(
                "drloss_cuda: FORCE_CUDA=1 but the CUDA kernels cannot be built: torch "
                f"{torch.__version__} has CUDA {torch.version.cuda}, CUDA_HOME is {CUDA_HOME}."
            )
        return True
    return can_build


def extension():
    csrc = os.path.join("csrc")
    sources = [os.path.join(csrc, "ops.cpp")] + sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    define_macros = []
    # -fno-trapping-math lets the compiler turn the kernels' selects into vector blends (the
    # kernels never read floating-point exception flags); it changes no result.
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
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=env_flag("DRLOSS_USE_NINJA"))},
)
