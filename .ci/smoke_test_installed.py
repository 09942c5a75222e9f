"""Smoke test of an installed drloss_cuda (from its sdist or wheel), run from outside the source
tree: it imports the installed package, checks its version against the package metadata, and
checks one loss and its gradient against the pure-PyTorch reference in float64."""

import importlib.metadata
import pathlib
import sys

import torch

import drloss_cuda
from drloss_cuda import reference, sigmoid_dr_loss

SOURCE_TREE = pathlib.Path(__file__).resolve().parents[1]


def main():
    location = pathlib.Path(drloss_cuda.__file__).resolve()
    print(f"drloss_cuda {drloss_cuda.__version__} from {location}, build {drloss_cuda.build_info()}")
    if SOURCE_TREE in location.parents:
        sys.exit(f"smoke test: drloss_cuda was imported from the source tree ({location}), not the install")
    metadata_version = importlib.metadata.version("drloss_cuda")
    if metadata_version != drloss_cuda.__version__:
        sys.exit(f"smoke test: __version__ {drloss_cuda.__version__} != metadata {metadata_version}")

    seed = torch.seed()
    print(f"torch seed: {seed}")
    num_classes = 5
    logits = torch.randn(3, 40, num_classes, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(-1, num_classes + 1, (3, 40))  # ignored, classes and background
    expected_logits = logits.detach().clone().requires_grad_(True)

    loss = sigmoid_dr_loss(logits, labels, reduction="sum")
    loss.backward()
    expected = reference.sigmoid_dr_loss(expected_logits, labels, reduction="sum")
    expected.backward()
    print(f"loss {loss.item():.12f}, reference {expected.item():.12f}")
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(logits.grad, expected_logits.grad, rtol=1e-9, atol=1e-12)
    print("smoke test passed: import, version, loss and gradient match the reference")


if __name__ == "__main__":
    main()
