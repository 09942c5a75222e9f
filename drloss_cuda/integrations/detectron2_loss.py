"""The parts of the detectron2 integration that need no detectron2: the config keys, their
translation into the loss's arguments, and the classification loss over all FPN levels.
`drloss_cuda.integrations.detectron2` builds the META_ARCHITECTURE from them."""

from .. import conventions
from .._common import DEFAULT_L, DEFAULT_MARGIN, DEFAULT_NEG_LAMBDA, DEFAULT_POS_LAMBDA, DEFAULT_TAU
from ..initialization import DR_LOSS_PRIOR

# cfg.MODEL.DR_LOSS.<key>: default, and the SigmoidDRLoss argument it sets (None: the prior).
CONFIG_KEYS = {
    "PRIOR_PROB": (DR_LOSS_PRIOR, None),
    "POS_LAMBDA": (DEFAULT_POS_LAMBDA, "pos_lambda"),
    "NEG_LAMBDA": (DEFAULT_NEG_LAMBDA, "neg_lambda"),
    "L": (DEFAULT_L, "L"),
    "TAU": (DEFAULT_TAU, "tau"),
    "MARGIN": (DEFAULT_MARGIN, "margin"),
}


def add_dr_loss_config(cfg):
    """Adds cfg.MODEL.DR_LOSS (PRIOR_PROB 0.5 and DR loss's parameters, the paper's defaults)
    to a detectron2 config, before merge_from_file / merge_from_list; returns cfg."""
    node_type = type(cfg.MODEL)
    cfg.MODEL.DR_LOSS = node_type({key: default for key, (default, _) in CONFIG_KEYS.items()})
    return cfg


def options_from_config(cfg):
    """(prior, SigmoidDRLoss keyword arguments) from cfg.MODEL.DR_LOSS, or the defaults for
    the keys it lacks (or all of them when add_dr_loss_config was not called)."""
    node = getattr(cfg.MODEL, "DR_LOSS", None)
    values = {key: getattr(node, key, default) if node is not None else default
              for key, (default, _) in CONFIG_KEYS.items()}
    prior = values.pop("PRIOR_PROB")
    return prior, {CONFIG_KEYS[key][1]: float(value) for key, value in values.items()}


def dense_classification_loss(loss, pred_logits, gt_labels, num_classes, check_targets=True):
    """DR loss of detectron2's dense predictions.

    Args:
        loss: a callable (logits [N, R, K], labels [N, R]) -> loss (e.g. SigmoidDRLoss()).
        pred_logits: per level, [N, Hi*Wi*A, K] (RetinaNet.losses' pred_logits).
        gt_labels: per image, [R] labels from label_anchors (0..K-1, K background, -1 ignore).
        num_classes: K.
        check_targets: check that the labels lie in [-1, K] (a host sync), as detectron2's focal
            loss does through its one-hot encoding; a class id beyond K would otherwise mean
            background to DR loss while the box loss trains the anchor.
    """
    labels = conventions.from_detectron2(gt_labels, num_classes, check=check_targets)
    return loss(conventions.concat_levels(pred_logits), labels)
