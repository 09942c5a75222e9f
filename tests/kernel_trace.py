"""Which of this project's CUDA kernels a call launched, read from the CUDA profiler's trace:
the kernel paths that only particular inputs reach are checked to be the ones that ran.
"""

import json
import math
import re

import torch


def vector_width(dtype):
    """Elements per 16-byte vector: the kernels walk vectors when C is at least this."""
    return 16 // torch.empty((), dtype=dtype).element_size()


def launched_kernels(fn, trace_path):
    """Runs fn() under the CUDA profiler; returns (what fn returned, [(kernel name, grid size)]
    of this project's kernels in launch order). Fails when the profiler reports no kernel or no
    grid: then the path the test is about could not be confirmed."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    prof.export_chrome_trace(str(trace_path))
    with open(trace_path) as f:
        events = json.load(f).get("traceEvents", [])
    kernels = [(e["name"], math.prod(e.get("args", {}).get("grid", [0]))) for e in events if e.get("cat") == "kernel" and "drloss" in e["name"]]
    assert kernels and all(grid > 0 for _, grid in kernels), f"the profiler reported no kernel with its grid: {kernels}"
    return result, kernels


# How the demangled kernel names spell the logits' and labels' element types.
SCALAR_NAMES = {
    torch.float32: ("float",),
    torch.float64: ("double",),
    torch.float16: ("__half", "half"),
    torch.bfloat16: ("__nv_bfloat16", "nv_bfloat16"),
}
LABEL_NAMES = {torch.int32: ("int",), torch.int64: ("long", "long long")}


def template_arguments(kernels, kernel, dtype, label_dtype, required=True):
    """The template arguments after <scalar, label> (as demangled) of every launch of `kernel`
    (forward_partials_kernel, forward_aligned_kernel or backward_kernel) for `dtype` logits and
    `label_dtype` labels; at least one unless `required` is false."""
    found = []
    for name, _ in kernels:
        match = re.search(kernel + r"<([^<>]*)>", name)
        if match:
            args = [a.strip() for a in match.group(1).split(",")]
            if args[0] in SCALAR_NAMES[dtype] and args[1] in LABEL_NAMES[label_dtype]:
                found.append(args[2:])
    assert found or not required, f"no {kernel} for {dtype} logits and {label_dtype} labels among {[name for name, _ in kernels]}"
    return found


def grids_of(kernels, kernel):
    return [grid for name, grid in kernels if re.search(kernel + "<", name)]
