"""Counts the issue slots per element of the CUDA kernels' hot loops from their SASS, and
predicts each pass's time on a GPU from its bytes, issue slots and MUFU (special-function)
instructions.

    python tools/sass_issue_slots.py [--arch 90] [--cubin FILE] [--csv OUT]

Needs nvcc (CUDA_HOME or PATH) and nvdisasm (CUDA toolkit, or the copy that ships in triton's
wheel: the script looks there too). No GPU.

Method. The kernel file is compiled with line information (-lineinfo) and disassembled with
the inline chain of every instruction (nvdisasm -gi). The body loop of a kernel is the
smallest loop (a backward branch) around one of its 16-byte vector loads; every instruction in it is
issued once per iteration (predicated ones too), except those whose inline chain passes
through a source line marked `cold` in the kernel files or the math header: the branches that
only run for a vector holding a positive, or for a new running max. An iteration handles as
many vectors of N elements as it has 16-byte loads, so

    issue slots per element = hot instructions in the loop / (vectors per iteration * N).

That is the dynamic count on the common path: a vector holding a positive (with C = 80
classes, a fraction N/80 of a positive anchor's vectors) adds its cold branch.

Prediction, per element, on a GPU with S multiprocessors at clock f:
    issue   = slots / (4 warp schedulers * 32 lanes * S * f)
    mufu    = MUFU instructions / (16 lanes * S * f)        (ex2, rcp: 16 per clock per SM)
    memory  = bytes / copy bandwidth
    time    = max(issue, mufu, memory): the fraction of the memory floor is memory / time.
The maximum assumes the three overlap perfectly; the forward kernels measured 1.45-1.5 times it
on an H200 (docs/performance.md, "What bounds each path"), so read it as a lower bound.
"""

import argparse
import csv
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def sources(root):
    """The file nvcc compiles, and every file whose lines the kernels' code can come from (the
    launcher's file, its kernel headers and the math header)."""
    cuda = os.path.join(root, "csrc", "cuda")
    kernels = os.path.join(cuda, "dr_loss_kernels.cu")
    headers = sorted(glob.glob(os.path.join(cuda, "*.cuh")))
    return kernels, [kernels, *headers, os.path.join(root, "csrc", "dr_loss_math.h")]

# Public figures of the GPUs the project targets; `copy_gbs` is a typical measured
# device-to-device copy bandwidth (read + write), below the data-sheet peak.
GPUS = {
    "H100 SXM": dict(sms=132, clock_ghz=1.98, copy_gbs=3000.0),
    "H200": dict(sms=132, clock_ghz=1.98, copy_gbs=4300.0),
}

# (kernel, logits dtype, bytes of logits per element, bytes moved per element, N)
CASES = [
    ("forward", "float32", 4, 4, 4),
    ("forward", "bfloat16", 2, 2, 8),
    ("forward", "float16", 2, 2, 8),
    ("forward aligned", "float32", 4, 4, 4),
    ("forward aligned", "bfloat16", 2, 2, 8),
    ("forward pipelined", "float32", 4, 4, 4),
    ("forward pipelined", "bfloat16", 2, 2, 8),
    ("backward", "float32", 4, 8, 4),
    ("backward", "bfloat16", 2, 4, 8),
    ("backward", "float16", 2, 4, 8),
]
MANGLED_DTYPE = {"float32": "f", "bfloat16": "13__nv_bfloat16", "float16": "6__half"}


def find_tool(name):
    candidates = [shutil.which(name)]
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home:
        candidates.append(os.path.join(cuda_home, "bin", name))
    try:
        import triton  # noqa: F401  (ships nvdisasm with its NVIDIA backend)

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    except ImportError:
        pass
    for path in candidates:
        if path and os.path.exists(path):
            return path
    sys.exit(f"sass_issue_slots: {name} not found (set CUDA_HOME or install triton)")


def compile_cubin(arch, out_dir, root):
    cubin = os.path.join(out_dir, f"dr_loss_kernels.sm_{arch}.cubin")
    subprocess.run(
        [find_tool("nvcc"), "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-lineinfo",
         "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
         "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
         f"-gencode=arch=compute_{arch},code=sm_{arch}", "-cubin", "-I", os.path.join(root, "csrc"),
         sources(root)[0], "-o", cubin],
        check=True,
    )
    return cubin


def cold_lines(path):
    """Source lines of `path` inside blocks whose opening line carries the word `cold` in a
    comment: from that line to the line that closes its brace."""
    lines = open(path).read().splitlines()
    cold = set()
    for i, line in enumerate(lines):
        if "//" in line and re.search(r"\bcold\b", line.split("//", 1)[1]) and "{" in line:
            depth = 0
            for j in range(i, len(lines)):
                code = lines[j].split("//", 1)[0]
                depth += code.count("{") - code.count("}")
                cold.add((os.path.basename(path), j + 1))
                if depth <= 0 and j > i:
                    break
    return cold


def parse_functions(text):
    """{mangled name: [(address, instruction, [(file, line), ...]), ...]}"""
    functions = {}
    current = None
    chain = []
    for raw in text.splitlines():
        header = re.match(r"^\.text\.(\S+):$", raw)
        if header:
            current = functions.setdefault(header.group(1), {"code": [], "labels": {}})
            chain = []
            continue
        if current is None:
            continue
        label = re.match(r"^(\.L_x_\d+):", raw)
        if label:
            current["labels"][label.group(1)] = None  # resolved by the next instruction
            current.setdefault("pending", []).append(label.group(1))
            continue
        loc = re.match(r'\s*//## File "([^"]+)", line (\d+)', raw)
        if loc:
            chain.append((os.path.basename(loc.group(1)), int(loc.group(2))))
            inlined = re.search(r'inlined at "([^"]+)", line (\d+)', raw)
            if inlined:
                chain.append((os.path.basename(inlined.group(1)), int(inlined.group(2))))
            continue
        ins = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", raw)
        if ins:
            address = int(ins.group(1), 16)
            for name in current.pop("pending", []):
                current["labels"][name] = address
            current["code"].append((address, ins.group(2), chain))
            chain = []
    return functions


def body_loop(function):
    """The instructions of the smallest loop around a 16-byte vector load (a walk may load its
    first vectors before the loop)."""
    code = function["code"]
    loads = [a for a, ins, _ in code if re.search(r"\bLDG\.E\.128", ins)]
    if not loads:
        return None
    best = None
    for address, ins, _ in code:
        branch = re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", ins)
        if not branch:
            continue
        target = function["labels"].get(branch.group(1))
        if target is not None and any(target <= load <= address for load in loads):
            if best is None or address - target < best[1] - best[0]:
                best = (target, address)
    if best is None:
        return None
    return [entry for entry in code if best[0] <= entry[0] <= best[1]]


def classify(ins):
    op = re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0]
    base = op.split(".")[0]
    if base == "MUFU":
        return "mufu"
    if base in ("LDG", "STG", "LDS", "STS", "LD", "ST", "LDC", "ULDC"):
        return "memory"
    if base in ("BRA", "BSSY", "BSYNC", "EXIT", "BAR", "WARPSYNC", "NOP"):
        return "control"
    if base.startswith("F") or base.startswith("H") or base in ("F2F", "F2FP"):
        return "float"
    if base.startswith("D"):
        return "fp64"
    return "integer"


def count(cubin, cold):
    text = subprocess.run([find_tool("nvdisasm"), "-gi", "-c", cubin], check=True,
                          capture_output=True, text=True).stdout
    functions = parse_functions(text)
    rows = []
    for kernel, dtype, logit_bytes, moved_bytes, n in CASES:
        d = MANGLED_DTYPE[dtype]
        # This tree's kernels (the fast forward: fixed shifts, 16-byte vectors, int64 labels),
        # or those of the first CUDA version, which had fewer template parameters.
        # The walks of ForwardWalk (dr_loss_kernels.h); a tree without them has no such rows.
        walk = {"forward aligned": "0", "forward pipelined": "1"}.get(kernel)
        if walk is not None:
            patterns = [rf"forward_aligned_kernelI{d}lLb{walk}EE"]
            if not any(re.search(patterns[0], name) for name in functions):
                continue
        elif kernel == "forward":
            patterns = [rf"forward_partials_kernelI{d}lLi{n}ELb1EE", rf"forward_partials_kernelI{d}lEE"]
        else:
            patterns = [rf"backward_kernelI{d}lLi{n}ELi16EE", rf"backward_kernelI{d}lLi{n}EE"]
        for pattern in patterns:
            names = [name for name in functions if re.search(pattern, name)]
            if names:
                break
        if len(names) != 1:
            sys.exit(f"sass_issue_slots: kernel {pattern} not found exactly once")
        loop = body_loop(functions[names[0]])
        if loop is None:
            sys.exit(f"sass_issue_slots: no body loop found in {names[0]}")
        hot = [(a, ins) for a, ins, chain in loop if not any(frame in cold for frame in chain)]
        vectors = sum(1 for _, ins, _ in loop if re.search(r"\bLDG\.E\.128", ins))
        kinds = {}
        for _, ins in hot:
            kinds[classify(ins)] = kinds.get(classify(ins), 0) + 1
        per = vectors * n
        rows.append(dict(kernel=kernel, dtype=dtype, N=n, vectors_per_iteration=vectors,
                         bytes_per_element=moved_bytes,
                         loop_instructions=len(loop), hot_instructions=len(hot),
                         slots_per_element=len(hot) / per,
                         **{f"{k}_per_element": kinds.get(k, 0) / per
                            for k in ("mufu", "float", "fp64", "integer", "memory", "control")}))
    return rows


def predict(row, gpu):
    sms, clock, copy = gpu["sms"], gpu["clock_ghz"] * 1e9, gpu["copy_gbs"] * 1e9
    issue = row["slots_per_element"] / (4 * 32 * sms * clock)
    mufu = row["mufu_per_element"] / (16 * sms * clock)
    memory = row["bytes_per_element"] / copy
    time = max(issue, mufu, memory)
    bound = "memory" if time == memory else ("issue" if time == issue else "MUFU")
    return memory / time, bound


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="90", help="SM architecture to compile for (default 90)")
    parser.add_argument("--cubin", help="count this cubin instead of compiling one")
    parser.add_argument("--csv", help="also write the rows to this CSV file (default: none)")
    parser.add_argument("--root", default=ROOT,
                        help="the source tree to count, e.g. an older checkout to compare (default: this checkout)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cubin = args.cubin or compile_cubin(args.arch, tmp, args.root)
        cold = set()
        for path in sources(args.root)[1]:
            cold |= cold_lines(path)
        rows = count(cubin, cold)
    header = ["kernel", "dtype", "N", "hot instr/elem", "MUFU/elem"]
    header += [f"{name}: % of floor (bound)" for name in GPUS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row["kernel"], row["dtype"], str(row["N"]), f"{row['slots_per_element']:.1f}",
                 f"{row['mufu_per_element']:.2f}"]
        for gpu in GPUS.values():
            fraction, bound = predict(row, gpu)
            cells.append(f"{100 * fraction:.0f}% ({bound})")
        print("| " + " | ".join(cells) + " |")
    if args.csv:
        keys = sorted({k for row in rows for k in row})
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
