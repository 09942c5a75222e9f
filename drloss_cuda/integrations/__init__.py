"""DR loss in detection frameworks.

    drloss_cuda.integrations.torchvision   use_dr_loss(model): torchvision RetinaNet
    drloss_cuda.integrations.mmdet         registers SigmoidDRLoss and DRLossRetinaHead in
                                           mmdet's MODELS (custom_imports in a config)
    drloss_cuda.integrations.detectron2    registers the DRLossRetinaNet META_ARCHITECTURE

Importing this package imports no framework; each submodule imports its own framework when it
is imported, and raises ImportError (naming the framework and the underlying error) when that
framework is missing or fails to load.
"""

import importlib


def import_framework(name, *, needed_by=None):
    """Imports the module `name` and returns it; any failure to import it (a missing package,
    but also a package whose compiled ops do not load, which raises RuntimeError or OSError)
    becomes an ImportError that says which module was needed and why it did not load."""
    try:
        return importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 - every kind of failed import is reported alike
        user = f" (needed by {needed_by})" if needed_by else ""
        raise ImportError(f"cannot import {name}{user}: {type(error).__name__}: {error}") from error


def fused_loss_module(**options):
    """drloss_cuda.SigmoidDRLoss(**options): the compiled extension loads here, when a model
    is built, not when an integration module is imported."""
    from .. import SigmoidDRLoss

    return SigmoidDRLoss(**options)
