#!/usr/bin/env python
"""What the classification loss does to a real training step: torchvision's RetinaNet ResNet-50
FPN (no pretrained weights) trained with SGD on synthetic images with random boxes.

    python benchmarks/training_step.py                 # CUDA: batch 8, 800x1216, 20 timed steps
    python benchmarks/training_step.py --device cpu --batch 2 --size 128x128 --steps 3

Three classification losses, each in float32 and under bfloat16 autocast:
  focal     torchvision's own sigmoid focal loss (the model as torchvision builds it)
  official  the official DR loss code: one pooled group with boolean masks (the benchmark's
            official_pooled peer, drloss_cuda.reference), through use_dr_loss
  fused     the fused loss, drloss_cuda.integrations.torchvision.use_dr_loss's default

For each: the median time of a training step (forward, backward, SGD step; synchronized) over
--steps steps after --warmup, and the median time of the classification loss alone (its forward
and backward through the head's compute_loss, on the head outputs and anchor matches of the
last of those steps): its share of the step. On those same logits and labels the fused loss is
checked against drloss_cuda.reference in float64 (loss and gradient) before the loss alone is
timed; the run exits with status 1 when it differs. Prints one Markdown table with a line of provenance, then
a one-line headline.
"""

import argparse
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(HERE.parent) not in sys.path:
    sys.path.append(str(HERE.parent))  # fallback when drloss_cuda is built in place but not installed

import torch  # noqa: E402

from bench import machine  # noqa: E402
from bench.checks import FUSED_TOLERANCES, CheckFailed, check_provider, reference_loss_and_grad  # noqa: E402
from bench.providers import PROVIDERS  # noqa: E402

LOSSES = ("focal", "official", "fused")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# (batch, height, width, timed steps, warm-up steps) when not given
DEFAULTS = {"cuda": (8, 800, 1216, 20, 3), "cpu": (2, 128, 128, 3, 1)}


def parse_size(text):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 800x1216, got {text!r}") from None
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"images must be at least 32x32, got {text!r}")
    return height, width


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--batch", type=int, help="images per step (default: 8 on CUDA, 2 on the CPU)")
    parser.add_argument("--size", type=parse_size, help="image HEIGHTxWIDTH, kept as is by the model's transform (default: 800x1216 on CUDA, 128x128 on the CPU)")
    parser.add_argument("--steps", type=int, help="timed steps per loss and dtype; the median is reported (default: 20 on CUDA, 3 on the CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them (default: 3 on CUDA, 1 on the CPU)")
    parser.add_argument("--loss-repeats", type=int, help="timed runs of the classification loss alone (default: --steps)")
    parser.add_argument("--losses", default=",".join(LOSSES), help=f"comma-separated, from {', '.join(LOSSES)} (default: all)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated: float32 and/or bfloat16 (autocast) (default: both)")
    parser.add_argument("--num-classes", type=int, default=91, help="classifier columns, torchvision's COCO convention (default: 91)")
    parser.add_argument("--boxes", type=int, default=8, help="random boxes per image (default: 8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (momentum 0.9, weight decay 1e-4) (default: 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images, boxes and weights (default: 0)")
    parser.add_argument(
        "--max-seconds", type=float, help="start no loss/dtype configuration after this many seconds; those left are reported as skipped (default: no limit)"
    )
    return parser


def resolve_args(args, parser):
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    batch, height, width, steps, warmup = DEFAULTS[args.device]
    args.batch = batch if args.batch is None else args.batch
    args.size = (height, width) if args.size is None else args.size
    args.steps = steps if args.steps is None else args.steps
    args.warmup = warmup if args.warmup is None else args.warmup
    args.loss_repeats = args.steps if args.loss_repeats is None else args.loss_repeats
    args.losses = [name.strip() for name in args.losses.split(",") if name.strip()]
    args.dtypes = [name.strip() for name in args.dtypes.split(",") if name.strip()]
    for name in args.losses:
        if name not in LOSSES:
            parser.error(f"--losses: unknown loss {name!r} (choose from {', '.join(LOSSES)})")
    for name in args.dtypes:
        if name not in DTYPES:
            parser.error(f"--dtypes: unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    for name in ("batch", "steps", "loss_repeats", "num_classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup", "boxes"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be at least 0")
    if not args.losses or not args.dtypes:
        parser.error("--losses and --dtypes must each name at least one")
    return args


# --- the model and its data -------------------------------------------------------------------


def build_model(loss, args):
    """RetinaNet ResNet-50 FPN with fresh weights (the same for every loss, from --seed), its
    transform keeping the images' size, trained with `loss` as classification loss."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(args.seed)
    height, width = args.size
    model = retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=args.num_classes, min_size=min(height, width), max_size=max(height, width)
    )
    if loss != "focal":
        from drloss_cuda.integrations.torchvision import use_dr_loss

        # official: the benchmark's official_pooled peer (reference code on [N*A, C]); fused: the default
        use_dr_loss(model, loss=PROVIDERS["official_pooled"].build() if loss == "official" else None)
    return model.to(args.device).train()


def synthetic_batch(args):
    """--batch random images and, per image, --boxes random boxes with random class labels."""
    generator = torch.Generator().manual_seed(args.seed)
    height, width = args.size
    images, targets = [], []
    for _ in range(args.batch):
        images.append(torch.rand(3, height, width, generator=generator).to(args.device))
        corner = torch.rand(args.boxes, 2, generator=generator) * torch.tensor([width * 0.75, height * 0.75])
        extent = (0.05 + 0.2 * torch.rand(args.boxes, 2, generator=generator)) * torch.tensor([width, height])
        boxes = torch.cat([corner, (corner + extent).minimum(torch.tensor([width - 1.0, height - 1.0]))], dim=1)
        labels = torch.randint(1, args.num_classes, (args.boxes,), generator=generator)
        targets.append({"boxes": boxes.to(args.device), "labels": labels.to(args.device)})
    return images, targets


def autocast_for(dtype_name, device):
    return torch.autocast(device, dtype=torch.bfloat16) if dtype_name == "bfloat16" else nullcontext()


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


# --- timing ---------------------------------------------------------------------------------------


class LossCapture:
    """Wraps the classification head's compute_loss: keeps the inputs of the last call (the
    head outputs detached), and can run the loss alone on them."""

    def __init__(self, head):
        self.compute_loss = head.compute_loss
        self.inputs = None
        head.compute_loss = self

    def __call__(self, targets, head_outputs, matched_idxs):
        self.inputs = (targets, head_outputs["cls_logits"].detach(), matched_idxs)
        return self.compute_loss(targets, head_outputs, matched_idxs)

    def forward_backward(self):
        targets, logits, matched_idxs = self.inputs
        x = logits.detach().requires_grad_(True)
        self.compute_loss(targets, {"cls_logits": x}, matched_idxs).backward()


def train_step(model, optimizer, images, targets, autocast):
    optimizer.zero_grad(set_to_none=True)
    with autocast:
        losses = model(images, targets)
        total = sum(losses.values())
    total.backward()
    optimizer.step()
    return total.detach()


def median_ms(fn, repeats, device):
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def check_fused(logits, targets, matched_idxs, num_classes):
    """The fused loss against drloss_cuda.reference in float64 on the step's logits and labels:
    (loss relative error, gradient error relative to its largest entry); raises CheckFailed."""
    import drloss_cuda
    from drloss_cuda import conventions

    labels = conventions.from_torchvision(matched_idxs, [t["labels"] for t in targets], num_classes)
    x = logits.detach().requires_grad_(True)
    expected = reference_loss_and_grad("dr", "per_image", x, labels)
    _, loss_err, grad_err = check_provider("fused", drloss_cuda.sigmoid_dr_loss, x, labels, expected, FUSED_TOLERANCES[logits.dtype])
    return loss_err, grad_err


def measure(loss, dtype_name, images, targets, args):
    """One configuration: {step_ms, loss_ms, anchors, final_loss, check} (check: the fused
    loss's errors against float64, fused only)."""
    model = build_model(loss, args)
    capture = LossCapture(model.head.classification_head)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    autocast = autocast_for(dtype_name, args.device)
    for _ in range(args.warmup):
        train_step(model, optimizer, images, targets, autocast)
    last = []
    step_ms = median_ms(lambda: last.append(train_step(model, optimizer, images, targets, autocast)), args.steps, args.device)
    targets_seen, logits, matched_idxs = capture.inputs
    result = {"step_ms": step_ms, "anchors": logits.shape[1], "logits_dtype": str(logits.dtype).replace("torch.", ""), "final_loss": last[-1].item()}
    if loss == "fused":
        result["check"] = check_fused(logits, targets_seen, matched_idxs, args.num_classes)

    def loss_alone():
        with autocast:
            capture.forward_backward()

    loss_alone()  # warm-up
    result["loss_ms"] = median_ms(loss_alone, args.loss_repeats, args.device)
    return result


# --- report ---------------------------------------------------------------------------------------


def provenance(args, anchors):
    import torchvision

    height, width = args.size
    cuda = f" (CUDA {torch.version.cuda})" if args.device == "cuda" else ""
    return (
        f"device: {machine.device_name(args.device)}; torch {torch.__version__}{cuda}; torchvision {torchvision.__version__}; "
        f"commit {machine.git_commit()}; RetinaNet ResNet-50 FPN, batch {args.batch}, {height}x{width}, "
        f"A = {anchors:,} anchors, C = {args.num_classes}; median of {args.steps} steps after {args.warmup} warm-up, "
        f"loss alone median of {args.loss_repeats}; SGD lr {args.lr:g}"
        + (f"; cudnn.benchmark {torch.backends.cudnn.benchmark}" if args.device == "cuda" else f"; {torch.get_num_threads()} threads")
    )


def table(rows):
    lines = ["| loss | dtype | step ms | loss ms | loss share % |", "| --- | --- | --- | --- | --- |"]
    for (loss, dtype_name), r in rows.items():
        if "skipped" in r:
            lines.append(f"| {loss} | {dtype_name} | {r['skipped']} | | |")
        else:
            lines.append(f"| {loss} | {dtype_name} | {r['step_ms']:.1f} | {r['loss_ms']:.2f} | {100 * r['loss_ms'] / r['step_ms']:.2f} |")
    return "\n".join(lines)


def headline(rows, args):
    height, width = args.size
    parts = []
    for (loss, dtype_name), r in rows.items():
        if "skipped" not in r:
            parts.append(f"{loss} {dtype_name} {r['step_ms']:.1f} ms ({100 * r['loss_ms'] / r['step_ms']:.1f}%)")
    skipped = [f"{loss} {dtype_name}" for (loss, dtype_name), r in rows.items() if "skipped" in r]
    missing = f" (not measured: {', '.join(skipped)})" if skipped else ""  # first: the device check's summary cuts the line
    return f"training step N={args.batch} {height}x{width}{missing}: " + (", ".join(parts) or "nothing measured")


def run(args):
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed sizes: the warm-up steps pick the kernels
    images, targets = synthetic_batch(args)
    started = time.monotonic()
    rows, failed = {}, False
    for dtype_name in args.dtypes:
        for loss in args.losses:
            if args.max_seconds is not None and time.monotonic() - started > args.max_seconds:
                rows[(loss, dtype_name)] = {"skipped": "skipped: out of time"}
                continue
            try:
                r = measure(loss, dtype_name, images, targets, args)
                if args.device == "cuda":
                    torch.cuda.empty_cache()  # the configuration's model and optimizer state are gone
            except CheckFailed as error:
                print(f"{loss} {dtype_name}: FAILED: {error}", flush=True)
                rows[(loss, dtype_name)] = {"skipped": "check failed"}
                failed = True
                continue
            rows[(loss, dtype_name)] = r
            line = f"{loss} {dtype_name}: step {r['step_ms']:.1f} ms, loss alone {r['loss_ms']:.2f} ms (logits {r['logits_dtype']}), last step's loss {r['final_loss']:.4g}"
            if "check" in r:
                line += f"; fused against the float64 reference on these logits: loss {r['check'][0]:.2g}, gradient {r['check'][1]:.2g} (relative errors)"
            print(line, flush=True)
            if not math.isfinite(r["final_loss"]):
                print(f"{loss} {dtype_name}: FAILED: the loss is not finite", flush=True)
                failed = True
    anchors = next((r["anchors"] for r in rows.values() if "anchors" in r), 0)
    print()
    print(provenance(args, anchors))
    print()
    print(table(rows))
    print()
    print(headline(rows, args))
    return 1 if failed else 0


def main(argv=None):
    parser = build_parser()
    args = resolve_args(parser.parse_args(argv), parser)
    try:
        import torchvision  # noqa: F401
    except ImportError as error:
        print(f"training_step: torchvision is needed ({error})", file=sys.stderr)
        return 2
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
