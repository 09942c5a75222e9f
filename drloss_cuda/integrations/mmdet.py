"""DR loss in mmdetection (3.x): registers, in mmdet's MODELS registry,

    SigmoidDRLoss      the loss (MMDetSigmoidDRLoss): loss_weight, reduction and DR loss's
                       parameters; converts mmdet's labels (background = num_classes,
                       label_weights 0 = ignored) and does not divide by avg_factor.
    DRLossRetinaHead   RetinaHead whose classification loss is taken over all FPN levels of an
                       image at once (as DR loss is defined) and whose classifier starts at the
                       prior prior_prob (default 0.5, DR loss's). The box loss is RetinaHead's.

In a config over mmdet's RetinaNet (docs/integration.md has the details):

    _base_ = "mmdet::_base_/models/retinanet_r50_fpn.py"
    custom_imports = dict(imports=["drloss_cuda.integrations.mmdet"], allow_failed_imports=False)
    model = dict(
        bbox_head=dict(
            type="DRLossRetinaHead",
            prior_prob=0.5,
            loss_cls=dict(_delete_=True, type="SigmoidDRLoss", use_sigmoid=True, loss_weight=1.0),
        ))

SigmoidDRLoss in a stock head (RetinaHead with `loss_cls=dict(type="SigmoidDRLoss")`) runs,
but mmdet calls it once per FPN level, giving a sum of per-level losses pooled over the batch,
which is not the paper's loss: use DRLossRetinaHead.

Importing this module imports mmdet; it raises ImportError when mmdet is missing or fails to load.
"""

from .. import conventions
from ..initialization import DR_LOSS_PRIOR, init_classifier_prior, prior_bias
from . import import_framework
from .mmdet_loss import REGISTERED_LOSS_NAME, MMDetSigmoidDRLoss, head_loss_cls_config, multilevel_classification_loss

MODELS = import_framework("mmdet.registry", needed_by=__name__).MODELS
RetinaHead = import_framework("mmdet.models.dense_heads", needed_by=__name__).RetinaHead
_bbox = import_framework("mmdet.structures.bbox", needed_by=__name__)
_model_utils = import_framework("mmdet.models.utils", needed_by=__name__)

SigmoidDRLoss = MODELS.register_module(name=REGISTERED_LOSS_NAME, module=MMDetSigmoidDRLoss)


@MODELS.register_module()
class DRLossRetinaHead(RetinaHead):
    """RetinaHead trained with DR loss. Arguments: RetinaHead's, plus prior_prob (the classifier
    prior set by init_weights after init_cfg; None leaves init_cfg's bias), and loss_cls
    defaulting to SigmoidDRLoss. With the loss's check_targets (the default) each step checks
    the boxes' labels against [0, num_classes - 1] (one host sync)."""

    def __init__(self, *args, prior_prob=DR_LOSS_PRIOR, loss_cls=None, **kwargs):
        super().__init__(*args, loss_cls=head_loss_cls_config(loss_cls), **kwargs)
        if not isinstance(self.loss_cls, MMDetSigmoidDRLoss):
            raise TypeError(f"loss_cls must be a {REGISTERED_LOSS_NAME} (DRLossRetinaHead passes every level "
                            f"to it at once), got {type(self.loss_cls).__name__}")
        if prior_prob is not None:
            prior_bias(prior_prob)  # checked when the model is built, not at init_weights
        self.prior_prob = prior_prob

    def init_weights(self):
        super().init_weights()
        if self.prior_prob is not None:
            init_classifier_prior(self.retina_cls, self.prior_prob)

    def loss_by_feat(self, cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                     batch_gt_instances_ignore=None):
        if self.loss_cls.check_targets:
            conventions.check_box_labels([gt.labels for gt in batch_gt_instances], self.num_classes,
                                         "gt_instances.labels")
        featmap_sizes = [score.shape[-2:] for score in cls_scores]
        anchor_list, valid_flag_list = self.get_anchors(featmap_sizes, batch_img_metas, device=cls_scores[0].device)
        labels, label_weights, bbox_targets, bbox_weights, avg_factor = self.get_targets(
            anchor_list, valid_flag_list, batch_gt_instances, batch_img_metas,
            batch_gt_instances_ignore=batch_gt_instances_ignore)
        loss_cls = multilevel_classification_loss(self.loss_cls, cls_scores, labels, label_weights,
                                                  self.cls_out_channels, avg_factor)
        level_sizes = [anchors.size(0) for anchors in anchor_list[0]]
        level_anchors = _model_utils.images_to_levels([_bbox.cat_boxes(a) for a in anchor_list], level_sizes)
        loss_bbox = [self._box_loss(*level, avg_factor)
                     for level in zip(bbox_preds, level_anchors, bbox_targets, bbox_weights)]
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox)

    def _box_loss(self, bbox_pred, anchors, bbox_targets, bbox_weights, avg_factor):
        """One level's box regression loss, as RetinaHead computes it."""
        bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(-1, self.bbox_coder.encode_size)
        bbox_targets = bbox_targets.reshape(-1, bbox_targets.size(-1))
        bbox_weights = bbox_weights.reshape(-1, bbox_weights.size(-1))
        if self.reg_decoded_bbox:  # a loss on boxes (IoU losses): decode the deltas first
            bbox_pred = _bbox.get_box_tensor(self.bbox_coder.decode(anchors.reshape(-1, anchors.size(-1)), bbox_pred))
        return self.loss_bbox(bbox_pred, bbox_targets, bbox_weights, avg_factor=avg_factor)
