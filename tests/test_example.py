"""The training example: a few steps with the fused loss and with the pure-PyTorch reference,
from the same seed and initial weights, give the same losses and parameters."""

import copy
import importlib.util
import pathlib

import pytest
import torch

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_tiny_detector.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_tiny_detector", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float64, 1e-9, 1e-11), (torch.float32, 2e-4, 2e-5)],
                         ids=["float64", "float32"])
def test_fused_and_reference_train_alike(example, dtype, rtol, atol, generator):
    seed = int(torch.randint(0, 2**31 - 1, ()))
    initial = example.TinyDetector()
    runs = {}
    for name in ("dr", "dr-reference"):
        model, losses = example.train(name, steps=8, batch=4, seed=seed, dtype=dtype,
                                      model=copy.deepcopy(initial), log=None)
        runs[name] = (model, torch.stack(losses))
    fused_model, fused_losses = runs["dr"]
    ref_model, ref_losses = runs["dr-reference"]
    assert fused_losses.dtype == dtype
    torch.testing.assert_close(fused_losses, ref_losses, rtol=rtol, atol=atol)
    for (name, p), (_, q), (_, p0) in zip(fused_model.named_parameters(), ref_model.named_parameters(),
                                          initial.named_parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=f"parameter {name}")
    # The steps moved the weights (otherwise the comparison says nothing).
    moved = max((p - p0.to(dtype)).abs().max().item() for p, p0 in zip(fused_model.parameters(), initial.parameters()))
    assert moved > 1e-3


def test_matching_rules(example, generator):
    """Positive >= 0.5 IoU, background < 0.4, ignored between, each box keeps its best anchor."""
    data = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    anchors = example.make_anchors()
    _, boxes, classes = example.make_batch(6, data)
    labels, matched = example.match(anchors, boxes, classes)
    iou = example.box_iou(anchors.expand(6, -1, -1), boxes)
    iou = torch.where(classes[:, None, :] >= 0, iou, -1.0)
    best = iou.max(-1).values
    forced = torch.zeros_like(labels, dtype=torch.bool)
    for i in range(6):
        for g in range(classes.shape[1]):
            if classes[i, g] >= 0:
                forced[i] |= iou[i, :, g] == iou[i, :, g].max()
                assert labels[i, iou[i, :, g].argmax()] == classes[i, g] or forced[i, iou[i, :, g].argmax()]
    free = ~forced
    assert ((labels[free & (best >= 0.5)] >= 0) & (labels[free & (best >= 0.5)] < example.NUM_CLASSES)).all()
    assert (labels[free & (best < 0.4)] == example.NUM_CLASSES).all()
    assert (labels[free & (best >= 0.4) & (best < 0.5)] == -1).all()
    positive = (labels >= 0) & (labels < example.NUM_CLASSES)
    assert positive.sum(1).ge(1).all()  # every image has positives
    # Box coding round-trips.
    torch.testing.assert_close(example.decode(example.encode(matched, anchors.expand_as(matched)), anchors), matched,
                               rtol=1e-5, atol=1e-4)
