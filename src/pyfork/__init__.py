"""Run a registered Python function in a new process by re-executing the
current program.

Register functions, call ``pyfork.init()`` early, then call
``pyfork.fork("name", *args)``. See the README for the protocol.

Every program that forks imports this package at start-up, and so does
every child, so only what ``register()`` and ``init()`` need is imported
here. The protocol, the backend with the compiled core, the exceptions
and the parent-side API load on first use, or when ``init()`` runs in a
parent; a child loads the protocol and the backend at once.
"""

# The build reads this line for the package metadata and for the compiled
# core. It comes before the imports: in a child, importing _child loads the
# backend, which checks the core against it.
__version__ = "0.1.0"

from ._child import init, is_child, register

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._backend import BACKEND
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
    from ._stdio import DEVNULL, PIPE, STDOUT

# The submodule that defines each name loaded on first use.
_LAZY_NAMES = {
    "BACKEND": "_backend",
    "ChildError": "_errors",
    "NotRegisteredError": "_errors",
    "PyforkError": "_errors",
    "SpawnError": "_errors",
    "TimeoutExpired": "_errors",
    "DEFAULT_MAX_DEPTH": "_fork",
    "DEVNULL": "_stdio",
    "EXIT_NO_INIT": "_protocol",
    "EXIT_START_FAILED": "_protocol",
    "Fork": "_fork",
    "PIPE": "_stdio",
    "Process": "_process",
    "STDOUT": "_stdio",
    "doctor": "_doctor",
    "fork": "_fork",
}


def __getattr__(name: str) -> object:
    submodule = _LAZY_NAMES.get(name)
    if submodule is None:
        message = f"module 'pyfork' has no attribute {name!r}"
        raise AttributeError(message)
    module = __import__(f"pyfork.{submodule}", fromlist=[name])
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
