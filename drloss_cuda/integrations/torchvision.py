"""DR loss as the classification loss of torchvision's RetinaNet.

    import torchvision
    from drloss_cuda.integrations.torchvision import use_dr_loss

    model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None,
                                                                num_classes=91)
    use_dr_loss(model)          # DR loss, classifier prior 0.5; the box loss is unchanged

`model(images, targets)["classification"]` is then the per-image DR loss averaged over the
images (torchvision's focal loss is averaged over the images too, after dividing each image's
sum by its number of foreground anchors; DR loss is not divided by anything).

Importing this module imports torchvision; it raises ImportError when torchvision is missing or
fails to load.
"""

import torch

from .. import conventions
from ..initialization import DR_LOSS_PRIOR, init_classifier_prior
from . import fused_loss_module, import_framework

_retinanet = import_framework("torchvision.models.detection.retinanet", needed_by=__name__)
RetinaNetClassificationHead = _retinanet.RetinaNetClassificationHead


class DRLossClassificationHead(RetinaNetClassificationHead):
    """torchvision's RetinaNet classification head (same layers, same state_dict) whose
    `compute_loss` is DR loss.

    Args: those of RetinaNetClassificationHead, with prior_probability defaulting to DR loss's
    0.5, and
        loss: a callable (logits [N, A, C], labels [N, A]) -> loss, labels in drloss_cuda's
            convention; default `drloss_cuda.SigmoidDRLoss()` (the fused loss, the paper's
            defaults, mean over the images).
        check_targets: check every step that the box labels lie in [0, num_classes) (a host
            sync), as torchvision's focal loss does by indexing with them; a label outside would
            otherwise mean background to DR loss while the box loss trains the anchor.
    """

    def __init__(self, in_channels, num_anchors, num_classes, prior_probability=DR_LOSS_PRIOR, norm_layer=None,
                 *, loss=None, check_targets=True):
        dr_loss = _loss_or_default(loss)
        super().__init__(in_channels, num_anchors, num_classes, prior_probability=prior_probability,
                         norm_layer=norm_layer)
        self.dr_loss = dr_loss
        self.check_targets = check_targets

    def compute_loss(self, targets, head_outputs, matched_idxs):
        # matched_idxs: -1 background, -2 between the IoU thresholds (ignored), >= 0 a box whose
        # label is the class column, exactly as torchvision's focal loss reads them.
        labels = conventions.from_torchvision(matched_idxs, [t["labels"] for t in targets], self.num_classes,
                                              check=self.check_targets)
        return self.dr_loss(head_outputs["cls_logits"], labels)


# use_dr_loss's class for each subclass of RetinaNetClassificationHead it meets: the subclass's
# own methods (a custom forward) stay, DR loss's compute_loss comes first.
_DR_LOSS_CLASSES = {RetinaNetClassificationHead: DRLossClassificationHead}


def _dr_loss_class(head_class):
    if head_class not in _DR_LOSS_CLASSES:
        _DR_LOSS_CLASSES[head_class] = type(f"DRLoss{head_class.__name__}", (DRLossClassificationHead, head_class),
                                            {"__module__": head_class.__module__})
    return _DR_LOSS_CLASSES[head_class]


def use_dr_loss(model, *, prior=DR_LOSS_PRIOR, loss=None, check_targets=True):
    """Makes a torchvision RetinaNet train its classifier with DR loss, in place; returns it.

    Args:
        model: a torchvision.models.detection.RetinaNet (any backbone).
        prior: the classifier prior to initialize the classification bias for (0.5, DR loss's);
            None keeps the current bias (e.g. after loading a DR loss checkpoint).
        loss: the loss callable, as in DRLossClassificationHead (default: the fused SigmoidDRLoss).
        check_targets: as in DRLossClassificationHead (default True).

    The classification head keeps its weights and its state_dict keys; only its loss (and, unless
    prior is None, its bias) changes. The regression head and its loss are untouched. A head of
    a subclass of RetinaNetClassificationHead keeps its class's methods (it becomes an instance
    of a class derived from both). Arguments are checked before anything changes.
    """
    head = getattr(getattr(model, "head", None), "classification_head", None)
    if not isinstance(head, RetinaNetClassificationHead):
        raise TypeError("model must be a torchvision RetinaNet (model.head.classification_head a "
                        f"RetinaNetClassificationHead), got {type(model).__name__}")
    new_loss = _loss_or_default(loss)
    if prior is not None:  # first: it checks the prior before it sets the bias
        init_classifier_prior(head.cls_logits, prior)
    if not isinstance(head, DRLossClassificationHead):
        head.__class__ = _dr_loss_class(type(head))
    if not isinstance(new_loss, torch.nn.Module) and "dr_loss" in head._modules:
        del head.dr_loss  # a submodule cannot be overwritten by a plain callable
    head.dr_loss = new_loss
    head.check_targets = check_targets
    return model


def _loss_or_default(loss):
    """`loss` once checked to be callable, or the fused SigmoidDRLoss for None."""
    if loss is None:
        return fused_loss_module()
    if not callable(loss):
        raise TypeError(f"loss must be a callable (logits [N, A, C], labels [N, A]) -> loss, got {type(loss).__name__}")
    return loss
