"""`python -m drloss_cuda`: what this installation is and what its build contains."""

import platform
import sys

import torch

import drloss_cuda

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
    if info["cuda"]:
        lines.append(f"CUDA kernels: yes, for architectures {info['cuda_archs']}")
    else:
        lines.append(f"CUDA kernels: no, because {info['cuda_absent_reason'] or 'the build did not record why'}")
        lines.append(f"to build them: {BUILD_CUDA}")
    return "\n".join(lines)


def main():
    print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
