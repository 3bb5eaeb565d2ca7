"""Compile pyfork._core with cffi. pyproject.toml contains the metadata."""

import runpy

from setuptools import setup

# setuptools runs this file from the project root, as build_core.py needs.
BUILD_CORE = "csrc/build_core.py"

core = runpy.run_path(BUILD_CORE)
options = {}
if core["STABLE_ABI"]:
    # The core is compiled against the stable ABI, so tag the wheel abi3.
    options["bdist_wheel"] = {"py_limited_api": core["LIMITED_API_TAG"]}

setup(cffi_modules=[f"{BUILD_CORE}:ffibuilder"], options=options)
