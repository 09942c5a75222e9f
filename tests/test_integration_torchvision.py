"""torchvision's RetinaNet with DR loss, on the real torchvision (skipped visibly where it does
not import): the loss torchvision reports against the reference, training, the options of
use_dr_loss, and the documented snippet."""

import copy
import functools

import pytest
import torch
from torch import nn

import drloss_cuda
from drloss_cuda import reference
from drloss_cuda.initialization import FOCAL_LOSS_PRIOR, prior_bias
from framework_support import framework_or_skip


def _torchvision_retinanet(num_classes, seed):
    """A small real RetinaNet: ResNet-18 + FPN (64 channels, P3-P7), no pretrained weights."""
    torchvision = framework_or_skip("torchvision")
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(seed)
    body = torchvision.models.resnet18(weights=None)
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], 64,
                               extra_blocks=LastLevelP6P7(64, 64))
    # A wider band of ignored anchors (IoU 0.3-0.5) than the default, so that batches have some.
    return RetinaNet(backbone, num_classes=num_classes, min_size=64, max_size=64, bg_iou_thresh=0.3)


def _torchvision_batch(n, num_classes, device, data):
    images = [torch.rand(3, 64, 64, generator=data).to(device) for _ in range(n)]
    targets = []
    for i in range(n):
        k = i + 1  # 1, 2, ... boxes
        corner = torch.rand(k, 2, generator=data) * 36
        size = 10 + torch.rand(k, 2, generator=data) * 18
        targets.append({"boxes": torch.cat([corner, corner + size], 1).to(device),
                        "labels": torch.randint(1, num_classes, (k,), generator=data).to(device)})
    targets.append({"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.int64, device=device)})
    images.append(torch.rand(3, 64, 64, generator=data).to(device))  # an image without boxes
    return images, targets


def _official_labels(matched_idxs, gt_labels):
    """The labels in the official code's convention (first_label=1) built straight from
    torchvision's matcher codes, as its focal loss reads them: column gt_labels[m] positive for
    m >= 0, background for -1, ignored for -2."""
    out = []
    for m, gt in zip(matched_idxs, gt_labels):
        labels = torch.zeros_like(m)
        labels[m >= 0] = gt[m[m >= 0]] + 1
        labels[m == -2] = -1
        out.append(labels)
    return torch.stack(out)


def test_torchvision_retinanet_trains_with_dr_loss(device, generator, monkeypatch):
    """A real torchvision RetinaNet with use_dr_loss: the classification loss torchvision reports
    is DR loss (against the reference, value and gradient, on the inputs torchvision passes),
    the box loss is unchanged, and a few SGD steps make the classification loss fall."""
    integration = framework_or_skip("drloss_cuda.integrations.torchvision")
    DRLossClassificationHead, use_dr_loss = integration.DRLossClassificationHead, integration.use_dr_loss

    seed, num_classes = int(torch.randint(0, 2**31 - 1, ())), 4
    stock = _torchvision_retinanet(num_classes, seed).to(device).train()
    model = use_dr_loss(copy.deepcopy(stock))
    head = model.head.classification_head
    assert isinstance(head, DRLossClassificationHead)
    assert set(model.state_dict()) == set(stock.state_dict())  # checkpoints stay interchangeable
    assert torch.equal(head.cls_logits.bias.detach(), torch.zeros_like(head.cls_logits.bias))  # prior 0.5

    data = torch.Generator().manual_seed(seed + 1)
    images, targets = _torchvision_batch(3, num_classes, device, data)

    # What torchvision passes to the classification loss, captured on the way.
    captured = {}
    compute_loss = head.compute_loss

    def capture(targets, head_outputs, matched_idxs):
        captured.update(gt=[t["labels"] for t in targets], logits=head_outputs["cls_logits"], matched=matched_idxs)
        return compute_loss(targets, head_outputs, matched_idxs)

    monkeypatch.setattr(head, "compute_loss", capture)
    losses = model(images, targets)
    monkeypatch.undo()

    logits = captured["logits"]
    labels = _official_labels(captured["matched"], captured["gt"])
    assert (labels == 0).any() and (labels > 0).any()
    want_logits = logits.detach().double().requires_grad_()
    want = reference.sigmoid_dr_loss(want_logits, labels, first_label=1)
    torch.testing.assert_close(losses["classification"].double(), want, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(losses["classification"], logits, retain_graph=True)
    (want_grad,) = torch.autograd.grad(want, want_logits)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-8)
    assert want_grad.abs().max() > 0

    # The box loss is torchvision's own, untouched (same weights, same batch).
    stock_losses = stock(images, targets)
    torch.testing.assert_close(losses["bbox_regression"], stock_losses["bbox_regression"], rtol=1e-6, atol=1e-7)

    # SGD with momentum, as detectors train: the classification loss falls.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    history = []
    for _ in range(6):
        losses = model(images, targets)
        optimizer.zero_grad()
        (losses["classification"] + losses["bbox_regression"]).backward()
        optimizer.step()
        history.append(losses["classification"].item())
    print("classification loss per step:", history)
    assert history[0] == pytest.approx(want.item(), rel=1e-4)  # the same weights as above
    assert history[-1] < history[0] - 0.02
    assert all(b <= a + 1e-4 for a, b in zip(history, history[1:]))


def test_torchvision_use_dr_loss_options(generator):
    integration = framework_or_skip("drloss_cuda.integrations.torchvision")
    DRLossClassificationHead, use_dr_loss = integration.DRLossClassificationHead, integration.use_dr_loss

    model = _torchvision_retinanet(3, 0)
    bias = model.head.classification_head.cls_logits.bias.detach().clone()
    torch.testing.assert_close(bias, torch.full_like(bias, prior_bias(FOCAL_LOSS_PRIOR)))  # torchvision's own
    use_dr_loss(model, prior=None, loss=functools.partial(reference.sigmoid_dr_loss, reduction="sum"))
    assert torch.equal(model.head.classification_head.cls_logits.bias.detach(), bias)  # prior=None keeps it
    use_dr_loss(model, prior=0.3)  # a second call replaces the loss and sets the prior again
    torch.testing.assert_close(torch.sigmoid(model.head.classification_head.cls_logits.bias.detach()),
                               torch.full_like(bias, 0.3))
    assert isinstance(model.head.classification_head.dr_loss, drloss_cuda.SigmoidDRLoss)
    # A plain function replaces the loss module of an earlier call (a submodule attribute).
    use_dr_loss(model, prior=None, loss=reference.sigmoid_dr_loss)
    assert model.head.classification_head.dr_loss is reference.sigmoid_dr_loss
    assert "dr_loss" not in model.head.classification_head._modules
    with pytest.raises(TypeError, match="RetinaNet"):
        use_dr_loss(nn.Linear(2, 2))
    # Built directly, the head starts at DR loss's prior.
    head = DRLossClassificationHead(8, 9, 3)
    assert torch.equal(head.cls_logits.bias.detach(), torch.zeros(27))


def test_torchvision_use_dr_loss_checks_before_changing_anything():
    integration = framework_or_skip("drloss_cuda.integrations.torchvision")
    model = _torchvision_retinanet(3, 0)
    head = model.head.classification_head
    kind, bias = type(head), head.cls_logits.bias.detach().clone()
    for bad in (0.0, 1, "0.5"):
        with pytest.raises((TypeError, ValueError), match="prior"):
            integration.use_dr_loss(model, prior=bad)
        assert type(head) is kind and not hasattr(head, "dr_loss") and torch.equal(head.cls_logits.bias, bias)
    with pytest.raises(TypeError, match="loss must be a callable"):
        integration.use_dr_loss(model, prior=0.01, loss="not a callable")
    assert type(head) is kind and not hasattr(head, "dr_loss") and torch.equal(head.cls_logits.bias, bias)
    with pytest.raises(TypeError, match="loss must be a callable"):
        integration.DRLossClassificationHead(8, 9, 3, loss=4.0)


def test_torchvision_use_dr_loss_keeps_a_custom_head_class(generator):
    integration = framework_or_skip("drloss_cuda.integrations.torchvision")
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead

    class HalvedLogits(RetinaNetClassificationHead):
        def forward(self, x):
            return super().forward(x) * 0.5

    model = _torchvision_retinanet(3, 0)
    custom = HalvedLogits(64, model.anchor_generator.num_anchors_per_location()[0], 3)
    model.head.classification_head = custom
    features = [torch.randn(1, 64, 4, 4)]
    before = custom(features)
    integration.use_dr_loss(model, prior=None)
    assert isinstance(custom, HalvedLogits) and isinstance(custom, integration.DRLossClassificationHead)
    torch.testing.assert_close(custom(features), before)  # its forward stays
    assert type(custom).compute_loss is integration.DRLossClassificationHead.compute_loss
    integration.use_dr_loss(model, prior=None)  # a second call keeps the class
    assert type(custom).__mro__[1:3] == (integration.DRLossClassificationHead, HalvedLogits)


@pytest.mark.parametrize("bad_label", [3, 7, -1], ids=["num_classes", "beyond", "negative"])
def test_torchvision_box_labels_outside_the_classes_raise(generator, bad_label):
    # torchvision's focal loss fails on them (it indexes with the label); DR loss would take the
    # anchor for background while the box loss trains it. check_targets=False skips the check.
    integration = framework_or_skip("drloss_cuda.integrations.torchvision")
    num_classes = 3
    model = integration.use_dr_loss(_torchvision_retinanet(num_classes, 0)).train()
    images, targets = _torchvision_batch(2, num_classes, "cpu", torch.Generator().manual_seed(1))
    targets[0]["labels"][0] = bad_label
    with pytest.raises(ValueError, match=r"gt_labels\[0\] must lie in \[0, 2\], found " + str(bad_label)):
        model(images, targets)
    integration.use_dr_loss(model, prior=None, check_targets=False)
    assert torch.isfinite(model(images, targets)["classification"])


def _doc_snippet(heading):
    """The first ```python block under a heading of docs/integration.md."""
    import pathlib

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "integration.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_docs_torchvision_snippet_runs_offline(capsys):
    """The documented torchvision snippet, as written: no download, DR loss, prior 0.5."""
    framework_or_skip("torchvision")
    namespace = {}
    exec(compile(_doc_snippet("torchvision RetinaNet"), "docs/integration.md", "exec"), namespace)
    head = namespace["model"].head.classification_head
    assert type(head).__name__ == "DRLossClassificationHead"
    assert torch.equal(head.cls_logits.bias.detach(), torch.zeros_like(head.cls_logits.bias))
    losses = namespace["losses"]
    assert set(losses) == {"classification", "bbox_regression"}
    assert 0.0 < losses["classification"].item() < 6.0  # DR loss's range, not focal loss's
    assert "classification" in capsys.readouterr().out
