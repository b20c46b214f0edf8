"""Builds the optional accelerator rtrace._native (metadata: pyproject.toml).

The extension uses only the CPython C API and the buffer protocol (no numpy headers). It is
optional: without a C compiler or the Python headers the build skips it with a warning and the
package installs and reads with its numpy code (rtrace.native_available() is then False)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("rtrace._native", ["rtrace/_native.c"], optional=True)])
