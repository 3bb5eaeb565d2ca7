"""The version of pyfork, read by the build for the package and its core."""

__version__ = "0.1.0"
