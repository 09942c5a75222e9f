"""`python -m drloss_cuda`: what this installation is and what its build contains."""

import os
import platform
import sys

import torch

import drloss_cuda
from drloss_cuda._build_sources import source_digest, source_root
from drloss_cuda.ops import build_runs_on

BUILD_CUDA = (
    "CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=\"8.0;9.0\" FORCE_CUDA=1 "
    "pip install --no-build-isolation -e .   (from the source tree, with a CUDA torch and nvcc)"
)


def describe():
    info = drloss_cuda.build_info()
    lines = [
        f"drloss_cuda {drloss_cuda.__version__} ({drloss_cuda.__file__})",
        f"python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"CUDA device available: {torch.cuda.is_available()}",
        f"built against torch {info['torch']} (CUDA {info['torch_cuda']})",
        f"CPU kernels: yes, OpenMP {'yes' if info['openmp'] else 'no (one thread)'}",
    ]
    if info["torch"] and info["torch"] != torch.__version__:
        lines.append(
            f"warning: built against torch {info['torch']} but running torch {torch.__version__}: "
            "rebuild with `pip install --no-build-isolation -e .`"
        )
    lines += describe_sources(info["sources"], info["cuda"])
    if info["cuda"]:
        lines.append(f"CUDA kernels: yes, for architectures {info['cuda_archs']}")
        lines += describe_gpus(info["cuda_archs"])
    else:
        lines.append(f"CUDA kernels: no, because {info['cuda_absent_reason'] or 'the build did not record why'}")
        lines.append(f"to build them: {BUILD_CUDA}")
    return "\n".join(lines)


def describe_sources(built_from, with_cuda):
    """The sources the build was compiled from and, for an in-tree build, whether the sources
    beside it are still those (an edited kernel runs only once the extension is rebuilt; a
    build without the CUDA kernels is not concerned by their files)."""
    line = f"built from sources {built_from[:12] if built_from else '(not recorded)'}"
    root = source_root(os.path.dirname(drloss_cuda.__file__))
    if root is None or not built_from:
        return [line]
    if source_digest(root, with_cuda) == built_from:
        return [f"{line}, those in {root}"]
    return [
        line,
        f"warning: the sources in {root} have changed since this build: "
        "rebuild with `pip install --no-build-isolation -e .`",
    ]


def describe_gpus(cuda_archs):
    """A warning for each visible GPU that the build has no kernels for (CUDA would say only "no
    kernel image is available for execution on the device")."""
    lines = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        capability = torch.cuda.get_device_capability(index)
        if build_runs_on(capability, cuda_archs) is False:
            arch = "%d.%d" % capability
            lines.append(
                f"warning: cuda:{index} ({torch.cuda.get_device_name(index)}, compute capability {arch}) "
                f"has no kernels in this build: rebuild with TORCH_CUDA_ARCH_LIST=\"{arch}\" "
                "pip install --no-build-isolation -e ."
            )
    return lines


def main():
    print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
