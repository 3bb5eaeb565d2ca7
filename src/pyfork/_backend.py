"""Choose the backend: the compiled core, or the standard library.

``PYFORK_BACKEND=c`` requires the core, ``PYFORK_BACKEND=python`` skips
it, and when the variable is unset or empty the core is used if it can be
imported.

Children import this module before their function runs, so annotations
that need typing are strings instead of a ``from __future__`` import.
"""

import os

from . import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def _load_core() -> "ModuleType":
    from . import _cbackend

    if __version__ != _cbackend.CORE_VERSION:
        message = (
            f"pyfork._core is version {_cbackend.CORE_VERSION}, but the "
            f"pyfork package is version {__version__}; reinstall pyfork "
            "to rebuild the core"
        )
        raise _StaleCoreError(message)
    return _cbackend


class _StaleCoreError(ImportError):
    """The compiled core does not match the Python package."""


def _select() -> "tuple[str, ModuleType]":
    requested = os.environ.get("PYFORK_BACKEND", "")
    if requested not in ("", "c", "python"):
        message = f"PYFORK_BACKEND must be 'c' or 'python', not {requested!r}"
        raise ImportError(message)
    if requested != "python":
        try:
            return "c", _load_core()
        except _StaleCoreError as error:
            if requested == "c":
                raise
            import warnings

            warnings.warn(
                f"{error}; using the python backend",
                RuntimeWarning,
                stacklevel=2,
            )
        except ImportError:
            if requested == "c":
                raise
    from . import _pybackend

    return "python", _pybackend


BACKEND: str
backend: "ModuleType"
BACKEND, backend = _select()
