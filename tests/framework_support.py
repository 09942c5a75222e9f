"""What the integration tests share: importing a framework or skipping visibly, unless the
environment requires every framework (DRLOSS_REQUIRE_FRAMEWORKS=1, set by CI's frameworks
part), where a framework that does not import fails the test instead."""

import os

import pytest

from drloss_cuda.integrations import import_framework

REQUIRE_FRAMEWORKS = "DRLOSS_REQUIRE_FRAMEWORKS"


def framework_or_skip(name):
    """Imports a framework module (or an integration module, which imports its framework) or
    skips the test, whatever the import raises; fails instead where the frameworks are required."""
    try:
        return import_framework(name)
    except ImportError as error:
        if os.environ.get(REQUIRE_FRAMEWORKS) == "1":
            pytest.fail(f"{REQUIRE_FRAMEWORKS}=1 but {error}")
        pytest.skip(str(error))


def cls_loss_spy(loss, record):
    """A wrapper of a loss callable that appends (logits, labels, loss) of every call to record,
    detached, for comparison with the reference on the very inputs the framework passed."""

    def spy(logits, labels, *args, **kwargs):
        value = loss(logits, labels, *args, **kwargs)
        record.append((logits.detach().clone(), labels.clone(), value.detach().clone()))
        return value

    return spy
