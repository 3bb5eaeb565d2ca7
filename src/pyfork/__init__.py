"""Run a registered Python function in a new process by re-executing the
current program.

Register functions, call ``pyfork.init()`` early, then call
``pyfork.fork("name", *args)``. See the README for the protocol.
"""

from ._backend import BACKEND
from ._child import init, is_child
from ._doctor import doctor
from ._errors import (
    ChildError,
    NotRegisteredError,
    PyforkError,
    SpawnError,
    TimeoutExpired,
)
from ._fork import DEFAULT_MAX_DEPTH, Fork, fork
from ._process import Process
from ._protocol import EXIT_NO_INIT, EXIT_START_FAILED
from ._registry import register
from ._stdio import DEVNULL, PIPE, STDOUT
from ._version import __version__

__all__ = [
    "BACKEND",
    "DEFAULT_MAX_DEPTH",
    "DEVNULL",
    "EXIT_NO_INIT",
    "EXIT_START_FAILED",
    "PIPE",
    "STDOUT",
    "ChildError",
    "Fork",
    "NotRegisteredError",
    "Process",
    "PyforkError",
    "SpawnError",
    "TimeoutExpired",
    "__version__",
    "doctor",
    "fork",
    "init",
    "is_child",
    "register",
]
