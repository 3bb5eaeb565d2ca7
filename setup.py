"""Build hook: compile pyfork._core with cffi. Metadata is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["csrc/build_core.py:ffibuilder"])
