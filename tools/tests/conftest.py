"""Fixtures of the tooling tests."""

import os

import pytest

# A fixed seed makes a failure reproducible; DRLOSS_TEST_SEED draws other inputs.
DEFAULT_SEED = 0


@pytest.fixture
def generator():
    """The seed of a test's random inputs (DRLOSS_TEST_SEED, else DEFAULT_SEED), printed so that
    a failing case can be replayed."""
    seed = int(os.environ.get("DRLOSS_TEST_SEED", DEFAULT_SEED))
    print(f"seed: {seed} (DRLOSS_TEST_SEED)")
    return seed
