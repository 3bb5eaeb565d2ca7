"""One version for the package, its metadata and the compiled core.

These tests run in pytest's own process and fork nothing: they call the
backend selection directly.
"""

from __future__ import annotations

import importlib.metadata
import re
import warnings

import pytest

import pyfork
from pyfork import _backend, _cbackend, _pybackend
from pyfork._core import ffi, lib

STALE_VERSION = "0.0.0.stale"


def test_core_version_matches_package() -> None:
    """The core built from csrc/ reports the version in pyfork/__init__.py."""
    core_version = ffi.string(lib.pyfork_core_version()).decode()
    assert core_version == pyfork.__version__
    assert pyfork.__version__ == _cbackend.CORE_VERSION


def test_metadata_version_matches_package() -> None:
    """pyproject.toml takes the installed version from pyfork/__init__.py."""
    assert importlib.metadata.version("pyfork") == pyfork.__version__


def test_matching_core_selected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYFORK_BACKEND", "c")
    name, module = _backend._select()
    assert name == "c"
    assert module is _cbackend


def test_stale_core_rejected_when_c_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PYFORK_BACKEND=c turns a core of another version into ImportError."""
    monkeypatch.setattr(_cbackend, "CORE_VERSION", STALE_VERSION)
    monkeypatch.setenv("PYFORK_BACKEND", "c")
    expected = (
        f"pyfork._core is version {STALE_VERSION}, but the pyfork package "
        f"is version {pyfork.__version__}; reinstall pyfork to rebuild "
        "the core"
    )
    with pytest.raises(ImportError, match=re.escape(expected)):
        _backend._select()


def test_stale_core_falls_back_with_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without PYFORK_BACKEND, a stale core is skipped with a warning."""
    monkeypatch.setattr(_cbackend, "CORE_VERSION", STALE_VERSION)
    monkeypatch.delenv("PYFORK_BACKEND", raising=False)
    expected = (
        f"pyfork._core is version {STALE_VERSION}, but the pyfork package "
        f"is version {pyfork.__version__}; reinstall pyfork to rebuild "
        "the core; using the python backend"
    )
    with pytest.warns(RuntimeWarning, match=re.escape(expected)):
        name, module = _backend._select()
    assert name == "python"
    assert module is _pybackend


def test_stale_core_ignored_for_python_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PYFORK_BACKEND=python skips the core and its version check."""
    monkeypatch.setattr(_cbackend, "CORE_VERSION", STALE_VERSION)
    monkeypatch.setenv("PYFORK_BACKEND", "python")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        name, module = _backend._select()
    assert name == "python"
    assert module is _pybackend
