"""Does a raised glibc mmap threshold let a 61 MiB tensor reuse freed heap? (Not built or run
by the project; see README.md beside it.) Run it as

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296 \
        python glibc_heap_reuse.py

Each round allocates, writes and frees a tensor of 16 million floats and prints the minor page
faults the round took (15,625 = every 4 KiB page of it mapped anew) and its time.
"""

import resource
import time

import torch


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


for round_ in range(4):
    before, start = minor_faults(), time.perf_counter()
    x = torch.empty(16_000_000)
    x.fill_(1.0)
    total = x.sum()
    del x
    print(round_, minor_faults() - before, f"{(time.perf_counter() - start) * 1e3:.2f} ms")
