"""mmdetection's RetinaNet with DRLossRetinaHead and SigmoidDRLoss, on the real mmdetection
(skipped visibly where it does not import, as in the CPU-only quick-start environment; required
where CI installs it): built from a config with custom_imports, trained through mmengine's
train_step, its targets against mmdet's own focal-loss targets, its losses against the
reference."""

import copy
import math

import pytest
import torch

from drloss_cuda import reference, sigmoid_dr_loss
from drloss_cuda.initialization import prior_bias
from framework_support import cls_loss_spy, doc_snippet, framework_or_skip, painted_images

NUM_CLASSES = 3
IMAGE_SIZE = 128
STEPS = 4


def _model_config(prior_prob=None, head="DRLossRetinaHead", loss_cls=None):
    """A small RetinaNet (ResNet-18 with BN, FPN of 64 channels, one conv per branch) as an mmdet
    config dict, with the integration in custom_imports."""
    bbox_head = dict(
        type=head, num_classes=NUM_CLASSES, in_channels=64, stacked_convs=1, feat_channels=64,
        anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                              ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=loss_cls or dict(type="SigmoidDRLoss", use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0))
    if prior_prob is not None:
        bbox_head["prior_prob"] = prior_prob
    model = dict(
        type="RetinaNet",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_size_divisor=32),
        backbone=dict(type="ResNet", depth=18, num_stages=4, out_indices=(1, 2, 3), frozen_stages=-1,
                      norm_cfg=dict(type="BN", requires_grad=True), norm_eval=False, style="pytorch"),
        neck=dict(type="FPN", in_channels=[128, 256, 512], out_channels=64, start_level=0,
                  add_extra_convs="on_input", num_outs=5),
        bbox_head=bbox_head,
        # IoU 0.3-0.5 is ignored (label weight 0), a wider band than RetinaNet's, so every batch has some.
        train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.3, min_pos_iou=0,
                                     ignore_iof_thr=-1),
                       sampler=dict(type="PseudoSampler"), allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                      max_per_img=10))
    return dict(custom_imports=dict(imports=["drloss_cuda.integrations.mmdet"], allow_failed_imports=False),
                model=model)


def _config(tmp_path, **options):
    """The config dumped to a file and loaded back as mmdet users load theirs (Config.fromfile,
    which imports custom_imports), after checking that nothing changed on the way."""
    config_module = framework_or_skip("mmengine.config")
    framework_or_skip("drloss_cuda.integrations.mmdet")
    config = config_module.Config(_model_config(**options))
    path = tmp_path / "dr_loss_retinanet.py"
    config.dump(str(path))
    loaded = config_module.Config.fromfile(str(path))
    assert loaded.to_dict() == config.to_dict()
    return loaded


def _build(config):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    model = MODELS.build(config.model)
    model.init_weights()
    return model.train()


def _batch(seed):
    """Two synthetic 128 px images with boxes painted on noise (one and two boxes), as mmdet's
    data pipeline hands them to the model: uint8 [3, H, W] inputs and DetDataSamples."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    inputs, samples = [], []
    for image, boxes, labels in painted_images(seed, IMAGE_SIZE, NUM_CLASSES):
        sample = DetDataSample(metainfo=dict(img_shape=(IMAGE_SIZE, IMAGE_SIZE), ori_shape=(IMAGE_SIZE, IMAGE_SIZE),
                                             pad_shape=(IMAGE_SIZE, IMAGE_SIZE), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=boxes, labels=labels)
        inputs.append(image)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _focal_loss_targets(stock, data):
    """What mmdet's RetinaHead passes to its focal loss, over all levels: (labels, label weights,
    logits), each [N, A_total, ...] in the order of the integration's concatenation."""
    calls = []
    focal_loss = stock.bbox_head.loss_cls.forward

    def record(cls_score, labels, weight=None, **kwargs):
        calls.append((cls_score.detach(), labels, weight))
        return focal_loss(cls_score, labels, weight, **kwargs)

    stock.bbox_head.loss_cls.forward = record
    stock(**stock.data_preprocessor(copy.deepcopy(data), True), mode="loss")
    n = len(data["inputs"])
    return tuple(torch.cat([call[i].reshape(n, -1, *call[i].shape[1:]) for call in calls], 1) for i in range(3))


@pytest.mark.parametrize("prior", [0.5, 0.2])
def test_mmdet_retinanet_trains_with_dr_loss(tmp_path, prior):
    """Built through the config system, trained by mmengine's train_step: the classifier starts
    at the prior set in the config; the head passes DR loss mmdet's own focal-loss targets (the
    same labels, the valid anchors the same) and the same logits; the loss equals the reference
    on those logits at every step, and falls under SGD."""
    config = _config(tmp_path, prior_prob=prior)
    torch.manual_seed(0)
    model = _build(config)
    head = model.bbox_head
    assert type(head).__name__ == "DRLossRetinaHead" and type(head.loss_cls).__name__ == "MMDetSigmoidDRLoss"
    torch.testing.assert_close(head.retina_cls.bias.detach(), torch.full_like(head.retina_cls.bias, prior_bias(prior)),
                               rtol=0, atol=1e-7)

    # The stock head with focal loss, the same weights: its targets are what the integration must use.
    stock_config = copy.deepcopy(config.model)
    stock_config.bbox_head.type = "RetinaHead"
    stock_config.bbox_head.pop("prior_prob", None)
    stock_config.bbox_head.loss_cls = dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
    from mmdet.registry import MODELS

    stock = MODELS.build(stock_config).train()
    stock.load_state_dict(model.state_dict())

    data = _batch(seed=1)
    focal_logits, focal_labels, focal_weights = _focal_loss_targets(stock, data)
    calls = []
    head.loss_cls.loss_fn = cls_loss_spy(sigmoid_dr_loss, calls)
    from mmengine.optim import OptimWrapper

    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4))
    fused, want, box = [], [], []
    for _ in range(STEPS):
        log_vars = model.train_step(copy.deepcopy(data), optim_wrapper)
        logits, labels, value = calls[-1]
        fused.append(value.item())
        want.append(reference.sigmoid_dr_loss(logits, labels).item())
        box.append(log_vars["loss_bbox"].detach().item())
        assert log_vars["loss_cls"].detach().item() == pytest.approx(fused[-1], rel=1e-6)
    print(f"mmdet prior {prior}: loss_cls fused {fused}, reference {want}; loss_bbox {box}")

    logits, labels, _ = calls[0]  # the first step: the weights the stock head had
    valid = focal_weights > 0
    assert torch.equal(labels >= 0, valid)
    assert torch.equal(labels[valid], focal_labels[valid])
    assert (labels[valid] < NUM_CLASSES).any() and (labels == NUM_CLASSES).any() and (~valid).any()
    torch.testing.assert_close(logits, focal_logits, rtol=1e-5, atol=1e-5)
    assert fused == pytest.approx(want, rel=1e-6)
    assert fused[-1] < fused[0] - 0.005
    assert all(math.isfinite(v) for v in box)


def test_mmdet_head_defaults_and_config_checks(tmp_path):
    """Without prior_prob in the config the classifier starts at DR loss's 0.5 (bias 0, where
    RetinaHead's init_cfg would give 0.01's); bad arguments fail when the model is built."""
    framework_or_skip("drloss_cuda.integrations.mmdet")
    model = _build(_config(tmp_path))
    bias = model.bbox_head.retina_cls.bias.detach()
    assert torch.equal(bias, torch.zeros_like(bias))
    stock_bias = _build(_config(tmp_path, prior_prob=0.01)).bbox_head.retina_cls.bias.detach()
    torch.testing.assert_close(stock_bias, torch.full_like(stock_bias, prior_bias(0.01)), rtol=0, atol=1e-6)
    from mmdet.registry import MODELS

    with pytest.raises(ValueError, match="prior"):
        MODELS.build(_config(tmp_path, prior_prob=1.5).model)
    with pytest.raises(ValueError, match="neg_lambda"):
        MODELS.build(_config(tmp_path, loss_cls=dict(type="SigmoidDRLoss", neg_lambda=1e-6)).model)
    with pytest.raises(TypeError, match="loss_cls must be a SigmoidDRLoss"):
        MODELS.build(_config(tmp_path, loss_cls=dict(type="FocalLoss", use_sigmoid=True)).model)


def test_docs_mmdet_config_over_mmdets_retinanet_builds(tmp_path):
    """The documented config, as written, inherits mmdet's own RetinaNet model: its loss_cls is
    SigmoidDRLoss with none of the base FocalLoss's keys, and the model builds. Without
    `_delete_=True` the base's gamma and alpha reach SigmoidDRLoss, whose error says so."""
    framework_or_skip("drloss_cuda.integrations.mmdet")
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    snippet = doc_snippet("mmdetection (3.x)")
    assert "_delete_=True" in snippet
    path = tmp_path / "dr_loss_retinanet.py"
    path.write_text(snippet)
    config = Config.fromfile(str(path))
    assert dict(config.model.bbox_head.loss_cls) == dict(type="SigmoidDRLoss", use_sigmoid=True, loss_weight=1.0)
    register_all_modules()
    model = MODELS.build(config.model)  # no init_weights: the base's backbone would be downloaded
    assert type(model.bbox_head).__name__ == "DRLossRetinaHead" and model.bbox_head.prior_prob == 0.5
    assert model.bbox_head.num_classes == 80 and type(model.bbox_head.loss_cls).__name__ == "MMDetSigmoidDRLoss"
    merged = tmp_path / "merged.py"
    merged.write_text(snippet.replace("_delete_=True, ", ""))
    with pytest.raises(TypeError, match=r"\['alpha', 'gamma'\]: FocalLoss's arguments.*_delete_=True"):
        MODELS.build(Config.fromfile(str(merged)).model)


def test_mmdet_box_labelled_num_classes_raises(tmp_path):
    """Classes numbered from 1 (a box labelled num_classes): mmdet would match it as background;
    the head says so at the training step, unless the loss's check_targets is off."""
    framework_or_skip("drloss_cuda.integrations.mmdet")
    from mmengine.optim import OptimWrapper

    data = _batch(seed=1)
    data["data_samples"][1].gt_instances.labels[0] = NUM_CLASSES
    for check in (True, False):
        loss_cls = dict(type="SigmoidDRLoss", use_sigmoid=True, check_targets=check)
        model = _build(_config(tmp_path, loss_cls=loss_cls))
        optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
        if check:
            with pytest.raises(ValueError, match=r"gt_instances\.labels\[1\] must lie in \[0, 2\], found 3 \(num_classes=3"):
                model.train_step(copy.deepcopy(data), optim_wrapper)
        else:
            assert math.isfinite(model.train_step(copy.deepcopy(data), optim_wrapper)["loss_cls"].item())
