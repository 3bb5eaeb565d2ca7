"""Compile pyfork._core with cffi. pyproject.toml holds the metadata."""

from setuptools import setup

setup(cffi_modules=["csrc/build_core.py:ffibuilder"])
