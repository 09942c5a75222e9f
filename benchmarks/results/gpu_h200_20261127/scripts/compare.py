"""Bitwise comparison of saved results: python3 compare.py BASE.pt OTHER.pt ..."""
import sys
import torch

def same(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.view(bits), b.view(bits))

base = torch.load(sys.argv[1])
for path in sys.argv[2:]:
    other = torch.load(path)
    diff = [k for k in base if not (same(base[k][0], other[k][0]) and same(base[k][1], other[k][1]))]
    print(f"{path}: {len(base) - len(diff)} of {len(base)} problems bitwise equal to {sys.argv[1]}", *diff[:5])
