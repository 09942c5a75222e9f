"""A small forward + backward on CUDA for compute-sanitizer (memcheck, racecheck).

Covers every logits dtype, both label types, per-image and pooled shapes, a C smaller than a
vector, unaligned logits and empty groups, with outputs poisoned before the kernels run.
Exits non-zero if a result is not finite.
"""

import os
import sys

import torch

os.environ.setdefault("DRLOSS_POISON_OUTPUTS", "1")

from drloss_cuda.ops import backward_op, forward_op  # noqa: E402

HYPER = (1.0, 0.1 / 1.252762968495368, 6.0, 4.0, 0.5)


def case(shape, dtype, label_dtype, offset=0):
    C = shape[-1]
    n = 1
    for s in shape:
        n *= s
    storage = torch.randn(n + offset, device="cuda").to(dtype) * 3
    logits = storage[offset:].view(shape)
    labels = torch.randint(-1, C + 1, shape[:-1], device="cuda", dtype=label_dtype)
    losses, stats = forward_op(logits, labels, *HYPER, 0)
    grad = backward_op(torch.ones_like(losses), logits, labels, stats, *HYPER, 0)
    torch.cuda.synchronize()
    return bool(torch.isfinite(losses).all() and torch.isfinite(grad).all())


def main():
    ok = True
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for label_dtype in (torch.int64, torch.int32):
            for shape, offset in (((2, 257, 80), 0), ((3, 33, 7), 1), ((1000, 3), 3), ((2, 0, 5), 0)):
                good = case(shape, dtype, label_dtype, offset)
                print(f"{str(dtype):16} {str(label_dtype):12} {str(shape):14} offset {offset}: {'ok' if good else 'NOT FINITE'}")
                ok &= good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
