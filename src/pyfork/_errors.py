"""The exceptions of pyfork. Each derives from the matching builtin too."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class PyforkError(Exception):
    """Base class of every exception that pyfork raises."""


class NotRegisteredError(PyforkError, LookupError):
    """A function name or object that was never passed to register()."""


class SpawnError(PyforkError, OSError):
    """The child process could not be started.

    ``errno`` and ``strerror`` describe the failure and ``filename`` is the
    executable that pyfork tried to start.
    """

    def __str__(self) -> str:
        return (
            f"cannot start {self.filename!r}: {self.strerror} "
            f"(errno {self.errno})"
        )


class ChildError(PyforkError):
    """The forked function raised, or its child process failed.

    Attributes:
        stage: the point where the child failed, one of:
            ``"no_init"``, it exited before it reached ``pyfork.init()``;
            ``"start"``, it could not start the function;
            ``"raised"``, the function raised;
            ``"exit"``, the function called ``sys.exit()`` with a non-zero
            code, or the child exited without a result;
            ``"signal"``, a signal killed it;
            ``"result"``, its result could not be read.
        pid: the child's process id.
        name: the registered name of the function.
        returncode: the exit code, or ``-N`` for a death by signal N.
        remote_type: the qualified name of the exception the function
            raised, or ``None``.
        remote_message: ``str()`` of that exception, or ``None``.
        remote_traceback: its formatted traceback, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        pid: int,
        name: str,
        returncode: int | None,
        remote_type: str | None = None,
        remote_message: str | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.pid = pid
        self.name = name
        self.returncode = returncode
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class TimeoutExpired(PyforkError, TimeoutError):
    """A wait for a child timed out. The child keeps running."""

    def __init__(self, pid: int, name: str, timeout: float) -> None:
        super().__init__(
            f"child {pid} running {name!r} did not exit within "
            f"{timeout} seconds"
        )
        self.pid = pid
        self.name = name
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    """Recreate an exception whose constructor takes keyword arguments."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


# Tracebacks and pickles name the public module.
for _class in (
    PyforkError,
    NotRegisteredError,
    SpawnError,
    ChildError,
    TimeoutExpired,
):
    _class.__module__ = "pyfork"


class FileCreationError(OSError):
    """A backend could not create or write the result or payload file.

    ``kind`` is ``"result"`` or ``"payload"``. ``filename`` is the
    directory of the file, or None for an anonymous file in memory. Fork
    turns it into SpawnError or PyforkError before it reaches the caller.
    """

    def __init__(
        self,
        kind: str,
        errno: int | None,
        strerror: str | None,
        directory: str | None,
    ) -> None:
        super().__init__(errno, strerror, directory)
        self.kind = kind
