"""Counts the vector operations per 8 float32 elements in the AVX2 (x86-64-v3) clone's dense
loops (forward: sigmoid, negatives' weights and sums; backward: sigmoid, gradient), by kind:
multiplies and multiply-adds (the two FMA units), divisions, compares and blends, adds and
subtracts, and the rest (logic, integer compares, shifts, moves).

    python loop_ops.py drloss_cuda/_C.cpython-311-x86_64-linux-gnu.so
"""
import re
import subprocess
import sys

KINDS = {
    "mul/fma": re.compile(r"^(vfn?m(add|sub)\d+ps|vmulps)$"),
    "div": re.compile(r"^vdivps$"),
    "cmp/blend": re.compile(r"^(vcmp\w*ps|vblendvps)$"),
    "add/sub": re.compile(r"^(vaddps|vsubps)$"),
}
FUNCTIONS = ["negative_triple<true, float, float>", "negative_grad_chunk<true, float, float>"]

dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", sys.argv[1]],
                      capture_output=True, text=True, check=True).stdout.split("\n\n")
for name in FUNCTIONS:
    body = next(b for b in dump if name in b.split("\n", 1)[0] and "arch_x86_64_v3]>:" in b)
    lines = [l.split("\t") for l in body.splitlines()[1:] if "\t" in l]
    addr = [int(l[0].strip().rstrip(":"), 16) for l in lines]
    ins = [l[-1].strip() for l in lines]
    for i, text in enumerate(ins):  # a back edge: a jump to an earlier address in the function
        m = re.match(r"j\w+\s+([0-9a-f]+)", text)
        if not m or int(m.group(1), 16) >= addr[i]:
            continue
        start = addr.index(int(m.group(1), 16))
        ops = [t.split()[0] for t in ins[start:i]]
        # The dense 256-bit loops: innermost (no other jump), one exponential per vector of 8
        # elements (one shift that puts 2^n's bits in place).
        vectors = sum(1 for t in ins[start:i] if re.match(r"vpslld\s+\$0x17,%ymm", t))
        if vectors == 0 or any(op.startswith("j") for op in ops):
            continue
        counts = {k: sum(bool(r.match(op)) for op in ops) for k, r in KINDS.items()}
        counts["other vector"] = sum(op.startswith("v") for op in ops) - sum(counts.values())
        per = ", ".join(f"{k} {v / vectors:g}" for k, v in counts.items())
        print(f"{name:40s} loop at {addr[start]:x} ({vectors} x 8 elements): per 8 elements {per}")
