"""The prior helper, framework imports and their failures, torchvision's RetinaNet for real
where torchvision imports, and the parts of the mmdetection and detectron2 integrations that need
no framework (label conversion, the losses over all levels, config plumbing), tested everywhere
against the reference. mmdetection and detectron2 for real: test_integration_mmdet.py and
test_integration_detectron2.py."""

import copy
import fractions
import functools
import math
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

import drloss_cuda
from drloss_cuda import reference
from drloss_cuda.initialization import DR_LOSS_PRIOR, FOCAL_LOSS_PRIOR, init_classifier_prior, prior_bias
from drloss_cuda.integrations import import_framework
from drloss_cuda.integrations.detectron2_loss import (
    CONFIG_KEYS,
    add_dr_loss_config,
    dense_classification_loss,
    options_from_config,
)
from drloss_cuda.integrations.mmdet_loss import MMDetSigmoidDRLoss, head_loss_cls_config, multilevel_classification_loss
from framework_support import REQUIRE_FRAMEWORKS, doc_snippet, framework_or_skip


# ---------------------------------------------------------------------------------------------
# The prior


@pytest.mark.parametrize("prior", [0.5, 0.01, 0.2, 0.999])
def test_prior_bias_gives_the_prior(prior):
    assert torch.sigmoid(torch.tensor(prior_bias(prior), dtype=torch.float64)).item() == pytest.approx(prior, rel=1e-12)
    assert prior_bias(prior) == pytest.approx(math.log(prior) - math.log1p(-prior), rel=1e-12)


def test_prior_defaults():
    assert DR_LOSS_PRIOR == 0.5 and FOCAL_LOSS_PRIOR == 0.01
    assert prior_bias() == 0.0
    assert drloss_cuda.init_classifier_prior is init_classifier_prior and drloss_cuda.prior_bias is prior_bias


def test_prior_bias_takes_any_real_number_and_tiny_priors():
    want = prior_bias(0.25)
    for form in (np.float32(0.25), np.float64(0.25), np.array(0.25), torch.tensor(0.25), fractions.Fraction(1, 4)):
        assert prior_bias(form) == pytest.approx(want, rel=1e-7), type(form)
    assert prior_bias(1e-320) == pytest.approx(math.log(1e-320), rel=1e-12)  # subnormal, still finite
    for bad in (np.bool_(True), torch.tensor(True), torch.tensor([0.5])):
        with pytest.raises(TypeError, match="prior"):
            prior_bias(bad)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_prior_bias_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="prior"):
        prior_bias(bad)
    with pytest.raises(TypeError, match="prior"):
        prior_bias("0.5")


def test_init_classifier_prior_sets_the_bias():
    conv = nn.Conv2d(4, 6, 3)
    weight = conv.weight.detach().clone()
    bias = init_classifier_prior(conv, 0.01)
    assert bias is conv.bias and conv.bias.requires_grad
    assert torch.equal(conv.bias.detach(), torch.full((6,), prior_bias(0.01)))
    assert torch.equal(conv.weight, weight)  # only the bias changes
    init_classifier_prior(conv)
    assert torch.equal(conv.bias.detach(), torch.zeros(6))  # DR loss's 0.5
    linear = nn.Linear(3, 2).double()
    init_classifier_prior(linear.bias, 0.25)
    torch.testing.assert_close(torch.sigmoid(linear.bias.detach()), torch.full((2,), 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="layer"):
        init_classifier_prior(nn.Conv2d(2, 2, 1, bias=False))
    with pytest.raises(TypeError, match="bias"):
        init_classifier_prior(torch.zeros(3, dtype=torch.int64))


def test_prior_helpers_import_without_the_extension(tmp_path):
    """Like drloss_cuda.reference, the prior helpers and the framework-free integration parts
    load no compiled code; and neither they nor `import drloss_cuda` import any framework
    (which matters where the frameworks are installed: CI's frameworks environment)."""
    import subprocess

    code = ("import sys, drloss_cuda\n"
            "from drloss_cuda import init_classifier_prior, prior_bias\n"
            "import drloss_cuda.integrations.mmdet_loss, drloss_cuda.integrations.detectron2_loss\n"
            "assert 'drloss_cuda._C' not in sys.modules and 'drloss_cuda.ops' not in sys.modules, sorted(sys.modules)\n"
            "frameworks = {'torchvision', 'mmdet', 'mmcv', 'mmengine', 'detectron2'} & set(sys.modules)\n"
            "assert not frameworks, frameworks\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Framework imports


def test_import_framework_reports_every_failure(tmp_path, monkeypatch):
    with pytest.raises(ImportError, match="no_such_framework_here.*needed by me"):
        import_framework("no_such_framework_here", needed_by="me")
    # A package that is installed but fails to load (e.g. compiled ops that do not match torch)
    # raises RuntimeError or OSError at import: still an ImportError, naming the cause.
    (tmp_path / "broken_framework_for_test.py").write_text("raise RuntimeError('operator does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="broken_framework_for_test.*RuntimeError: operator does not exist"):
        import_framework("broken_framework_for_test")
    assert import_framework("math") is math


def test_a_missing_framework_skips_unless_required(monkeypatch):
    monkeypatch.delenv(REQUIRE_FRAMEWORKS, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_framework_here"):
        framework_or_skip("no_such_framework_here")
    monkeypatch.setenv(REQUIRE_FRAMEWORKS, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_FRAMEWORKS}=1 but cannot import no_such_framework_here"):
        framework_or_skip("no_such_framework_here")
    assert framework_or_skip("math") is math


# ---------------------------------------------------------------------------------------------
# torchvision, for real where it imports


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


def test_docs_torchvision_snippet_runs_offline(capsys):
    """The documented torchvision snippet, as written: no download, DR loss, prior 0.5."""
    framework_or_skip("torchvision")
    namespace = {}
    exec(compile(doc_snippet("torchvision RetinaNet"), "docs/integration.md", "exec"), namespace)
    head = namespace["model"].head.classification_head
    assert type(head).__name__ == "DRLossClassificationHead"
    assert torch.equal(head.cls_logits.bias.detach(), torch.zeros_like(head.cls_logits.bias))
    losses = namespace["losses"]
    assert set(losses) == {"classification", "bbox_regression"}
    assert 0.0 < losses["classification"].item() < 6.0  # DR loss's range, not focal loss's
    assert "classification" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# mmdetection: the loss module and the multi-level loss need no mmdet


def _mmdet_targets(n, a, c):
    labels = torch.randint(0, c + 1, (n, a))
    weights = (torch.rand(n, a) > 0.25).float()
    labels[:, 0] = 0  # a positive in every image
    weights[:, 0] = 1.0
    return labels, weights


def _as_official(labels, weights, c):
    """mmdet targets in the official convention (classes 1..C, background 0, ignore -1)."""
    official = torch.where(labels == c, 0, labels + 1)
    return torch.where(weights > 0, official, -1)


def test_mmdet_loss_converts_labels_and_weights(generator):
    n, a, c = 3, 50, 4
    labels, weights = _mmdet_targets(n, a, c)
    logits = torch.randn(n, a, c, dtype=torch.float64, requires_grad=True)
    loss_module = MMDetSigmoidDRLoss(loss_weight=2.5)
    loss = loss_module(logits, labels, weights, avg_factor=123.0)
    want = 2.5 * reference.sigmoid_dr_loss(logits, _as_official(labels, weights, c), first_label=1)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, logits)
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-14)
    # avg_factor is not used: DR loss is not a sum over anchors.
    torch.testing.assert_close(loss_module(logits, labels, weights, avg_factor=1.0), loss.detach(), rtol=0, atol=0)
    # reduction and reduction_override, as every mmdet loss.
    per_image = loss_module(logits, labels, weights, reduction_override="none")
    assert per_image.shape == (n,)
    torch.testing.assert_close(per_image.sum(), loss_module(logits, labels, weights, reduction_override="sum"))
    torch.testing.assert_close(per_image.mean(), loss.detach())
    # Pooled [M, C] input, what a stock head passes for one level; no weights = every anchor counts.
    pooled = loss_module(logits.flatten(0, 1), labels.flatten())
    want_pooled = 2.5 * reference.sigmoid_dr_loss(logits.detach().flatten(0, 1), labels.flatten())
    torch.testing.assert_close(pooled.detach(), want_pooled, rtol=1e-12, atol=1e-12)


def test_mmdet_loss_arguments():
    with pytest.raises(ValueError, match="use_sigmoid"):
        MMDetSigmoidDRLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match="reduction"):
        MMDetSigmoidDRLoss(reduction="avg")
    # FocalLoss's keys, which a config inheriting RetinaNet's loss_cls merges in without _delete_
    with pytest.raises(TypeError, match=r"\['alpha', 'gamma'\]: FocalLoss's arguments.*_delete_=True"):
        MMDetSigmoidDRLoss(gamma=2.0, alpha=0.25)
    with pytest.raises(TypeError, match=r"unexpected arguments \['beta'\]$"):
        MMDetSigmoidDRLoss(beta=1.0)
    loss_module = MMDetSigmoidDRLoss(L=3.0, tau=2.0, margin=0.3, pos_lambda=0.5, neg_lambda=0.2,
                                     loss_fn=reference.sigmoid_dr_loss)
    logits, labels = torch.randn(2, 10, 3, dtype=torch.float64), torch.randint(0, 4, (2, 10))
    want = reference.sigmoid_dr_loss(logits, labels, L=3.0, tau=2.0, margin=0.3, pos_lambda=0.5, neg_lambda=0.2)
    torch.testing.assert_close(loss_module(logits, labels), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        loss_module(logits, labels, reduction_override="avg")
    with pytest.raises(ValueError, match="cls_score"):
        loss_module(logits[0, 0], labels[0, 0])
    with pytest.raises(ValueError, match="label_weights"):
        loss_module(logits, labels, torch.full((2, 10), 0.5))
    above = labels.clone()
    above[1, 7] = 4  # one label above num_classes (3), wherever the random ones fell
    with pytest.raises(ValueError, match="labels"):
        loss_module(logits, above)
    unchecked = MMDetSigmoidDRLoss(loss_fn=reference.sigmoid_dr_loss, check_targets=False)
    torch.testing.assert_close(unchecked(logits, labels, torch.full((2, 10), 0.5)), reference.sigmoid_dr_loss(logits, labels))
    # The head config: SigmoidDRLoss, sigmoid, whatever else the user wrote kept.
    assert head_loss_cls_config() == dict(type="SigmoidDRLoss", use_sigmoid=True)
    assert head_loss_cls_config(dict(loss_weight=2.0)) == dict(type="SigmoidDRLoss", use_sigmoid=True, loss_weight=2.0)
    with pytest.raises(ValueError, match="use_sigmoid"):
        head_loss_cls_config(dict(type="SigmoidDRLoss", use_sigmoid=False))


BAD_HYPERPARAMETERS = [dict(neg_lambda=1e-6), dict(pos_lambda=0.0), dict(L=-1.0), dict(tau=float("nan")),
                       dict(margin=float("inf"))]


@pytest.mark.parametrize("bad", BAD_HYPERPARAMETERS, ids=lambda bad: next(iter(bad)))
def test_mmdet_loss_checks_its_hyperparameters_at_construction(bad):
    """As SigmoidDRLoss does: the message is the loss's own, raised when mmdet builds the head,
    not at the first training step."""
    with pytest.raises(ValueError) as want:
        drloss_cuda.SigmoidDRLoss(**bad)
    with pytest.raises(ValueError) as got:
        MMDetSigmoidDRLoss(**bad)
    assert str(got.value) == str(want.value)


def test_mmdet_multilevel_loss_is_one_loss_per_image(generator):
    """Per-level head outputs [N, A*C, H, W] and per-level targets: one DR loss per image over
    every level, equal to the reference on the image's anchors built element by element."""
    n, a, c = 2, 3, 4
    shapes = [(6, 5), (3, 3), (1, 2)]
    cls_scores = [torch.randn(n, a * c, h, w, dtype=torch.float64, requires_grad=True) for h, w in shapes]
    targets = [_mmdet_targets(n, h * w * a, c) for h, w in shapes]
    loss = multilevel_classification_loss(MMDetSigmoidDRLoss(), cls_scores, [t[0] for t in targets],
                                          [t[1] for t in targets], c, avg_factor=7)
    for i in range(n):
        rows, row_labels = [], []
        for score, (labels, weights) in zip(cls_scores, targets):
            _, _, h, w = score.shape
            for y in range(h):
                for x in range(w):
                    for k in range(a):
                        j = (y * w + x) * a + k
                        rows.append(score[i, k * c:(k + 1) * c, y, x])
                        row_labels.append(_as_official(labels[i, j], weights[i, j], c))
        want_i = reference.sigmoid_dr_loss(torch.stack(rows), torch.stack(row_labels), first_label=1)
        if i == 0:
            want = want_i / n
        else:
            want = want + want_i / n
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(loss, cls_scores)
    want_grads = torch.autograd.grad(want, cls_scores)
    for g, wg in zip(grads, want_grads):
        torch.testing.assert_close(g, wg, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# detectron2: config plumbing and the dense loss need no detectron2


class _ConfigNode(dict):
    """A stand-in for detectron2's CfgNode (a dict with attribute access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def test_detectron2_config_plumbing():
    cfg = _ConfigNode(MODEL=_ConfigNode())
    prior, options = options_from_config(cfg)  # no DR_LOSS node: the defaults
    assert prior == DR_LOSS_PRIOR
    assert options == dict(pos_lambda=drloss_cuda.DEFAULT_POS_LAMBDA, neg_lambda=drloss_cuda.DEFAULT_NEG_LAMBDA,
                           L=drloss_cuda.DEFAULT_L, tau=drloss_cuda.DEFAULT_TAU, margin=drloss_cuda.DEFAULT_MARGIN)
    add_dr_loss_config(cfg)
    assert isinstance(cfg.MODEL.DR_LOSS, _ConfigNode) and set(cfg.MODEL.DR_LOSS) == set(CONFIG_KEYS)
    cfg.MODEL.DR_LOSS.PRIOR_PROB = 0.3
    cfg.MODEL.DR_LOSS.TAU = 2
    prior, options = options_from_config(cfg)
    assert prior == 0.3 and options["tau"] == 2.0 and options["L"] == drloss_cuda.DEFAULT_L
    drloss_cuda.SigmoidDRLoss(**options)  # every key is an argument of the loss


@pytest.mark.parametrize("bad", BAD_HYPERPARAMETERS, ids=lambda bad: next(iter(bad)))
def test_detectron2_config_loss_is_checked_when_built(bad):
    """The loss detectron2's from_config builds from cfg.MODEL.DR_LOSS checks its arguments
    there, with the loss's own message."""
    key, value = next(iter(bad.items()))
    cfg = add_dr_loss_config(_ConfigNode(MODEL=_ConfigNode()))
    cfg.MODEL.DR_LOSS[key.upper()] = value
    _, options = options_from_config(cfg)
    with pytest.raises(ValueError) as want:
        drloss_cuda.SigmoidDRLoss(**bad)
    with pytest.raises(ValueError) as got:
        drloss_cuda.integrations.fused_loss_module(**options)
    assert str(got.value) == str(want.value)


def test_detectron2_dense_loss(generator):
    """Per-level [N, Hi*Wi*A, K] logits and per-image labels (K background, -1 ignore)."""
    n, k = 2, 5
    sizes = [40, 10, 3]
    pred_logits = [torch.randn(n, s, k, dtype=torch.float64, requires_grad=True) for s in sizes]
    gt_labels = [torch.randint(-1, k + 1, (sum(sizes),)) for _ in range(n)]
    loss = dense_classification_loss(drloss_cuda.SigmoidDRLoss(), pred_logits, gt_labels, k)
    official = [torch.where(g == k, 0, torch.where(g >= 0, g + 1, -1)) for g in gt_labels]
    want = reference.sigmoid_dr_loss(torch.cat(pred_logits, 1), torch.stack(official), first_label=1)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    # A class id beyond K (detectron2's one-hot encoding fails on it) raises unless unchecked.
    gt_labels[1][3] = k + 1
    with pytest.raises(ValueError, match=f"gt_labels must lie in \\[-1, {k}\\], found {k + 1}"):
        dense_classification_loss(drloss_cuda.SigmoidDRLoss(), pred_logits, gt_labels, k)
    loss = dense_classification_loss(drloss_cuda.SigmoidDRLoss(), pred_logits, gt_labels, k, check_targets=False)
    assert torch.isfinite(loss)


def _stand_in_detectron2(root, with_dense_detector):
    """A package named detectron2 under root with what the integration touches at import:
    RetinaNet (with or without DenseDetector's _ema_update, 0.6's marker), the registry,
    configurable, and the box regression and event modules."""
    package = root / "detectron2"
    (package / "modeling").mkdir(parents=True)
    (package / "utils").mkdir()
    (package / "__init__.py").write_text("")
    (package / "utils" / "__init__.py").write_text("")
    (package / "utils" / "events.py").write_text("")
    (package / "config.py").write_text("def configurable(init):\n    return init\n")
    (package / "modeling" / "box_regression.py").write_text("")
    (package / "modeling" / "__init__.py").write_text(
        "class _Registry:\n"
        "    def register(self):\n"
        "        return lambda cls: cls\n"
        "META_ARCH_REGISTRY = _Registry()\n"
        "class RetinaNet:\n"
        + ("    def _ema_update(self, name, value, steps):\n        return value\n" if with_dense_detector else
           "    pass\n"))


@pytest.mark.parametrize("with_dense_detector", [False, True], ids=["older_than_0.6", "0.6_or_newer"])
def test_detectron2_version_check(tmp_path, with_dense_detector):
    """Importing the integration with a detectron2 whose RetinaNet predates DenseDetector (0.5
    and older) raises ImportError naming the version needed; with one that has it, it imports.
    A stand-in package, in a fresh process, so that any installed detectron2 stays untouched."""
    import subprocess

    _stand_in_detectron2(tmp_path, with_dense_detector)
    code = ("import detectron2, sys\n"
            f"assert detectron2.__file__.startswith({str(tmp_path)!r}), detectron2.__file__\n"
            "try:\n"
            "    import drloss_cuda.integrations.detectron2 as integration\n"
            "except ImportError as error:\n"
            "    print('ImportError:', error)\n"
            "else:\n"
            "    print('imported', integration.DRLossRetinaNet.__mro__[1].__module__)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    if with_dense_detector:
        assert out.strip() == "imported detectron2.modeling", out
    else:
        assert out.startswith("ImportError: drloss_cuda.integrations.detectron2 needs detectron2 0.6 or newer"), out
