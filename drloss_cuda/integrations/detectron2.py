"""DR loss in detectron2: registers the META_ARCHITECTURE "DRLossRetinaNet", detectron2's
RetinaNet whose classification loss is DR loss (one value per image, not divided by the
number of foreground anchors) and whose classifier starts at DR loss's prior, 0.5.

    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    import drloss_cuda.integrations.detectron2 as dr

    cfg = dr.add_dr_loss_config(get_cfg())          # cfg.MODEL.DR_LOSS.{PRIOR_PROB, POS_LAMBDA, ...}
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "DRLossRetinaNet"

The box regression loss is detectron2's, with its normalizer. Without add_dr_loss_config the
defaults apply (prior 0.5, the paper's parameters), but a config holding MODEL.DR_LOSS (one
detectron2 saved) merges only after it; cfg.MODEL.RETINANET.PRIOR_PROB is overridden by
cfg.MODEL.DR_LOSS.PRIOR_PROB.

Importing this module imports detectron2 (0.6 or newer: RetinaNet built on DenseDetector); it
raises ImportError when detectron2 is missing, older or fails to load.
"""

import torch

from .. import conventions
from ..initialization import DR_LOSS_PRIOR, init_classifier_prior
from . import fused_loss_module, import_framework
from .detectron2_loss import add_dr_loss_config, dense_classification_loss, options_from_config

__all__ = ["DRLossRetinaNet", "add_dr_loss_config"]

configurable = import_framework("detectron2.config", needed_by=__name__).configurable
_modeling = import_framework("detectron2.modeling", needed_by=__name__)
if not hasattr(_modeling.RetinaNet, "_ema_update"):
    raise ImportError(f"{__name__} needs detectron2 0.6 or newer (RetinaNet built on DenseDetector, whose "
                      "loss normalizer it updates); this detectron2's RetinaNet is older")
_box_regression = import_framework("detectron2.modeling.box_regression", needed_by=__name__)
_events = import_framework("detectron2.utils.events", needed_by=__name__)


@_modeling.META_ARCH_REGISTRY.register()
class DRLossRetinaNet(_modeling.RetinaNet):
    """detectron2's RetinaNet with DR loss. Arguments: RetinaNet's, plus
        prior_prob: the classifier prior set on head.cls_score (None keeps the head's bias).
        dr_loss: the loss callable (default: the fused SigmoidDRLoss with the paper's defaults).
        check_targets: check the boxes' classes against [0, K - 1] and the anchor labels every
            step (see dense_classification_loss); two host syncs.
    """

    @configurable
    def __init__(self, *, prior_prob=DR_LOSS_PRIOR, dr_loss=None, check_targets=True, **kwargs):
        super().__init__(**kwargs)
        self.dr_loss = fused_loss_module() if dr_loss is None else dr_loss
        self.check_targets = check_targets
        if prior_prob is not None:
            classifier = getattr(self.head, "cls_score", None)
            if classifier is None:
                raise ValueError("prior_prob needs a head with a cls_score layer (RetinaNetHead); pass "
                                 "prior_prob=None and set the prior on your head's classifier")
            init_classifier_prior(classifier, prior_prob)

    @classmethod
    def from_config(cls, cfg):
        config = super().from_config(cfg)
        prior, options = options_from_config(cfg)
        config.update(prior_prob=prior, dr_loss=fused_loss_module(**options))
        return config

    @torch.no_grad()
    def label_anchors(self, anchors, gt_instances):
        # A box of class K would be matched as background, silently: check before the matching.
        if self.check_targets:
            conventions.check_box_labels([gt.gt_classes for gt in gt_instances], self.num_classes,
                                         "gt_instances.gt_classes")
        return super().label_anchors(anchors, gt_instances)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        loss_cls = dense_classification_loss(self.dr_loss, pred_logits, gt_labels, self.num_classes,
                                             check_targets=self.check_targets)

        # The box loss as RetinaNet computes it: summed over the positives, divided by an EMA
        # of their number.
        labels = torch.stack(list(gt_labels))
        positive = (labels >= 0) & (labels != self.num_classes)
        num_positive = positive.sum().item()
        _events.get_event_storage().put_scalar("num_pos_anchors", num_positive / max(len(gt_labels), 1))
        normalizer = self._ema_update("loss_normalizer", max(num_positive, 1), 100)
        loss_box_reg = _box_regression._dense_box_regression_loss(
            anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, positive,
            box_reg_loss_type=self.box_reg_loss_type, smooth_l1_beta=self.smooth_l1_beta)
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg / normalizer}

