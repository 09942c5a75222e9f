"""Why DR loss needs the classifier prior 0.5: the first SGD steps of a torchvision RetinaNet.

Three runs from the same initial weights and the same synthetic batch, differing only in the
classification loss and the classifier prior (the initial probability of every entry):

    focal loss, prior 0.01   torchvision's RetinaNet as it comes
    DR loss,    prior 0.01   DR loss swapped in, the focal-loss prior kept
    DR loss,    prior 0.5    DR loss with its own prior (drloss_cuda.integrations.torchvision)

For each run it prints the classification loss at every step and, at the first step, the norm
of the gradient reaching the classification layer. Needs torchvision; no download (no
pretrained weights).

    python examples/retinanet_prior.py
    python examples/retinanet_prior.py --backbone resnet50 --image-size 128
"""

import argparse
import copy

import torch

from drloss_cuda import DR_LOSS_PRIOR, FOCAL_LOSS_PRIOR, init_classifier_prior
from drloss_cuda.integrations import import_framework


def build_retinanet(backbone, num_classes, image_size, seed):
    torchvision = import_framework("torchvision")
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(seed)
    if backbone == "resnet50":
        return torchvision.models.detection.retinanet_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes, min_size=image_size, max_size=image_size)
    # ResNet-18 with a 64-channel FPN (P3-P7): the same detector, small enough for a CPU.
    body = torchvision.models.resnet18(weights=None)
    fpn = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], 64,
                          extra_blocks=LastLevelP6P7(64, 64))
    return RetinaNet(fpn, num_classes=num_classes, min_size=image_size, max_size=image_size)


def synthetic_batch(batch, num_classes, image_size, seed):
    """Random images with 1-3 random boxes each; labels 1..num_classes-1 (torchvision's
    datasets keep 0 for the background)."""
    data = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        k = int(torch.randint(1, 4, (), generator=data))
        corner = torch.rand(k, 2, generator=data) * image_size * 0.6
        size = image_size * (0.15 + 0.3 * torch.rand(k, 2, generator=data))
        images.append(torch.rand(3, image_size, image_size, generator=data))
        targets.append({"boxes": torch.cat([corner, corner + size], 1),
                        "labels": torch.randint(1, num_classes, (k,), generator=data)})
    return images, targets


def run(model, images, targets, steps, lr):
    """SGD with momentum on one batch; returns the classification losses and the first step's
    gradient norm at the classification layer."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    classifier = model.head.classification_head.cls_logits
    model.train()
    losses, grad_norm = [], None
    for _ in range(steps):
        loss = model(images, targets)
        optimizer.zero_grad()
        (loss["classification"] + loss["bbox_regression"]).backward()
        if grad_norm is None:
            grad_norm = classifier.weight.grad.norm().item()
        optimizer.step()
        losses.append(loss["classification"].item())
    return losses, grad_norm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backbone", choices=("resnet18", "resnet50"), default="resnet18",
                        help="resnet18: ResNet-18 + 64-channel FPN; resnet50: torchvision's retinanet_resnet50_fpn")
    parser.add_argument("--steps", type=int, default=10, help="SGD steps per run")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (momentum 0.9, weight decay 1e-4)")
    parser.add_argument("--batch", type=int, default=2, help="images in the batch")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square synthetic images, in pixels")
    parser.add_argument("--num-classes", type=int, default=4, help="columns of the classifier (torchvision counts the background)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of the batch")
    args = parser.parse_args(argv)

    from drloss_cuda.integrations.torchvision import use_dr_loss

    initial = build_retinanet(args.backbone, args.num_classes, args.image_size, args.seed)
    images, targets = synthetic_batch(args.batch, args.num_classes, args.image_size, args.seed + 1)
    runs = {
        f"focal loss, prior {FOCAL_LOSS_PRIOR}": copy.deepcopy(initial),
        f"DR loss,    prior {FOCAL_LOSS_PRIOR}": use_dr_loss(copy.deepcopy(initial), prior=FOCAL_LOSS_PRIOR),
        f"DR loss,    prior {DR_LOSS_PRIOR}": use_dr_loss(copy.deepcopy(initial), prior=DR_LOSS_PRIOR),
    }
    init_classifier_prior(runs[f"focal loss, prior {FOCAL_LOSS_PRIOR}"].head.classification_head.cls_logits,
                          FOCAL_LOSS_PRIOR)  # torchvision's own, set again to make the runs explicit
    results = {}
    for name, model in runs.items():
        losses, grad_norm = run(model, images, targets, args.steps, args.lr)
        results[name] = (losses, grad_norm)
        print(f"{name}: |grad| of the classifier weights at step 1 {grad_norm:.3g}; classification loss "
              + " ".join(f"{x:.4f}" for x in losses), flush=True)
    focal = results[f"focal loss, prior {FOCAL_LOSS_PRIOR}"][1]
    for name, (losses, grad_norm) in results.items():
        print(f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {args.steps} steps; "
              f"classifier gradient {grad_norm / focal:.3g}x focal loss's")
    return results


if __name__ == "__main__":
    main()
