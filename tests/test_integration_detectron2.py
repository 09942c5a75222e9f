"""detectron2's RetinaNet with the DRLossRetinaNet META_ARCHITECTURE, on the real detectron2
(skipped visibly where it does not import, as in the CPU-only quick-start environment; required
where CI installs it): built from get_cfg() + add_dr_loss_config + the model zoo's RetinaNet FPN
config, trained by detectron2's SimpleTrainer, its targets against detectron2's own focal-loss
targets, its losses against the reference."""

import copy
import itertools

import pytest
import torch

from drloss_cuda import reference
from drloss_cuda.initialization import prior_bias
from framework_support import cls_loss_spy, doc_snippet, framework_or_skip, painted_images

NUM_CLASSES = 3
IMAGE_SIZE = 128
STEPS = 4


def _config(tmp_path, *options):
    """get_cfg() + add_dr_loss_config + COCO-Detection/retinanet_R_50_FPN_1x.yaml from the model
    zoo, made small (ResNet-18 with BN, FPN of 64 channels, one conv per branch), then `options`
    (merge_from_list pairs); dumped and merged back into a fresh config, as a saved config is
    reloaded, after checking that nothing changed on the way."""
    integration = framework_or_skip("drloss_cuda.integrations.detectron2")
    import yaml  # detectron2's dependency, not the project's
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = integration.add_dr_loss_config(get_cfg())
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "DRLossRetinaNet", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.NORM", "BN",
        "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.FPN.OUT_CHANNELS", 64, "MODEL.RETINANET.NUM_CONVS", 1,
        "MODEL.RETINANET.NUM_CLASSES", NUM_CLASSES, *options])
    path = tmp_path / "dr_loss_retinanet.yaml"
    path.write_text(cfg.dump())
    loaded = integration.add_dr_loss_config(get_cfg())
    loaded.merge_from_file(str(path))
    # Compared as loaded YAML: a reloaded config holds the defaults' nested tuples as lists.
    assert yaml.safe_load(loaded.dump()) == yaml.safe_load(cfg.dump())
    assert loaded.MODEL.DR_LOSS == cfg.MODEL.DR_LOSS and loaded.MODEL.META_ARCHITECTURE == "DRLossRetinaNet"
    return loaded


def _build(cfg, seed=0):
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    return build_model(cfg).train()


def _batch(seed):
    """Two synthetic 128 px BGR images with boxes painted on noise (one and two boxes), as
    detectron2's data loader hands them to the model."""
    from detectron2.structures import Boxes, Instances

    batch = []
    for image, boxes, classes in painted_images(seed, IMAGE_SIZE, NUM_CLASSES):
        instances = Instances((IMAGE_SIZE, IMAGE_SIZE), gt_boxes=Boxes(boxes), gt_classes=classes)
        batch.append({"image": image, "instances": instances, "height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return batch


def _focal_loss_inputs(stock, batch):
    """What detectron2's RetinaNet.losses receives (the inputs of its focal loss and box loss):
    (logits [N, R, K], gt_labels [N, R]), and the losses it returns."""
    from detectron2.utils.events import EventStorage

    captured = {}
    losses = stock.losses

    def record(anchors, pred_logits, gt_labels, *args):
        captured.update(logits=torch.cat(pred_logits, 1).detach(), labels=torch.stack(gt_labels))
        return losses(anchors, pred_logits, gt_labels, *args)

    stock.losses = record
    with EventStorage(0):
        stock_losses = stock(copy.deepcopy(batch))
    return captured["logits"], captured["labels"], stock_losses


@pytest.mark.parametrize("prior", [0.5, 0.2])
def test_detectron2_retinanet_trains_with_dr_loss(tmp_path, prior):
    """Built through detectron2's config system, trained by its SimpleTrainer: the classifier
    starts at the prior set in the config; DR loss gets detectron2's own focal-loss targets (the
    same labels on the valid anchors, the same valid mask) and the same logits; the loss equals
    the reference on those logits at every step, and falls under SGD. The box loss is stock
    RetinaNet's."""
    cfg = _config(tmp_path, "MODEL.DR_LOSS.PRIOR_PROB", prior)
    model = _build(cfg)
    assert type(model).__name__ == "DRLossRetinaNet"
    bias = model.head.cls_score.bias.detach()
    torch.testing.assert_close(bias, torch.full_like(bias, prior_bias(prior)), rtol=0, atol=1e-7)

    stock_cfg = cfg.clone()
    stock_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    stock = _build(stock_cfg)
    stock.load_state_dict(model.state_dict())
    batch = _batch(seed=1)
    focal_logits, focal_labels, stock_losses = _focal_loss_inputs(stock, batch)

    calls = []
    model.dr_loss.forward = cls_loss_spy(model.dr_loss.forward, calls)
    from detectron2.engine import SimpleTrainer

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    trainer = SimpleTrainer(model, itertools.repeat(batch), optimizer)
    trainer.train(0, STEPS)
    fused = [value.item() for _, _, value in calls]
    want = [reference.sigmoid_dr_loss(logits, labels).item() for logits, labels, _ in calls]
    logged = [value for value, _ in trainer.storage.history("loss_cls").values()]
    box = [value for value, _ in trainer.storage.history("loss_box_reg").values()]
    print(f"detectron2 prior {prior}: loss_cls fused {fused}, reference {want}; loss_box_reg {box}")

    assert len(calls) == STEPS
    logits, labels, _ = calls[0]  # the first step: the weights the stock model had
    valid = focal_labels >= 0  # detectron2's valid_mask
    assert torch.equal(labels >= 0, valid)
    assert torch.equal(labels[valid], focal_labels[valid])
    assert (labels[valid] < NUM_CLASSES).any() and (labels == NUM_CLASSES).any() and (~valid).any()
    torch.testing.assert_close(logits, focal_logits, rtol=1e-5, atol=1e-5)
    assert box[0] == pytest.approx(stock_losses["loss_box_reg"].item(), rel=1e-5)
    assert logged == pytest.approx(fused, rel=1e-6)
    assert fused == pytest.approx(want, rel=1e-6)
    assert fused[-1] < fused[0] - 0.005


def test_detectron2_defaults_and_config_checks(tmp_path):
    """Without DR_LOSS.PRIOR_PROB set the classifier starts at 0.5 (bias 0), not at the
    RETINANET.PRIOR_PROB of the base config (0.01); the loss's parameters come from the config
    and are checked when the model is built."""
    cfg = _config(tmp_path, "MODEL.DR_LOSS.TAU", 2.0, "MODEL.DR_LOSS.MARGIN", 0.3)
    assert cfg.MODEL.RETINANET.PRIOR_PROB == 0.01
    model = _build(cfg)
    assert torch.equal(model.head.cls_score.bias.detach(), torch.zeros_like(model.head.cls_score.bias))
    assert (model.dr_loss.tau, model.dr_loss.margin) == (2.0, 0.3)
    cfg.MODEL.DR_LOSS.NEG_LAMBDA = 1e-6
    with pytest.raises(ValueError, match="neg_lambda"):
        _build(cfg)
    cfg.MODEL.DR_LOSS.NEG_LAMBDA = 0.1
    cfg.MODEL.DR_LOSS.PRIOR_PROB = 1.0
    with pytest.raises(ValueError, match="prior"):
        _build(cfg)


def test_docs_detectron2_snippet_builds_and_its_config_reloads(tmp_path):
    """The documented snippet, as written (the model zoo's RetinaNet FPN config): the model builds
    as DRLossRetinaNet at the prior 0.5. The config it dumps (as detectron2 saves the one it
    trains with) merges back after add_dr_loss_config, and only then."""
    integration = framework_or_skip("drloss_cuda.integrations.detectron2")
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    namespace = {}
    exec(compile(doc_snippet("detectron2"), "docs/integration.md", "exec"), namespace)
    cfg = namespace["cfg"]
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)  # no checkpoint is loaded: that is DetectionCheckpointer's job
    assert type(model).__name__ == "DRLossRetinaNet" and model.num_classes == 80
    assert torch.equal(model.head.cls_score.bias.detach(), torch.zeros_like(model.head.cls_score.bias))
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    with pytest.raises(KeyError, match="MODEL.DR_LOSS"):
        get_cfg().merge_from_file(str(path))
    reloaded = integration.add_dr_loss_config(get_cfg())
    reloaded.merge_from_file(str(path))
    assert reloaded.MODEL.DR_LOSS == cfg.MODEL.DR_LOSS


def test_detectron2_box_of_class_num_classes_raises(tmp_path):
    """Classes numbered from 1 (a box of class K): detectron2 would match it as background; the
    model says so at the training step, unless check_targets is off."""
    cfg = _config(tmp_path)
    from detectron2.utils.events import EventStorage

    batch = _batch(seed=1)
    batch[1]["instances"].gt_classes[0] = NUM_CLASSES
    model = _build(cfg)
    with EventStorage(0), pytest.raises(ValueError, match=r"gt_instances\.gt_classes\[1\] must lie in \[0, 2\], found 3 \(num_classes=3"):
        model(copy.deepcopy(batch))
    model.check_targets = False
    with EventStorage(0):
        assert torch.isfinite(model(copy.deepcopy(batch))["loss_cls"])
