"""Train a tiny one-stage detector on synthetic images with the fused sigmoid DR loss.

Images of coloured shapes (red squares, green squares, blue discs) are drawn on the fly with
their boxes; a small conv backbone with a RetinaNet-style anchor head (3 anchor sizes per cell,
C = 3 classes) is trained with the classification loss of your choice plus a smooth-L1 box
regression on the positive anchors. Anchors are matched by IoU: positive >= 0.5, background
< 0.4, ignored in between (plus each box's best anchor, as RetinaNet's low-quality matches).
Labels use drloss_cuda's default convention: classes 0..C-1, background C, ignore -1.

It trains with SGD and momentum, as detectors do, from the classifier prior of the loss: 0.5
for DR loss (the official configs'), 0.01 for focal loss (RetinaNet's).

    python examples/train_tiny_detector.py                     # fused DR loss, prior 0.5
    python examples/train_tiny_detector.py --loss dr-reference # pure-PyTorch DR loss
    python examples/train_tiny_detector.py --loss focal        # sigmoid focal loss, prior 0.01
    python examples/train_tiny_detector.py --prior 0.01        # DR loss from focal loss's prior
    python examples/train_tiny_detector.py --compare           # all of the above but dr-reference

At the end it prints AP at IoU 0.5 per class and their mean on a held-out synthetic set.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import drloss_cuda
from drloss_cuda import DR_LOSS_PRIOR, FOCAL_LOSS_PRIOR, conventions, init_classifier_prior, reference

CLASSES = ("red square", "green square", "blue disc")
NUM_CLASSES = len(CLASSES)
IMAGE = 32
STRIDE = 4
ANCHOR_SIZES = (6.0, 9.0, 13.0)
POS_IOU, NEG_IOU = 0.5, 0.4
MAX_OBJECTS = 3
COLOURS = torch.tensor([[0.9, 0.15, 0.1], [0.1, 0.8, 0.2], [0.15, 0.25, 0.95]])


# ---------------------------------------------------------------------------------------------
# Data


def make_batch(n, generator, dtype=torch.float32):
    """n images [n, 3, IMAGE, IMAGE] with 1..MAX_OBJECTS shapes each; boxes [n, MAX_OBJECTS, 4]
    (x1, y1, x2, y2) and classes [n, MAX_OBJECTS] (-1 pads the missing objects)."""
    images = 0.1 * torch.rand(n, 3, IMAGE, IMAGE, generator=generator)
    boxes = torch.zeros(n, MAX_OBJECTS, 4)
    classes = torch.full((n, MAX_OBJECTS), -1, dtype=torch.int64)
    ys, xs = torch.meshgrid(torch.arange(IMAGE) + 0.5, torch.arange(IMAGE) + 0.5, indexing="ij")
    count = torch.randint(1, MAX_OBJECTS + 1, (n,), generator=generator)
    size = torch.randint(6, 15, (n, MAX_OBJECTS), generator=generator).float()
    corner = torch.rand(n, MAX_OBJECTS, 2, generator=generator) * (IMAGE - size).unsqueeze(-1)
    kind = torch.randint(0, NUM_CLASSES, (n, MAX_OBJECTS), generator=generator)
    for i in range(n):
        for k in range(int(count[i])):
            x1, y1 = corner[i, k].tolist()
            s = float(size[i, k])
            if kind[i, k] == 2:  # disc
                cx, cy, r = x1 + s / 2, y1 + s / 2, s / 2
                mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
            else:
                mask = (xs >= x1) & (xs < x1 + s) & (ys >= y1) & (ys < y1 + s)
            images[i][:, mask] = COLOURS[kind[i, k]].unsqueeze(-1)
            boxes[i, k] = torch.tensor([x1, y1, x1 + s, y1 + s])
            classes[i, k] = kind[i, k]
    return images.to(dtype), boxes.to(dtype), classes


# ---------------------------------------------------------------------------------------------
# Anchors, matching, box coding


def make_anchors(dtype=torch.float32):
    """[H*W*A, 4] anchors ordered (y, x, anchor size), the order of the head's outputs."""
    cells = IMAGE // STRIDE
    centre = (torch.arange(cells, dtype=dtype) + 0.5) * STRIDE
    cy, cx = torch.meshgrid(centre, centre, indexing="ij")
    half = torch.tensor(ANCHOR_SIZES, dtype=dtype) / 2
    cx, cy = cx[..., None].expand(-1, -1, len(half)), cy[..., None].expand(-1, -1, len(half))
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1).reshape(-1, 4)


def box_iou(a, b):
    """IoU of [..., P, 4] and [..., Q, 4] boxes -> [..., P, Q]."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter)


def match(anchors, boxes, classes):
    """Labels [N, A] (class 0..C-1, background C, ignore -1) and the matched box [N, A, 4]."""
    iou = box_iou(anchors.expand(boxes.shape[0], -1, -1), boxes)  # [N, A, G]
    iou = torch.where(classes[:, None, :] >= 0, iou, -1.0)  # padded objects never match
    best_iou, best_gt = iou.max(dim=2)
    labels = torch.gather(classes, 1, best_gt)
    labels = torch.where(best_iou >= POS_IOU, labels, torch.where(best_iou < NEG_IOU, NUM_CLASSES, -1))
    # Low-quality matches: every box keeps its best anchor(s) as positives.
    best_for_gt = iou.max(dim=1, keepdim=True).values  # [N, 1, G]
    is_best = (iou == best_for_gt) & (classes[:, None, :] >= 0) & (best_for_gt > 0)
    forced = is_best.any(dim=2)
    forced_gt = is_best.float().argmax(dim=2)
    labels = torch.where(forced, torch.gather(classes, 1, forced_gt), labels)
    best_gt = torch.where(forced, forced_gt, best_gt)
    matched = torch.gather(boxes, 1, best_gt[..., None].expand(-1, -1, 4))
    return labels, matched


def encode(boxes, anchors):
    wa, ha = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    xa, ya = anchors[..., 0] + wa / 2, anchors[..., 1] + ha / 2
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    x, y = boxes[..., 0] + w / 2, boxes[..., 1] + h / 2
    return torch.stack([(x - xa) / wa, (y - ya) / ha, torch.log(w / wa), torch.log(h / ha)], dim=-1)


def decode(deltas, anchors):
    wa, ha = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    xa, ya = anchors[..., 0] + wa / 2, anchors[..., 1] + ha / 2
    x, y = deltas[..., 0] * wa + xa, deltas[..., 1] * ha + ya
    w = torch.exp(deltas[..., 2].clamp(max=4)) * wa
    h = torch.exp(deltas[..., 3].clamp(max=4)) * ha
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], dim=-1)


# ---------------------------------------------------------------------------------------------
# Model


class TinyDetector(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES, width=32, prior=DR_LOSS_PRIOR):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = len(ANCHOR_SIZES)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        )
        self.cls = nn.Conv2d(width, self.num_anchors * num_classes, 3, padding=1)
        self.box = nn.Conv2d(width, self.num_anchors * 4, 3, padding=1)
        nn.init.normal_(self.cls.weight, std=0.01)
        init_classifier_prior(self.cls, prior)
        nn.init.normal_(self.box.weight, std=0.01)
        nn.init.zeros_(self.box.bias)

    def forward(self, images):
        f = self.backbone(images)
        n = images.shape[0]
        # [N, A*C, H, W] -> [N, H*W*A, C]: anchors ordered (y, x, anchor) like make_anchors.
        logits = self.cls(f).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes)
        deltas = self.box(f).permute(0, 2, 3, 1).reshape(n, -1, 4)
        return logits, deltas


# ---------------------------------------------------------------------------------------------
# Losses


def focal_loss(logits, labels, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss over the counted anchors, divided by the number of positives (the
    RetinaNet normalization)."""
    valid, targets = conventions.one_hot_targets(labels, NUM_CLASSES)
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma * (alpha * targets + (1 - alpha) * (1 - targets))
    num_pos = targets.sum().clamp(min=1)
    return (loss * valid[..., None]).sum() / num_pos


LOSSES = ("dr", "dr-reference", "focal")


def default_prior(loss_name):
    """The classifier prior each loss is used with: DR loss's official 0.5, focal loss's 0.01."""
    return FOCAL_LOSS_PRIOR if loss_name == "focal" else DR_LOSS_PRIOR


def classification_loss(name, logits, labels):
    if name == "dr":
        # Per-image DR loss, mean over the images; NOT divided by the number of positives.
        return drloss_cuda.sigmoid_dr_loss(logits, labels)
    if name == "dr-reference":
        return reference.sigmoid_dr_loss(logits, labels)
    if name == "focal":
        return focal_loss(logits, labels)
    raise ValueError(f"unknown loss {name!r}")


def box_loss(deltas, anchors, labels, matched):
    positive = (labels >= 0) & (labels < NUM_CLASSES)
    target = encode(matched, anchors.expand_as(matched))
    loss = F.smooth_l1_loss(deltas, target, beta=1.0 / 9, reduction="none").sum(-1)
    return (loss * positive).sum() / positive.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------
# Evaluation: AP at IoU 0.5


def nms(boxes, scores, threshold):
    order = scores.argsort(descending=True)
    keep = []
    while order.numel():
        i = order[0]
        keep.append(int(i))
        if order.numel() == 1:
            break
        iou = box_iou(boxes[i][None], boxes[order[1:]])[0]
        order = order[1:][iou <= threshold]
    return torch.tensor(keep, dtype=torch.int64)


@torch.no_grad()
def detect(model, images, anchors, score_threshold=0.05, per_class=10):
    logits, deltas = model(images)
    scores = torch.sigmoid(logits.float())
    boxes = decode(deltas.float(), anchors.float())
    detections = []  # per image: list of (class, score, box)
    for i in range(images.shape[0]):
        found = []
        for c in range(NUM_CLASSES):
            keep = scores[i, :, c] > score_threshold
            if not keep.any():
                continue
            b, s = boxes[i][keep], scores[i, keep, c]
            for j in nms(b, s, 0.5)[:per_class]:
                found.append((c, float(s[j]), b[j]))
        detections.append(found)
    return detections


def average_precision_50(detections, boxes, classes):
    """AP at IoU 0.5 per class (all-point interpolation) on the given images."""
    aps = []
    for c in range(NUM_CLASSES):
        gts = [boxes[i][classes[i] == c] for i in range(len(detections))]
        total = sum(g.shape[0] for g in gts)
        dets = sorted(((s, i, b) for i, found in enumerate(detections) for (k, s, b) in found if k == c),
                      key=lambda t: -t[0])
        used = [torch.zeros(g.shape[0], dtype=torch.bool) for g in gts]
        tp = []
        for _, i, b in dets:
            hit = False
            if gts[i].shape[0]:
                iou = box_iou(b[None].float(), gts[i].float())[0]
                iou[used[i]] = -1
                j = int(iou.argmax())
                if iou[j] >= 0.5:
                    used[i][j] = True
                    hit = True
            tp.append(hit)
        if total == 0:
            continue
        tp = torch.tensor(tp, dtype=torch.float64)
        cum_tp = tp.cumsum(0)
        recall = cum_tp / total
        precision = cum_tp / torch.arange(1, len(tp) + 1, dtype=torch.float64)
        # Precision envelope, then the area under the recall steps.
        ap = 0.0
        prev_recall = 0.0
        for k in range(len(tp)):
            if tp[k]:
                ap += (recall[k].item() - prev_recall) * precision[k:].max().item()
                prev_recall = recall[k].item()
        aps.append(ap)
    return aps


# ---------------------------------------------------------------------------------------------
# Training


def train(loss_name="dr", steps=300, batch=16, lr=0.05, momentum=0.9, weight_decay=1e-4, warmup=50, prior=None,
          seed=0, dtype=torch.float32, log_every=50, model=None, log=print):
    """Trains with SGD and momentum from `seed` (weights and data), the learning rate rising
    linearly over the first `warmup` steps; returns (model, per-step total losses). `prior`
    (default: the loss's own, see default_prior) sets the classifier bias of a new model."""
    torch.manual_seed(seed)
    if model is None:
        model = TinyDetector(prior=default_prior(loss_name) if prior is None else prior)
    model = model.to(dtype)
    anchors = make_anchors(dtype)
    data = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(warmup, 1)))
    losses = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        images, boxes, classes = make_batch(batch, data, dtype)
        labels, matched = match(anchors, boxes, classes)
        logits, deltas = model(images)
        cls = classification_loss(loss_name, logits, labels)
        reg = box_loss(deltas, anchors, labels, matched)
        loss = cls + reg
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach())
        if log and (step % log_every == 0 or step == 1):
            log(f"step {step:4d}  loss {loss.item():.4f}  (cls {cls.item():.4f}, box {reg.item():.4f})  "
                f"{time.perf_counter() - start:.1f}s")
    return model, losses


def evaluate(model, images=200, seed=12345, dtype=torch.float32):
    data = torch.Generator().manual_seed(seed)
    images, boxes, classes = make_batch(images, data, dtype)
    model.eval()
    detections = detect(model, images, make_anchors(dtype))
    model.train()
    return average_precision_50(detections, boxes, classes)


def run(loss_name, prior, args):
    start = time.perf_counter()
    model, losses = train(loss_name, steps=args.steps, batch=args.batch, lr=args.lr, momentum=args.momentum,
                          weight_decay=args.weight_decay, warmup=args.warmup, prior=prior, seed=args.seed,
                          log=None if args.compare else print)
    aps = evaluate(model, images=args.eval_images)
    name = f"loss={loss_name} prior={default_prior(loss_name) if prior is None else prior}"
    print(f"{name}  AP50 per class: " + ", ".join(f"{n} {ap:.3f}" for n, ap in zip(CLASSES, aps)))
    print(f"{name}  mAP@0.5 = {sum(aps) / len(aps):.3f}  final loss {losses[-1].item():.4f}  "
          f"({args.eval_images} held-out images, {time.perf_counter() - start:.0f}s in total)", flush=True)
    return aps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--loss", choices=LOSSES, default="dr",
                        help="dr: the fused sigmoid_dr_loss; dr-reference: drloss_cuda.reference (pure PyTorch); "
                             "focal: sigmoid focal loss divided by the number of positives")
    parser.add_argument("--prior", type=float, default=None,
                        help=f"classifier prior (initial probability); default: {DR_LOSS_PRIOR} for DR loss, "
                             f"{FOCAL_LOSS_PRIOR} for focal loss")
    parser.add_argument("--compare", action="store_true",
                        help=f"train DR loss at prior {DR_LOSS_PRIOR}, DR loss at prior {FOCAL_LOSS_PRIOR} and focal "
                             f"loss at prior {FOCAL_LOSS_PRIOR} one after the other (ignores --loss and --prior)")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--batch", type=int, default=16, help="images per step")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate after the warmup")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    parser.add_argument("--warmup", type=int, default=50, help="steps of linear learning-rate warmup")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of the training images")
    parser.add_argument("--eval-images", type=int, default=200, help="held-out images for the mAP@0.5")
    args = parser.parse_args(argv)

    if not args.compare:
        return run(args.loss, args.prior, args)
    return {(name, prior): run(name, prior, args)
            for name, prior in (("dr", DR_LOSS_PRIOR), ("dr", FOCAL_LOSS_PRIOR), ("focal", FOCAL_LOSS_PRIOR))}


if __name__ == "__main__":
    main()
