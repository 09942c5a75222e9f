"""Checks what the installed drloss_cuda build contains: `--cuda` when its CUDA kernels must be
there (build_info and the CUDA kernels registered for both ops), `--no-cuda` when they must not
(then the stand-ins registered for CUDA tensors must say why). Prints the build and exits
non-zero on any mismatch."""

import argparse
import sys

import torch

import drloss_cuda

OPS = ("drloss_cuda::sigmoid_dr_loss_forward", "drloss_cuda::sigmoid_dr_loss_backward")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    expect = parser.add_mutually_exclusive_group(required=True)
    expect.add_argument("--cuda", dest="cuda", action="store_true")
    expect.add_argument("--no-cuda", dest="cuda", action="store_false")
    want_cuda = parser.parse_args().cuda

    info = drloss_cuda.build_info()
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), drloss_cuda "
          f"{drloss_cuda.__version__} from {drloss_cuda.__file__}: build_info {info}")
    failures = []
    if info["cuda"] != want_cuda:
        failures.append(f"build_info()['cuda'] is {info['cuda']}, expected {want_cuda}")
    for op in OPS:
        kernels = {key: torch._C._dispatch_has_kernel_for_dispatch_key(op, key) for key in ("CPU", "CUDA", "Meta")}
        print(f"  {op}: kernels {kernels}")
        if not kernels["CPU"] or not kernels["Meta"]:
            failures.append(f"{op} lacks its CPU or Meta kernel")
        if not kernels["CUDA"]:
            failures.append(f"{op}: no kernel registered for CUDA tensors")
    if not want_cuda and not info["cuda_absent_reason"]:
        failures.append("a build without CUDA kernels must record why")
    if want_cuda and not info["cuda_archs"]:
        failures.append("a build with CUDA kernels must record its architectures")
    for failure in failures:
        print(f"check_build: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
