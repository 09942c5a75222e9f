"""The product tests' fixtures (tests/conftest.py: devices, the seeded `generator`), for the
tools' tests, which live outside tests/."""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "drloss_product_conftest", pathlib.Path(__file__).resolve().parents[2] / "tests" / "conftest.py"
)
_product = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_product)

device = _product.device
generator = _product.generator
