"""make test runs this suite from the project's own virtual environment (.venv, made by make deps from
python/requirements-dev.txt), so CI tests exactly what make deps installs: nothing may come from the
system Python's site-packages, where earlier work on a used machine could hide a missing install step."""
import importlib
import os
import sys

import pytest

VENV = os.environ.get("RTRACE_VENV")
# every third-party package the tests, the demo and the benchmarks import
PACKAGES = ["numpy", "pytest", "setuptools", "wheel", "torch", "transformers", "megatron.core", "ray", "pyarrow"]


@pytest.fixture
def venv():
    if not VENV:
        pytest.skip("RTRACE_VENV is not set: make test sets it to the virtual environment it runs from")
    return os.path.realpath(VENV)


def test_runs_from_the_project_venv(venv):
    assert os.path.realpath(sys.prefix) == venv, f"pytest runs from {sys.prefix}, not {venv}"
    assert sys.prefix != sys.base_prefix
    cfg = open(os.path.join(venv, "pyvenv.cfg")).read()
    assert "include-system-site-packages = false" in cfg, "the venv must not see the system site-packages"
    base_site = [p for p in sys.path if p.startswith(os.path.realpath(sys.base_prefix)) and "site-packages" in p]
    assert not base_site, f"the system site-packages are on sys.path: {base_site}"


@pytest.mark.parametrize("name", PACKAGES)
def test_package_comes_from_the_venv(venv, name):
    mod = importlib.import_module(name)
    path = os.path.realpath(mod.__file__)
    assert path.startswith(venv + os.sep), f"{name} is imported from {path}, outside {venv}"
