"""Shared fixtures: the devices every device-parametrized test runs on.

CUDA cases are always collected and skip visibly (with the reason) where there is no GPU or the
extension was built without its CUDA kernels, so a CPU-only run reports them as skipped.
"""

import os
import random
import zlib

import pytest
import torch


def cuda_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA GPU available"
    import drloss_cuda

    if not drloss_cuda.build_info()["cuda"]:
        return "drloss_cuda was built without its CUDA kernels"
    return None


CUDA_SKIP_REASON = cuda_skip_reason()
# The marks of a test that needs a GPU: selected by `-m cuda`, skipped visibly without one.
CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=str(CUDA_SKIP_REASON))]



def free_gpu_memory_or_skip(needed):
    """Skips the test, saying why, where the current GPU has fewer than `needed` bytes free."""
    free, _ = torch.cuda.mem_get_info()
    if free < needed:
        pytest.skip(f"needs {needed / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")


def cuda_only(test):
    """A test function with the CUDA_ONLY marks."""
    for mark in CUDA_ONLY:
        test = mark(test)
    return test


@pytest.fixture
def kernel_defaults(monkeypatch):
    """Outputs poisoned (NaN) before the kernels write them, so an element left unwritten fails,
    and the CUDA launcher's own split of each group (DRLOSS_CUDA_BLOCKS_PER_GROUP unset): the
    setting of every kernel test, which a test may change for itself."""
    monkeypatch.setenv("DRLOSS_POISON_OUTPUTS", "1")
    monkeypatch.delenv("DRLOSS_CUDA_BLOCKS_PER_GROUP", raising=False)


@pytest.fixture
def general_forward_walk(monkeypatch):
    """The CUDA forward's general walk (DRLOSS_CUDA_FORWARD unset), for the tests that check
    which of its kernels ran; the other kernel tests take the walk the variable names (the
    device check reruns tests/test_cuda.py with it set)."""
    monkeypatch.delenv("DRLOSS_CUDA_FORWARD", raising=False)


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=CUDA_ONLY),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


# The seed of every random draw: fixed by default, so a failure replays as it was; another value
# (DRLOSS_TEST_SEED=123) or DRLOSS_TEST_SEED=random draws other inputs.
DEFAULT_SEED = 20200614


def _base_seed():
    value = os.environ.get("DRLOSS_TEST_SEED", str(DEFAULT_SEED)).strip()
    return random.SystemRandom().randrange(2**31) if value == "random" else int(value)


BASE_SEED = _base_seed()


@pytest.fixture
def generator(request):
    """Seeds torch's generator for this test (the base seed mixed with the test's id, so tests
    draw different inputs) and prints how to replay it, which pytest shows when the test fails.
    Returns the seed."""
    seed = (BASE_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**63
    torch.manual_seed(seed)
    print(f"torch seed {seed}: replay with DRLOSS_TEST_SEED={BASE_SEED}")
    return seed
