"""Whether the extension already in this checkout can stand in for the device check's build.

    python tools/prebuilt_extension.py --arch 9.0

A GPU lease is short, and the build takes a minute of it. An extension built in place on
another machine with the GPU machine's Python and torch, and carried along with the checkout
(drloss_cuda/_C.cpython-312-x86_64-linux-gnu.so), is reused when it loads against this torch,
was built against this very torch version, has the CUDA kernels for this GPU's architecture, and
was compiled from exactly the sources of this checkout (the digest in its build record). Exit 0
and one line saying what is reused; else exit 1 and why not (the device check then builds).
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def has_machine_code_for(cuda_archs, arch):
    """Whether a build for cuda_archs ('8.0;9.0+PTX') has machine code for arch ('9.0') itself:
    neither PTX compiled by the driver nor another minor version's code, whose timings would
    not be this build's."""
    from drloss_cuda.ops import cuda_architectures

    major, minor = (int(part) for part in arch.split("."))
    return any((arch_major, arch_minor) == (major, minor) for arch_major, arch_minor, _, _ in cuda_architectures(cuda_archs) or [])


def reasons_not_to_reuse(info, extension_path, torch_version, arch, digest, repo=REPO):
    """Why the extension at extension_path, whose build_info() is info, cannot stand in for a
    build of the checkout at repo for this torch and this GPU architecture (empty: it can)."""
    reasons = []
    package = Path(repo, "drloss_cuda").resolve()
    if Path(extension_path).resolve().parent != package:
        reasons.append(f"{extension_path} is not this checkout's ({package})")
    if not info.get("cuda"):
        reasons.append(f"it has no CUDA kernels ({info.get('cuda_absent_reason')})")
    elif not has_machine_code_for(info.get("cuda_archs"), arch):
        reasons.append(f"it was built for CUDA architectures {info.get('cuda_archs')}, not {arch}")
    if info.get("torch") != torch_version:
        reasons.append(f"it was built against torch {info.get('torch')}, this is torch {torch_version}")
    if info.get("sources") != digest:
        reasons.append("it was compiled from other sources than this checkout's")
    return reasons


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, help="the GPU's compute capability, e.g. 9.0")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    try:
        import torch

        import drloss_cuda
        import drloss_cuda._C as extension
        from drloss_cuda._build_sources import source_digest
    except Exception as error:  # a missing or unloadable extension: build instead
        print(f"no prebuilt extension to reuse: {type(error).__name__}: {error}")
        return 1
    info = drloss_cuda.build_info()
    reasons = reasons_not_to_reuse(info, extension.__file__, torch.__version__, args.arch, source_digest(str(REPO), with_cuda=True))
    if reasons:
        print(f"not reusing {extension.__file__}: " + "; ".join(reasons))
        return 1
    print(
        f"reused {extension.__file__}: built from these sources ({info['sources'][:12]}) against torch "
        f"{info['torch']} for CUDA architectures {info['cuda_archs']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
