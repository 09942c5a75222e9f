"""Rules of the C++ and CUDA sources that no compiler enforces."""

import re
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "csrc"
SOURCES = sorted(p for p in CSRC.rglob("*") if p.suffix in (".h", ".cpp", ".cu", ".cuh"))
MESSAGES = CSRC / "messages.h"


def code_lines(path):
    """(number, line) of a source, its // comments removed."""
    return [(i, line.split("//")[0]) for i, line in enumerate(path.read_text().splitlines(), 1)]


def test_sources_found():
    assert MESSAGES in SOURCES and len(SOURCES) >= 5, SOURCES


def test_no_iostream_formatting():
    """Messages are concatenated strings (csrc/messages.h): a build linked with its own static
    libstdc++ crashed writing a number to an std::ostream, which TORCH_CHECK does for each
    argument that is not a string."""
    banned = re.compile(r"#include\s*<(sstream|iostream|ostream|fstream)>|\b(o?stringstream|ostream|std::cout|std::cerr)\b")
    found = [f"{p.relative_to(CSRC)}:{i}: {line.strip()}" for p in SOURCES for i, line in code_lines(p) if banned.search(line)]
    assert not found, "\n".join(found)


def test_checks_go_through_the_message_builder():
    """TORCH_CHECK-family macros are called only by DRLOSS_CHECK / DRLOSS_CHECK_VALUE (messages.h),
    which hand them one ready-made std::string."""
    direct = re.compile(r"\b(TORCH_CHECK\w*|TORCH_INTERNAL_ASSERT\w*|AT_ERROR|TORCH_WARN\w*)\s*\(")
    found = [
        f"{p.relative_to(CSRC)}:{i}: {line.strip()}"
        for p in SOURCES
        if p != MESSAGES
        for i, line in code_lines(p)
        if direct.search(line)
    ]
    assert not found, "\n".join(found)
    uses = sum(len(re.findall(r"\bDRLOSS_CHECK(_VALUE)?\s*\(", p.read_text())) for p in SOURCES if p != MESSAGES)
    assert uses >= 10, uses
