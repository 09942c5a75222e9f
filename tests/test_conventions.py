"""Label converters against synthetic matcher outputs of torchvision, detectron2 and
mmdetection.

DR loss depends on the labels only through which entries are positive and which count, so each
converter is checked to give, for every anchor, the same (counts?, one-hot target) as the
framework's own classification loss builds from its raw outputs (rewritten here from the
frameworks' documented semantics), plus element-by-element expectations from plain loops."""

import pytest
import torch

import drloss_cuda
from drloss_cuda import conventions, reference
from drloss_cuda.integrations import import_framework


def _torchvision_matches(n, a, num_classes, first_class=1):
    """Per image: matched_idxs in {-2, -1, 0..K-1} and gt labels in first_class..C-1 (torchvision
    datasets number classes from 1, column 0 is their background)."""
    matched, gts = [], []
    for i in range(n):
        k = int(torch.randint(0, 4, ()))  # images with no box too
        gts.append(torch.randint(first_class, num_classes, (k,)))
        lo = -2
        m = torch.randint(lo, max(k, 1), (a,)) if k else torch.randint(-2, 0, (a,))
        matched.append(m)
    return matched, gts


def _torchvision_targets(matched, gt, num_classes):
    # What RetinaNetClassificationHead.compute_loss builds: a one-hot target at column
    # gt[matched] for the anchors with matched >= 0, and the anchors with matched != -2 count.
    target = torch.zeros(matched.shape[0], num_classes)
    fg = matched >= 0
    target[fg, gt[matched[fg]]] = 1.0
    return matched != -2, target


def test_torchvision_matches_its_focal_targets(generator):
    n, a, c = 5, 40, 4
    matched, gts = _torchvision_matches(n, a, c)
    labels = conventions.from_torchvision(matched, gts, c)
    assert labels.shape == (n, a) and labels.dtype == torch.int64
    valid, target = conventions.one_hot_targets(labels, c)
    for i in range(n):
        want_valid, want_target = _torchvision_targets(matched[i], gts[i], c)
        assert torch.equal(valid[i], want_valid)
        assert torch.equal(target[i][valid[i]], want_target[want_valid])
        for j in range(a):  # element by element
            m = int(matched[i][j])
            expected = -1 if m == -2 else (c if m == -1 else int(gts[i][m]))
            assert int(labels[i, j]) == expected
    # Column 0 (torchvision's background class) is never positive here: a negative everywhere.
    assert not target[..., 0].any()
    # The [N, A] tensor form gives the same.
    assert torch.equal(conventions.from_torchvision(torch.stack(matched), gts, c), labels)


def test_torchvision_checks():
    with pytest.raises(ValueError, match="gt_labels"):
        conventions.from_torchvision([torch.tensor([0, -1])], [torch.tensor([4])], 4)
    with pytest.raises(ValueError, match="matched_idxs"):
        conventions.from_torchvision([torch.tensor([1, -1])], [torch.tensor([2])], 4)
    with pytest.raises(ValueError, match="matched_idxs"):
        conventions.from_torchvision([torch.tensor([-3])], [torch.tensor([2])], 4)
    with pytest.raises(TypeError, match="matched_idxs"):
        conventions.from_torchvision([torch.tensor([0.0])], [torch.tensor([2])], 4)
    # torchvision's targets (dicts) where their labels belong, and labels not in a tensor
    targets = [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([2])}]
    with pytest.raises(TypeError, match=r'gt_labels\[0\] is a dict: .*\[t\["labels"\] for t in targets\]'):
        conventions.from_torchvision([torch.tensor([0, -1])], targets, 4)
    with pytest.raises(TypeError, match=r"gt_labels\[0\] must be an integer tensor, got list"):
        conventions.from_torchvision([torch.tensor([0, -1])], [[2]], 4)


def test_torchvision_checks_a_batch_with_one_host_sync(monkeypatch):
    # One bool() for all the images' ranges (per-image checks took two host syncs per image);
    # the per-range check, which names the culprit, runs only when something is out of range.
    matched = [torch.tensor([0, -1, -2]), torch.tensor([-1, 1, 0]), torch.tensor([0, -2, -1])]
    gts = [torch.tensor([2]), torch.tensor([0, 3]), torch.tensor([1])]
    named, syncs = [], []
    monkeypatch.setattr(conventions, "_check_range", lambda *args: named.append(args[0]))
    real_bool = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: syncs.append(1) or real_bool(t))
    conventions.from_torchvision(matched, gts[:2] + [torch.tensor([1])], 4)
    assert named == [] and len(syncs) == 1
    monkeypatch.undo()
    gts[2] = torch.tensor([4])
    with pytest.raises(ValueError, match=r"gt_labels\[2\] must lie in \[0, 3\], found 4"):
        conventions.from_torchvision(matched, gts, 4)


def test_torchvision_real_matcher(generator):
    """With torchvision installed: its own Matcher and box_iou produce the matched_idxs."""
    try:  # a torchvision whose compiled ops fail to load raises RuntimeError, not ImportError
        tv = import_framework("torchvision")
    except ImportError as error:
        pytest.skip(str(error))
    from torchvision.models.detection import _utils as det_utils

    matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
    anchors = torch.rand(60, 2) * 50
    anchors = torch.cat([anchors, anchors + 5 + torch.rand(60, 2) * 20], dim=1)
    boxes = anchors[torch.randperm(60)[:3]] + torch.randn(3, 4)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    gt = torch.randint(1, 5, (3,))
    matched = matcher(tv.ops.box_iou(boxes, anchors))
    labels = conventions.from_torchvision([matched], [gt], 5)
    valid, target = conventions.one_hot_targets(labels, 5)
    want_valid, want_target = _torchvision_targets(matched, gt, 5)
    assert torch.equal(valid[0], want_valid) and torch.equal(target[0][valid[0]], want_target[want_valid])


def test_detectron2_pass_through(generator):
    n, a, k = 3, 30, 6
    gt = [torch.randint(-1, k + 1, (a,)) for _ in range(n)]
    labels = conventions.from_detectron2(gt, k)
    assert torch.equal(labels, torch.stack(gt))
    # detectron2's RetinaNet: valid = label >= 0, target = one_hot(label, K + 1)[:, :K].
    stacked = torch.stack(gt)
    want_valid = stacked >= 0
    want_target = torch.nn.functional.one_hot(stacked[want_valid], k + 1)[:, :k].float()
    valid, target = conventions.one_hot_targets(labels, k)
    assert torch.equal(valid, want_valid) and torch.equal(target[valid], want_target)
    assert torch.equal(conventions.from_detectron2(stacked.int(), k), stacked)
    with pytest.raises(ValueError, match="gt_labels"):
        conventions.from_detectron2([torch.tensor([k + 1])], k)
    with pytest.raises(ValueError, match="gt_labels"):
        conventions.from_detectron2([torch.tensor([-2])], k)
    with pytest.raises(ValueError, match="same number of anchors"):
        conventions.from_detectron2([torch.tensor([0]), torch.tensor([0, 1])], k)


def _mmdet_level_targets(n, sizes, c):
    labels = [torch.randint(0, c + 1, (n, s)) for s in sizes]
    weights = [(torch.rand(n, s) > 0.3).float() for s in sizes]
    return labels, weights


def test_mmdet_labels_and_weights(generator):
    n, c, sizes = 2, 3, [48, 12, 3]
    labels, weights = _mmdet_level_targets(n, sizes, c)
    converted = conventions.from_mmdet(labels, weights, c)
    flat_labels, flat_weights = torch.cat(labels, 1), torch.cat(weights, 1)
    assert converted.shape == (n, sum(sizes))
    for i in range(n):
        for j in range(sum(sizes)):
            want = int(flat_labels[i, j]) if flat_weights[i, j] > 0 else -1
            assert int(converted[i, j]) == want
    # mmdetection's sigmoid classification loss: one-hot of labels < C, weight 0 drops the anchor.
    valid, target = conventions.one_hot_targets(converted, c)
    assert torch.equal(valid, flat_weights > 0)
    want_target = torch.nn.functional.one_hot(flat_labels, c + 1)[..., :c].float()
    assert torch.equal(target[valid], want_target[valid])
    with pytest.raises(ValueError, match="label_weights"):
        conventions.from_mmdet(flat_labels, flat_weights * 0.5 + 0.5, c)
    with pytest.raises(ValueError, match="labels"):
        conventions.from_mmdet(flat_labels + 1, flat_weights, c)
    # No weights: every anchor counts (as MMDetSigmoidDRLoss takes label_weights=None).
    assert torch.equal(conventions.from_mmdet(labels, None, c), flat_labels)
    with pytest.raises(ValueError, match="labels"):
        conventions.from_mmdet(flat_labels + 1, None, c)
    with pytest.raises(TypeError, match="labels must be an integer tensor, got NoneType"):
        conventions.from_mmdet(None, flat_weights, c)
    with pytest.raises(TypeError, match="label_weights must be a tensor or None, got float"):
        conventions.from_mmdet(flat_labels, 1.0, c)


def test_level_logits_and_concat_order(generator):
    """Anchor j of level l is (y, x, a) with j = (y * W + x) * A + a; levels follow each other."""
    n, a, c = 2, 3, 4
    shapes = [(4, 5), (2, 3), (1, 1)]
    raw = [torch.randn(n, a * c, h, w) for h, w in shapes]
    logits = conventions.concat_levels(raw, num_classes=c)
    assert logits.shape == (n, sum(h * w * a for h, w in shapes), c)
    offset = 0
    for level, (h, w) in enumerate(shapes):
        for y in range(h):
            for x in range(w):
                for k in range(a):
                    j = offset + (y * w + x) * a + k
                    assert torch.equal(logits[:, j, :], raw[level][:, k * c:(k + 1) * c, y, x])
        offset += h * w * a
    # Already-flattened levels and labels.
    flat = [conventions.level_logits(r, c) for r in raw]
    labels = [torch.randint(-1, c + 1, (n, f.shape[1])) for f in flat]
    got_logits, got_labels = conventions.concat_levels(flat, labels)
    assert torch.equal(got_logits, logits)
    assert torch.equal(got_labels, torch.cat(labels, 1))
    with pytest.raises(ValueError, match="labels\\[1\\]"):
        conventions.concat_levels(flat, [labels[0], labels[2], labels[1]])
    with pytest.raises(ValueError, match="num_classes"):
        conventions.concat_levels(raw)


def test_mmdet_levels_into_the_loss(generator):
    """Per-level head outputs and per-level targets -> one fused loss per image, equal to the
    reference on the concatenated tensors and to the per-image losses computed level-free."""
    n, a, c = 3, 2, 3
    shapes = [(6, 6), (3, 3)]
    raw = [torch.randn(n, a * c, h, w, dtype=torch.float64, requires_grad=True) for h, w in shapes]
    labels, weights = _mmdet_level_targets(n, [h * w * a for h, w in shapes], c)
    logits, lab = conventions.concat_levels(raw, [conventions.from_mmdet(l, w, c) for l, w in zip(labels, weights)],
                                            num_classes=c)
    assert torch.equal(lab, conventions.from_mmdet(labels, weights, c))
    loss = drloss_cuda.sigmoid_dr_loss(logits, lab)
    want = reference.sigmoid_dr_loss(logits.detach(), lab)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-12, atol=1e-12)
    loss.backward()
    assert all(r.grad is not None and r.grad.shape == r.shape for r in raw)


def test_one_hot_targets_matches_loss_semantics(generator):
    """The fused loss on converted labels equals the reference fed with first_label=1 labels
    built from the (valid, target) pair: the converters' output is what the loss reads."""
    n, a, c = 2, 25, 4
    matched, gts = _torchvision_matches(n, a, c, first_class=0)
    labels = conventions.from_torchvision(matched, gts, c)
    valid, target = conventions.one_hot_targets(labels, c)
    # Rebuild labels in the official convention (classes 1..C, background 0, ignore -1).
    official = torch.where(target.any(-1), target.argmax(-1) + 1, 0)
    official = torch.where(valid, official, -1)
    logits = torch.randn(n, a, c, dtype=torch.float64)
    torch.testing.assert_close(drloss_cuda.sigmoid_dr_loss(logits, labels),
                               reference.sigmoid_dr_loss(logits, official, first_label=1), rtol=1e-12, atol=1e-12)


def test_check_box_labels_catches_a_class_numbered_num_classes():
    """Box labels must be class columns, 0..num_classes-1: a label equal to num_classes (classes
    numbered from 1) would be matched as background by mmdetection and detectron2."""
    conventions.check_box_labels([torch.tensor([0, 2]), torch.tensor([], dtype=torch.int64), torch.tensor([1])], 3)
    conventions.check_box_labels([], 3)
    conventions.check_box_labels([torch.zeros(0, dtype=torch.int64)], 3)
    with pytest.raises(ValueError, match=r"gt\.labels\[1\] must lie in \[0, 2\], found 3 \(num_classes=3, classes numbered from 0\)"):
        conventions.check_box_labels([torch.tensor([0]), torch.tensor([2, 3])], 3, "gt.labels")
    with pytest.raises(ValueError, match="found -1"):
        conventions.check_box_labels([torch.tensor([-1])], 3)
    with pytest.raises(TypeError, match=r"box labels\[1\] must be an integer tensor, got torch.float32"):
        conventions.check_box_labels([torch.tensor([0]), torch.tensor([1.0])], 3)
