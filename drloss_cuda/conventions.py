"""Label converters from the anchor-assignment outputs of common detection frameworks.

Every converter returns labels in this package's default convention, the one of
`sigmoid_dr_loss(..., first_label=0)`:

    0 .. C-1   the anchor is a positive of class column c (that entry is positive, the other
               C-1 entries of the anchor are negative)
    C          background (all C entries negative)
    -1         ignored (no entry counts)

so the result goes straight into `sigmoid_dr_loss(logits, labels)` with the default
first_label. "Class column" means the column of the framework's own classification logits: the
converters never renumber classes, they only translate how background and ignore are written.

Nothing here imports a framework: the inputs are plain tensors, so the converters work (and
are tested) without torchvision, detectron2 or mmdetection installed.

The `check=True` argument validates the values (a host sync per call, two for from_mmdet's labels
and weights); pass check=False in a training loop once the wiring is known to be right.
"""

import torch

from .reference import group_masks

IGNORE = -1

# torchvision.models.detection._utils.Matcher's codes for unmatched anchors.
TORCHVISION_BELOW_LOW_THRESHOLD = -1
TORCHVISION_BETWEEN_THRESHOLDS = -2


def _as_batch(per_image, name):
    """A list/tuple of [A] tensors (same A) or an [N, A] tensor -> [N, A] tensor."""
    if isinstance(per_image, torch.Tensor):
        if per_image.dim() != 2:
            raise ValueError(f"{name} must be [N, A] or a list of [A] tensors, got shape {list(per_image.shape)}")
        return per_image
    per_image = list(per_image)
    for i, t in enumerate(per_image):
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ValueError(f"{name}[{i}] must be a 1-D tensor of per-anchor values")
    if not per_image:
        raise ValueError(f"{name} is empty: pass an [0, A] tensor for a batch with no image")
    if len({t.shape[0] for t in per_image}) != 1:
        raise ValueError(f"{name}: every image must have the same number of anchors, got {[t.shape[0] for t in per_image]}")
    return torch.stack(per_image)


def _check_integer(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be an integer tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")


def _check_range(name, t, low, high):
    """low <= t < high everywhere (a host sync)."""
    if t.numel() and bool(((t < low) | (t >= high)).any()):
        bad = t[(t < low) | (t >= high)][0].item()
        raise ValueError(f"{name} must lie in [{low}, {high - 1}], found {bad}")


def _check_ranges(ranges):
    """Every (name, t, low, high) of `ranges` within [low, high), with one host sync for all of
    them (a per-image check would take one per image); the first one out of range is then named."""
    flags = [((t < low) | (t >= high)).any() for _, t, low, high in ranges if t.numel()]
    if flags and bool(torch.stack([f.to(flags[0].device) for f in flags]).any()):
        for name, t, low, high in ranges:
            _check_range(name, t, low, high)


def from_torchvision(matched_idxs, gt_labels, num_classes, *, check=True):
    """Labels from torchvision RetinaNet's matcher output.

    Args:
        matched_idxs: per image, [A] int64 from `det_utils.Matcher`: >= 0 indexes the image's
            ground-truth boxes, -1 (BELOW_LOW_THRESHOLD) is background, -2 (BETWEEN_THRESHOLDS)
            is ignored. A list of N tensors or an [N, A] tensor.
        gt_labels: per image, [K_i] labels of the ground-truth boxes (`targets[i]["labels"]`).
        num_classes: C, the number of columns of the head's `cls_logits` (torchvision's
            `num_classes`, which counts the background class of its datasets).

    torchvision's `RetinaNetClassificationHead.compute_loss` sets the one-hot target at column
    `gt_labels[matched_idxs]` directly, so a box label IS the class column; with datasets that
    number classes 1..K and reserve 0 for background (COCO in torchvision), column 0 is never
    positive and counts as a negative of every anchor, exactly as in its focal loss. This
    converter keeps that: label = gt_labels[matched_idx] for matched anchors, C for -1, -1 for -2.

    Returns:
        [N, A] int64 labels (first_label=0 convention).
    """
    matched = _as_batch(matched_idxs, "matched_idxs")
    if isinstance(gt_labels, torch.Tensor):
        gt_labels = list(gt_labels) if gt_labels.dim() == 2 else [gt_labels]
    gt_labels = list(gt_labels)
    if len(gt_labels) != matched.shape[0]:
        raise ValueError(f"gt_labels has {len(gt_labels)} images, matched_idxs has {matched.shape[0]}")
    _check_integer("matched_idxs", matched)
    for i, gt in enumerate(gt_labels):
        if isinstance(gt, dict):
            raise TypeError(f"gt_labels[{i}] is a dict: pass each image's box labels, "
                            "[t[\"labels\"] for t in targets], not the targets")
        _check_integer(f"gt_labels[{i}]", gt)
    if check:
        ranges = []
        for i, (m, gt) in enumerate(zip(matched, gt_labels)):
            ranges.append((f"matched_idxs[{i}]", m, TORCHVISION_BETWEEN_THRESHOLDS, gt.shape[0]))
            ranges.append((f"gt_labels[{i}]", gt, 0, num_classes))
        _check_ranges(ranges)
    out = []
    for m, gt in zip(matched, gt_labels):
        # Append the background label so that -1/-2 can gather it: no host sync, no empty index.
        table = torch.cat([gt.to(device=m.device, dtype=torch.int64),
                           torch.full((1,), num_classes, dtype=torch.int64, device=m.device)])
        m = m.long()
        labels = table[torch.where(m >= 0, m, gt.shape[0])]
        out.append(torch.where(m == TORCHVISION_BETWEEN_THRESHOLDS, IGNORE, labels))
    if not out:
        return matched.long()
    return torch.stack(out)


def from_detectron2(gt_labels, num_classes, *, check=True):
    """Labels from detectron2 RetinaNet's `label_anchors` (0..K-1 classes, K background,
    -1 ignore): already this package's convention. Stacks a per-image list into [N, A] and
    checks the values.

    Args:
        gt_labels: a list of N [A] tensors (what `label_anchors` returns) or an [N, A] tensor.
        num_classes: K, the number of columns of the classification logits.
    """
    labels = _as_batch(gt_labels, "gt_labels")
    _check_integer("gt_labels", labels)
    if check:
        _check_range("gt_labels", labels, IGNORE, num_classes + 1)
    return labels.long()


def from_mmdet(labels, label_weights, num_classes, *, check=True):
    """Labels from mmdetection's anchor targets (`get_targets` of AnchorHead/RetinaHead):
    labels with background = num_classes and label_weights where 0 marks an anchor that does
    not count (between the IoU thresholds, or outside the image).

    Args:
        labels: [N, A] int tensor (0..C-1 classes, C background), or a per-level list of
            [N, A_l] tensors (concatenated in level order, as `concat_levels` does).
        label_weights: same shapes, float; 0 = ignore, 1 = counts. DR loss has no per-anchor
            weight, so with check=True any other weight raises. None: every anchor counts.
        num_classes: C, the number of columns of `cls_score` (mmdetection's num_classes with
            use_sigmoid=True).
    """
    if isinstance(labels, (list, tuple)):
        labels = torch.cat(list(labels), dim=1)
    _check_integer("labels", labels)
    if isinstance(label_weights, (list, tuple)):
        label_weights = torch.cat(list(label_weights), dim=1)
    if label_weights is not None:
        if not isinstance(label_weights, torch.Tensor):
            raise TypeError(f"label_weights must be a tensor or None, got {type(label_weights).__name__}")
        if labels.shape != label_weights.shape:
            raise ValueError(f"labels {list(labels.shape)} and label_weights {list(label_weights.shape)} differ in shape")
    if check:
        _check_range("labels", labels, 0, num_classes + 1)
        if label_weights is not None and label_weights.numel() and bool(((label_weights != 0) & (label_weights != 1)).any()):
            raise ValueError("label_weights must be 0 (ignore) or 1: DR loss has no per-anchor weight")
    if label_weights is None:
        return labels.long()
    return torch.where(label_weights > 0, labels.long(), IGNORE)


def check_box_labels(box_labels, num_classes, name="box labels"):
    """Checks the ground-truth boxes' class labels, a list of per-image tensors, against
    [0, num_classes - 1] with one host sync. mmdetection and detectron2 number classes from 0
    and write background as num_classes once anchors are matched, so a box labelled
    num_classes (classes numbered from 1, or num_classes one short) would train as background
    without an error: this check catches it before the matching."""
    ranges = []
    for i, t in enumerate(box_labels):
        _check_integer(f"{name}[{i}]", t)
        ranges.append((f"{name}[{i}]", t, 0, num_classes))
    try:
        _check_ranges(ranges)
    except ValueError as error:
        raise ValueError(f"{error} (num_classes={num_classes}, classes numbered from 0)") from None


def level_logits(cls_score, num_classes):
    """One FPN level's head output [N, A*C, H, W] -> [N, H*W*A, C], anchors ordered
    (y, x, anchor), as mmdetection and detectron2 flatten their anchors (and their targets)."""
    n, channels, h, w = cls_score.shape
    if channels % num_classes:
        raise ValueError(f"cls_score has {channels} channels, not a multiple of num_classes={num_classes}")
    return cls_score.permute(0, 2, 3, 1).reshape(n, h * w * (channels // num_classes), num_classes)


def concat_levels(cls_scores, labels=None, num_classes=None):
    """Concatenates per-level outputs into the per-image tensors sigmoid_dr_loss takes.

    Args:
        cls_scores: per level, [N, H*W*A, C] logits, or raw [N, A*C, H, W] head outputs (then
            num_classes is required and `level_logits` flattens them).
        labels: optional, per level [N, H*W*A] labels (already converted, e.g. by from_mmdet on
            each level, or raw labels to convert after concatenation).

    Returns:
        logits [N, A_total, C] (levels in the given order, which must be the order the targets
        were built in), and labels [N, A_total] when labels were given.
    """
    cls_scores = list(cls_scores)
    flat = []
    for i, score in enumerate(cls_scores):
        if score.dim() == 4:
            if num_classes is None:
                raise ValueError("concat_levels: num_classes is required for [N, A*C, H, W] cls_scores")
            score = level_logits(score, num_classes)
        elif score.dim() != 3:
            raise ValueError(f"cls_scores[{i}] must be [N, H*W*A, C] or [N, A*C, H, W], got {list(score.shape)}")
        flat.append(score)
    logits = torch.cat(flat, dim=1)
    if labels is None:
        return logits
    labels = list(labels)
    if len(labels) != len(flat):
        raise ValueError(f"{len(flat)} levels of cls_scores but {len(labels)} levels of labels")
    for i, (score, lab) in enumerate(zip(flat, labels)):
        if lab.shape != score.shape[:2]:
            raise ValueError(f"labels[{i}] must have shape {list(score.shape[:2])}, got {list(lab.shape)}")
    return logits, torch.cat(labels, dim=1)


def one_hot_targets(labels, num_classes):
    """(valid [N, A] bool, targets [N, A, C] float) that `labels` (this package's convention)
    stand for: what a sigmoid focal loss over the valid anchors would use. For tests and for
    switching between focal loss and DR loss on the same labels."""
    positive, _ = group_masks(labels, num_classes, 0)
    return labels >= 0, positive.float()
