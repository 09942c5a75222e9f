"""The classifier prior: the initial probability a detector's classification layer gives every
(anchor, class) entry, set through the layer's bias.

Focal-loss detectors start at a prior of 0.01. DR loss wants 0.5, the value of every official
DR loss config (`RETINANET.PRIOR_PROB: 0.5`): its gradient reaches the logits through the
sigmoid slope p(1 - p), which is 0.0099 at p = 0.01 and 0.25 at p = 0.5, so at 0.01 the
classification loss barely moves in the first steps of SGD (docs/integration.md, "The classifier
prior", has the measurements).

Plain PyTorch: importable without the compiled extension.
"""

import math
import numbers

import torch

DR_LOSS_PRIOR = 0.5
"""The prior of the official DR loss configs."""

FOCAL_LOSS_PRIOR = 0.01
"""The prior of RetinaNet with focal loss (torchvision, detectron2 and mmdetection defaults)."""


def prior_bias(prior=DR_LOSS_PRIOR):
    """The bias b with sigmoid(b) = prior: b = log(prior) - log(1 - prior), finite for every
    prior in (0, 1). prior: a real number (Python or numpy), or a 0-dim tensor or array."""
    if getattr(prior, "shape", None) == () and hasattr(prior, "item"):  # numpy scalars, 0-dim arrays and tensors
        prior = prior.item()
    if isinstance(prior, bool) or not isinstance(prior, numbers.Real):
        raise TypeError(f"prior must be a number in (0, 1), got {type(prior).__name__}")
    prior = float(prior)
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must lie strictly between 0 and 1, got {prior}")
    return math.log(prior) - math.log1p(-prior)


@torch.no_grad()
def init_classifier_prior(layer, prior=DR_LOSS_PRIOR):
    """Sets the bias of a classification layer so that a zero input predicts `prior` for every
    entry, in place, and returns the bias.

    Args:
        layer: the layer that produces the classification logits (an nn.Conv2d or nn.Linear with
            a bias, or any module with a `bias` tensor), or the bias tensor itself.
        prior: the initial probability, in (0, 1). The default is DR loss's, 0.5 (a zero bias);
            focal loss uses FOCAL_LOSS_PRIOR, 0.01.

    With the usual small initial weights (normal, std 0.01) every logit then starts close to
    the bias, so every probability starts close to `prior`.
    """
    bias = layer if isinstance(layer, torch.Tensor) else getattr(layer, "bias", None)
    if not isinstance(bias, torch.Tensor):
        raise ValueError(f"layer must be a tensor or a module with a bias tensor, got {type(layer).__name__} "
                         f"with bias {bias!r}")
    if not bias.dtype.is_floating_point:
        raise TypeError(f"layer's bias must be a floating tensor, got {bias.dtype}")
    bias.fill_(prior_bias(prior))
    return bias
