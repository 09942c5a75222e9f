"""The built CPU kernels' AVX2 and AVX-512 clones are vectorized.

The dense loops are plain C++ that GCC vectorizes inside each `target_clones` clone
(csrc/cpu/dr_loss_cpu.cpp). Nothing else notices when a clone stops being vectorized: the
results stay the same, only about 5x slower. Built without `-fno-trapping-math`, for one, every
float32 hot loop of the AVX2 clone is scalar code with branches (docs/design.md, "CPU
kernels"). This test disassembles the built extension and counts each hot loop's vector
multiply-adds of the clone's width.
"""

import platform
import re
import shutil
import subprocess
import sys

import pytest

# The float32 hot loops (forward: the negatives' sums; backward: their gradient), with either
# shift policy. Each clone of each has tens of vector multiply-adds (the exponential's polynomial
# alone is six); a clone left scalar has none.
HOT_LOOPS = tuple(
    f"{name}<{fixed}, float, float>" for name in ("negative_triple", "negative_grad_chunk") for fixed in ("true", "false")
)
CLONE_WIDTH = {"arch_x86_64_v3": "ymm", "arch_x86_64_v4": "zmm"}
MIN_VECTOR_FMAS = 8

FMA = re.compile(r"\bvf(n?)m(add|sub)\w*ps\b")


def clone_bodies(disassembly):
    """{(function, clone): instruction lines} of every `[clone .<clone>]` function in an
    `objdump -d -C` listing."""
    bodies, key = {}, None
    header = re.compile(r"^[0-9a-f]+ <(.*) \[clone \.(\w+)\]>:$")
    for line in disassembly.splitlines():
        m = header.match(line)
        if m:
            key = (m.group(1), m.group(2))
            bodies[key] = []
        elif not line.strip():
            key = None
        elif key is not None:
            bodies[key].append(line)
    return bodies


def vector_fmas(lines, register):
    """How many of `lines` are packed single-precision multiply-adds on `register` registers."""
    return sum(1 for line in lines if FMA.search(line) and f"%{register}" in line)


def hot_loop_widths(bodies):
    """{(loop, clone): vector multiply-adds of the clone's width} for every hot loop and clone;
    None where the listing has no such function."""
    counts = {}
    for loop in HOT_LOOPS:
        for clone, register in CLONE_WIDTH.items():
            found = [lines for (name, c), lines in bodies.items() if c == clone and f"::{loop}(" in name]
            counts[(loop, clone)] = vector_fmas(found[0], register) if found else None
    return counts


def test_clone_bodies_parse_an_objdump_listing():
    listing = """
0000000000001000 <void drloss::(anonymous namespace)::negative_grad_chunk<true, float, float>(float const*) [clone .arch_x86_64_v3]>:
    1000:\tvfmadd132ps %ymm9,%ymm8,%ymm3
    1006:\tvfnmadd231ps %ymm1,%ymm2,%ymm3
    100c:\tvfmadd132ss %xmm9,%xmm8,%xmm3
    1010:\tret

0000000000002000 <void drloss::(anonymous namespace)::negative_grad_chunk<true, float, float>(float const*) [clone .arch_x86_64_v4]>:
    2000:\tvfmadd132ps %zmm9,%zmm8,%zmm3
"""
    counts = hot_loop_widths(clone_bodies(listing))
    assert counts[("negative_grad_chunk<true, float, float>", "arch_x86_64_v3")] == 2
    assert counts[("negative_grad_chunk<true, float, float>", "arch_x86_64_v4")] == 1
    assert counts[("negative_triple<true, float, float>", "arch_x86_64_v3")] is None


def built_extension_listing():
    """The built extension's disassembly, or a pytest.skip saying why there is none to check."""
    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        pytest.skip("the instruction-set clones exist on x86-64 Linux only")
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) not found")
    try:
        from drloss_cuda import _C
    except ImportError as e:
        pytest.skip(f"the compiled extension is not built: {e}")
    listing = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", "-C", _C.__file__], check=True, capture_output=True, text=True
    ).stdout
    if "[clone .arch_x86_64_v3]" not in listing:
        pytest.skip("this build has no instruction-set clones (a compiler other than GCC)")
    return listing


def test_hot_loops_are_vectorized_in_every_clone():
    counts = hot_loop_widths(clone_bodies(built_extension_listing()))
    missing = [key for key, n in counts.items() if n is None]
    assert not missing, f"hot loops not found in the extension (renamed? update HOT_LOOPS): {missing}"
    scalar = {f"{loop} [{clone}]": n for (loop, clone), n in counts.items() if n < MIN_VECTOR_FMAS}
    assert not scalar, f"clones with fewer than {MIN_VECTOR_FMAS} vector multiply-adds of their width: {scalar}"
