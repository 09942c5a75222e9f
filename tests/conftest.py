"""Shared fixtures: the devices every device-parametrized test runs on.

CUDA cases are always collected and skip visibly (with the reason) where there is no GPU or the
extension was built without its CUDA kernels, so a CPU-only run reports them as skipped.
"""

import pytest
import torch


def cuda_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA GPU available"
    import drloss_cuda

    if not drloss_cuda.build_info()["cuda"]:
        return "drloss_cuda was built without its CUDA kernels"
    return None


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(cuda_skip_reason() is not None, reason=str(cuda_skip_reason()))]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def generator():
    """A fresh, unseeded draw each run: every run checks new random inputs. The seed is
    printed on failure so a case can be replayed."""
    seed = torch.seed()
    print(f"torch seed: {seed}")
    return seed
