"""Fused sigmoid DR loss (distributional ranking loss, CVPR 2020) for PyTorch, on CPU and CUDA.

    from drloss_cuda import SigmoidDRLoss, sigmoid_dr_loss

`drloss_cuda.reference` is a pure-PyTorch implementation with the same signature (less
`process_group`). It imports without the compiled extension, as do the prior helpers
(`init_classifier_prior`, `prior_bias`); the fused names load the extension on first use.
Detector integrations live in `drloss_cuda.integrations` (torchvision, mmdet, detectron2), each
importing its framework only when imported itself.
"""

from . import reference
from ._common import DEFAULT_L, DEFAULT_MARGIN, DEFAULT_NEG_LAMBDA, DEFAULT_POS_LAMBDA, DEFAULT_TAU, MIN_LAMBDA
from .initialization import DR_LOSS_PRIOR, FOCAL_LOSS_PRIOR, init_classifier_prior, prior_bias

__version__ = "0.1.0"

__all__ = [
    "SigmoidDRLoss",
    "sigmoid_dr_loss",
    "build_info",
    "reference",
    "DEFAULT_POS_LAMBDA",
    "DEFAULT_NEG_LAMBDA",
    "DEFAULT_L",
    "DEFAULT_TAU",
    "DEFAULT_MARGIN",
    "MIN_LAMBDA",
    "DR_LOSS_PRIOR",
    "FOCAL_LOSS_PRIOR",
    "init_classifier_prior",
    "prior_bias",
]

_FUSED = {
    "sigmoid_dr_loss": ("functional", "sigmoid_dr_loss"),
    "SigmoidDRLoss": ("modules", "SigmoidDRLoss"),
    "build_info": ("ops", "build_info"),
}


def __getattr__(name):
    # The fused API needs drloss_cuda._C; loading it here (not at package import) keeps
    # drloss_cuda.reference usable without a build, and reports a missing build clearly.
    if name in _FUSED:
        import importlib

        module_name, attr = _FUSED[name]
        value = getattr(importlib.import_module(f".{module_name}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'drloss_cuda' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_FUSED))
