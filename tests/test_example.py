"""The examples: a few training steps with the fused loss and with the pure-PyTorch reference,
from the same seed and initial weights, give the same losses and parameters; the command
lines run and document every option; the prior example (with torchvision) runs."""

import copy
import importlib.util
import pathlib

import pytest
import torch

import drloss_cuda

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return load_example("train_tiny_detector")


@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float64, 1e-9, 1e-11), (torch.float32, 2e-4, 2e-5)],
                         ids=["float64", "float32"])
def test_fused_and_reference_train_alike(example, dtype, rtol, atol, generator):
    seed = int(torch.randint(0, 2**31 - 1, ()))
    initial = example.TinyDetector()
    runs = {}
    for name in ("dr", "dr-reference"):
        model, losses = example.train(name, steps=8, batch=4, seed=seed, dtype=dtype, warmup=0,
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


def test_each_loss_starts_from_its_prior(example):
    for name, prior in (("dr", 0.5), ("focal", 0.01)):
        model, _ = example.train(name, steps=1, batch=2, lr=0.0, warmup=0, log=None)
        torch.testing.assert_close(model.cls.bias.detach(), torch.full_like(model.cls.bias, drloss_cuda.prior_bias(prior)))
    model, _ = example.train("dr", steps=1, batch=2, lr=0.0, warmup=0, prior=0.01, log=None)
    torch.testing.assert_close(model.cls.bias.detach(), torch.full_like(model.cls.bias, drloss_cuda.prior_bias(0.01)))


def _documents_every_option(parser_help):
    """Every option of an argparse --help has help text and shows its default."""
    options = [line.split()[0] for line in parser_help.splitlines() if line.strip().startswith("--")]
    assert options
    body = parser_help.split("options:", 1)[1]
    for option in options:
        text = body.split(option, 1)[1].split("\n  -", 1)[0]
        assert "(default:" in text, f"{option} does not show its default"


def test_command_line(example, capsys):
    with pytest.raises(SystemExit):
        example.main(["--help"])
    _documents_every_option(capsys.readouterr().out)
    results = example.main(["--compare", "--steps", "2", "--batch", "2", "--eval-images", "3"])
    assert set(results) == {("dr", 0.5), ("dr", 0.01), ("focal", 0.01)}
    out = capsys.readouterr().out
    assert "loss=dr prior=0.5" in out and "loss=dr prior=0.01" in out and "loss=focal prior=0.01" in out


def test_prior_example_with_torchvision(capsys):
    """The prior example on a real torchvision RetinaNet: DR loss at prior 0.5 gets a larger
    classifier gradient than at 0.01 (p(1-p) is 25 times larger)."""
    from drloss_cuda.integrations import import_framework

    try:
        import_framework("torchvision")
    except ImportError as error:
        pytest.skip(str(error))
    prior_example = load_example("retinanet_prior")
    with pytest.raises(SystemExit):
        prior_example.main(["--help"])
    _documents_every_option(capsys.readouterr().out)
    results = prior_example.main(["--steps", "1"])
    assert len(results) == 3
    grad_at = {name.split("prior ")[1]: grad for name, (_, grad) in results.items() if name.startswith("DR")}
    assert grad_at["0.5"] > 5 * grad_at["0.01"]
