"""Small forward + backward cases of the fused kernels, for compute-sanitizer (memcheck,
racecheck, initcheck and synccheck in tools/device_check.sh), each checked element by element
against float64.

    python tools/sanitizer_case.py [--device cuda|cpu]

Covers every logits dtype, both label types, per-image and pooled shapes, a C smaller than a
vector, unaligned logits (a storage offset), first_label 0 and 1, an image with every anchor
ignored, one with no positive, and no anchors at all; and the kernel paths only particular
inputs reach: float16/bfloat16 logits with C = 80 at storage offsets 1-7 (the backward's
vector walk with element-wise logit loads; C = 13 and 81 at an offset add heads, tails and
vectors across anchors), temperatures below 1/64 (the running-max forward, with vectors and
element by element), more work items than the grid has blocks or more blocks than a group has
elements for (DRLOSS_CUDA_BLOCKS_PER_GROUP, which the CPU ignores), and the forward's
anchor-aligned and pipelined walks (DRLOSS_CUDA_FORWARD, which the CPU ignores too). Outputs
are poisoned (NaN) before the kernels write them. For each case the per-group losses, the
statistics and the gradient (for a random upstream gradient) are checked against float64 on
the CPU, on the same (rounded) logits, element by element with the tests' bounds
(tests/kernel_runs.py, assert_run_matches_float64; a 16-bit gradient against the float32 run
of the same logits). Exits 1 if any case differs: the sanitizer's exit code says whether
memory was accessed correctly, this one whether the results are right.
"""

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# The tests' float64 evaluation and per-element bounds: one check for the tests and these cases.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kernel_runs import HYPER, assert_run_matches_float64, float64_eval, run_ops  # noqa: E402

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

RUNNING_MAX_HYPER = (1e-3, 1e-3, *HYPER[2:])  # both temperatures below 1/64
HALF = (torch.float16, torch.bfloat16)
ALIGNED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # the dtypes the aligned walks take
LABEL_DTYPES = (torch.int64, torch.int32)


@dataclass(frozen=True)
class Case:
    shape: tuple
    offset: int  # storage offset of the logits, in elements
    first_label: int
    labels_kind: str  # what the labels hold
    dtypes: tuple = DTYPES
    label_dtypes: tuple = LABEL_DTYPES
    hyper: tuple = HYPER
    blocks_per_group: int = 0  # DRLOSS_CUDA_BLOCKS_PER_GROUP for the call; 0: the launcher's choice
    forward_walk: str = ""  # DRLOSS_CUDA_FORWARD for the call; "": the default walk


CASES = (
    Case((2, 257, 80), 0, 0, "mixed"),
    Case((3, 33, 7), 1, 1, "image 0 all ignored, image 1 without positives"),
    Case((1000, 3), 3, 0, "pooled"),
    Case((2, 0, 5), 0, 0, "no anchors"),
    # 16-bit logits 1-7 elements off a 16-byte boundary, C = 80: vectors of the gradient, element-wise loads of the logits
    *(Case((2, 129, 80), offset, 0, "mixed, misaligned 16-bit", HALF, (LABEL_DTYPES[offset % 2],)) for offset in range(1, 8)),
    # C = 13, 3 elements off: ranges ending inside a gradient vector (heads, tails) and vectors across anchors
    Case((3, 37, 13), 3, 0, "mixed, misaligned 16-bit, heads and tails", HALF, (torch.int32,)),
    # the running-max forward, walking vectors (C = 80) and elements (C = 7 < a 16-bit vector)
    Case((2, 129, 80), 0, 0, "mixed, running max", label_dtypes=(torch.int32,), hyper=RUNNING_MAX_HYPER),
    Case((3, 33, 7), 3, 1, "mixed, running max", label_dtypes=(torch.int64,), hyper=RUNNING_MAX_HYPER),
    Case((3, 37, 13), 3, 0, "mixed, running max, heads and tails", (torch.float16,), (torch.int64,), hyper=RUNNING_MAX_HYPER),
    # 4 x 700 items of 80 elements: more than one wave of blocks on any GPU (8 blocks per multiprocessor, at most 300 of them)
    Case((4, 700, 80), 0, 0, "mixed, several items per block", label_dtypes=(torch.int32,), blocks_per_group=700),
    # the same with heads and tails: ranges of 96 elements at C = 81, 3 elements off a 16-byte boundary
    Case((4, 601, 81), 3, 0, "mixed, several items per block, heads and tails", (torch.bfloat16,), (torch.int32,), blocks_per_group=600),
    # the forward's anchor-aligned walks (C a multiple of the vector width, aligned logits)
    Case((2, 257, 80), 0, 0, "mixed", ALIGNED_DTYPES, forward_walk="aligned"),
    Case((2, 257, 80), 0, 1, "mixed", ALIGNED_DTYPES, forward_walk="pipelined"),
    Case((2000, 16), 0, 0, "pooled", (torch.float32, torch.bfloat16), (torch.int64,), forward_walk="pipelined"),
    Case((4, 700, 80), 0, 0, "mixed, several items per block", (torch.float32, torch.bfloat16), (torch.int32,), blocks_per_group=700, forward_walk="pipelined"),
    # one block per group: 26-27 vectors per thread in float32, 13-14 in bfloat16 (the loop's later steps, the loads ahead)
    Case((2, 333, 80), 0, 0, "mixed, many vectors per thread", (torch.float32, torch.bfloat16), (torch.int64,), blocks_per_group=1, forward_walk="pipelined"),
    # 100 blocks per group of 592 elements in ranges of 16: 63 items without elements, which still write their partials
    Case((3, 37, 16), 0, 0, "mixed, items without elements", (torch.float32, torch.bfloat16), (torch.int64,), blocks_per_group=100, forward_walk="pipelined"),
)
# The variables each case sets for its own calls.
CASE_VARIABLES = ("DRLOSS_CUDA_BLOCKS_PER_GROUP", "DRLOSS_CUDA_FORWARD")


def make_case(shape, dtype, label_dtype, first_label, labels_kind, generator):
    """CPU logits (already rounded to `dtype`) and labels with positives, background and
    ignored anchors."""
    C = shape[-1]
    logits = (torch.randn(shape, generator=generator, dtype=torch.float64) * 3).to(dtype)
    background = first_label + C if first_label == 0 else 0
    labels = torch.randint(first_label, first_label + C, shape[:-1], generator=generator)
    u = torch.rand(shape[:-1], generator=generator)
    labels[u < 0.5] = background
    labels[u < 0.1] = -1
    if labels_kind.startswith("image 0"):
        labels[0] = -1
        labels[1] = torch.where(labels[1] >= 0, background, labels[1])
    return logits, labels.to(label_dtype)


def on_device(tensor, device, offset):
    """A contiguous copy on `device` that starts `offset` elements into its storage, which ends
    where the tensor does (unlike the tests' at_storage_offset, which pads it with NaN): with the
    caching allocator off, memcheck then sees any read past the last element."""
    storage = torch.empty(tensor.numel() + offset, dtype=tensor.dtype, device=device)
    view = storage[offset:].view(tensor.shape)
    view.copy_(tensor)
    return view


def run_kernels(logits, labels, grad_losses, first_label, hyper=HYPER):
    """(losses, stats, gradient, upstream gradient): the fused forward and backward ops, as the
    loss calls them."""
    return run_ops(logits, labels, first_label, grad_losses, hyper)


def check_case(device, dtype, label_dtype, case, generator):
    """None when the case's results match float64, else what differs (the first line of the
    check's message)."""
    logits, labels = make_case(case.shape, dtype, label_dtype, case.first_label, case.labels_kind, generator)
    groups = case.shape[0] if len(case.shape) == 3 else 1
    grad_losses = torch.rand(groups, generator=generator) + 0.5
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for name, value in zip(CASE_VARIABLES, (case.blocks_per_group, case.forward_walk)):
        if value:
            os.environ[name] = str(value)
    try:
        x, y = on_device(logits, device, case.offset), labels.to(device)
        result = run_kernels(x, y, grad_losses.to(device, acc), case.first_label, case.hyper)
        ref = float64_eval(logits, labels, case.first_label, grad_losses, case.hyper)
        assert_run_matches_float64(x, y, case.first_label, result, ref, case.hyper)
        if device == "cuda":
            torch.cuda.synchronize()
    except AssertionError as error:
        return str(error).splitlines()[0] if str(error) else "a check failed"
    finally:
        for name in CASE_VARIABLES:
            os.environ.pop(name, None)
    return None


def case_runs():
    """(dtype, label dtype, case) of every run, in order."""
    return [(dtype, label_dtype, case) for case in CASES for dtype in case.dtypes for label_dtype in case.label_dtypes]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="where the fused kernels run (default cuda; cpu checks the CPU kernels the same way)")
    parser.add_argument("--seed", type=int, help="seed of the random cases (default: a fresh one, printed)")
    args = parser.parse_args(argv)
    os.environ["DRLOSS_POISON_OUTPUTS"] = "1"  # the ops read it at each call
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    generator = torch.Generator().manual_seed(seed)
    print(f"sanitizer cases on {args.device}, seed {seed}; each checked against float64 element by element")
    wrong = total = 0
    for name in CASE_VARIABLES:  # each case sets its own
        os.environ.pop(name, None)
    for dtype, label_dtype, case in case_runs():
        wrong_because = check_case(args.device, dtype, label_dtype, case, generator)
        good = wrong_because is None
        total += 1
        wrong += not good
        name = f"{str(dtype)[6:]:8} {str(label_dtype)[6:]:5} {'x'.join(map(str, case.shape)):9} offset {case.offset} first_label {case.first_label}"
        extra = "".join([
            "" if case.hyper == HYPER else f", lambdas {case.hyper[0]:g}/{case.hyper[1]:g}",
            f", {case.blocks_per_group} block{'s' if case.blocks_per_group > 1 else ''} per group" if case.blocks_per_group else "",
            f", {case.forward_walk} forward walk" if case.forward_walk else "",
        ])
        print(f"{name}: {'ok' if good else 'WRONG'} ({case.labels_kind}{extra}){'' if good else ': ' + wrong_because}")
    print(f"{total - wrong} of {total} cases match float64" + ("" if not wrong else f"; {wrong} DIFFER"))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
