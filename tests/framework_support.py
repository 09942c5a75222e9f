"""What the integration tests share: importing a framework or skipping visibly, unless the
environment requires every framework (DRLOSS_REQUIRE_FRAMEWORKS=1, set by CI's frameworks
part), where a framework that does not import fails the test instead."""

import os
import pathlib

import pytest
import torch

from drloss_cuda.integrations import import_framework

REQUIRE_FRAMEWORKS = "DRLOSS_REQUIRE_FRAMEWORKS"


def framework_or_skip(name):
    """Imports a framework module (or an integration module, which imports its framework) or
    skips the test, whatever the import raises; fails instead where the frameworks are required."""
    try:
        return import_framework(name)
    except ImportError as error:
        if os.environ.get(REQUIRE_FRAMEWORKS) == "1":
            pytest.fail(f"{REQUIRE_FRAMEWORKS}=1 but {error}")
        pytest.skip(str(error))


def doc_snippet(heading):
    """The first ```python block under a heading of docs/integration.md."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "integration.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def cls_loss_spy(loss, record):
    """A wrapper of a loss callable that appends (logits, labels, loss) of every call to record,
    detached, for comparison with the reference on the very inputs the framework passed."""

    def spy(logits, labels, *args, **kwargs):
        value = loss(logits, labels, *args, **kwargs)
        record.append((logits.detach().clone(), labels.clone(), value.detach().clone()))
        return value

    return spy


def painted_images(seed, size, num_classes, box_counts=(1, 2)):
    """Synthetic detection images: uint8 [3, size, size] noise with boxes painted on it, one
    colour per class. Returns [(image, boxes [k, 4] float xyxy, classes [k] int64)], one per
    entry of box_counts, drawn from `seed` alone."""
    data = torch.Generator().manual_seed(seed)
    images = []
    for count in box_counts:
        image = torch.randint(0, 60, (3, size, size), generator=data, dtype=torch.uint8)
        corner = torch.randint(4, size // 2, (count, 2), generator=data)
        extent = torch.randint(24, size // 2 - 4, (count, 2), generator=data)
        boxes = torch.cat([corner, corner + extent], 1).float()
        classes = torch.randint(0, num_classes, (count,), generator=data)
        for (x0, y0, x1, y1), label in zip(boxes.long().tolist(), classes.tolist()):
            image[:, y0:y1, x0:x1] = torch.tensor([80 + 60 * label, 200 - 50 * label, 120]).view(3, 1, 1)
        images.append((image, boxes, classes))
    return images
