"""The child's stdin, stdout and stderr: inherited, redirected or piped."""

from __future__ import annotations

import os

from ._errors import PyforkError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

#: Connect the stream to a new pipe; the Process gets the other end.
PIPE = -1
#: Send stderr wherever stdout goes.
STDOUT = -2
#: Connect the stream to os.devnull.
DEVNULL = -3

_NAMES = ("stdin", "stdout", "stderr")


def check_spec(spec: Any, index: int) -> None:
    """Raise TypeError or ValueError for a stdio value of no accepted kind."""
    name = _NAMES[index]
    if spec is None or spec in (PIPE, DEVNULL):
        return
    if spec == STDOUT and isinstance(spec, int):
        if index == 2:
            return
        message = f"pyfork.STDOUT is valid for stderr only, not {name}"
        raise ValueError(message)
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec >= 0:
            return
        message = f"{name} must be an fd of 0 or above, not {spec}"
        raise ValueError(message)
    if callable(getattr(spec, "fileno", None)):
        return
    message = (
        f"{name} must be None, an fd, a file object, pyfork.PIPE or "
        f"pyfork.DEVNULL, not {spec!r}"
    )
    raise TypeError(message)


def _fileno(stream: Any, index: int) -> int:
    """Return the fd of a file object, or raise naming the stream."""
    try:
        fd: int = stream.fileno()
    except (OSError, ValueError) as error:
        # io.UnsupportedOperation is both: an in-memory file has no fd.
        message = f"{_NAMES[index]}: {stream!r} has no file descriptor"
        raise PyforkError(message) from error
    return fd


class StdioSetup:
    """The fds that become a child's stdio, and the parent's pipe ends.

    ``child_fds`` contains what the child gets as 0, 1 and 2 (-1: the
    parent's own). Every source fd is 3 or above, so the dup2() onto 0-2
    in the child cannot overwrite a source that a later one needs.
    """

    def __init__(self, specs: tuple[Any, Any, Any]) -> None:
        self.child_fds = [-1, -1, -1]
        self.parent_fds: list[int | None] = [None, None, None]
        self._close_after_spawn: list[int] = []
        if specs == (None, None, None):
            return  # the child inherits all three, as most do
        try:
            for index, spec in enumerate(specs):
                self._open(index, spec)
        except BaseException:
            self.close_all()
            raise

    def _own(self, fd: int) -> int:
        """Return ``fd``, or a close-on-exec copy of it at 3 or above."""
        if fd > 2:
            return fd
        import fcntl

        copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        self._close_after_spawn.append(copy)
        return copy

    def _open(self, index: int, spec: Any) -> None:
        if spec is None:
            return
        if spec == PIPE and isinstance(spec, int):
            read_end, write_end = os.pipe()
            child, parent = (
                (read_end, write_end) if index == 0 else (write_end, read_end)
            )
            self._close_after_spawn.append(child)
            self.parent_fds[index] = parent
            self.child_fds[index] = self._own(child)
        elif spec == DEVNULL and isinstance(spec, int):
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            self._close_after_spawn.append(fd)
            self.child_fds[index] = self._own(fd)
        elif spec == STDOUT and isinstance(spec, int):
            stdout = self.child_fds[1]
            self.child_fds[index] = stdout if stdout >= 0 else self._own(1)
        else:
            fd = spec if isinstance(spec, int) else _fileno(spec, index)
            try:
                os.fstat(fd)
            except OSError as error:
                message = f"{_NAMES[index]}: descriptor {fd} is not open"
                raise PyforkError(message) from error
            self.child_fds[index] = self._own(fd)

    def spawned(self) -> None:
        """Close the child's ends in the parent, once the child has them."""
        for fd in self._close_after_spawn:
            os.close(fd)
        self._close_after_spawn.clear()

    def close_all(self) -> None:
        """Close every fd this setup opened, after a failed spawn."""
        self.spawned()
        for index, fd in enumerate(self.parent_fds):
            if fd is not None:
                os.close(fd)
                self.parent_fds[index] = None

    def parent_streams(self) -> tuple[IO[bytes] | None, ...]:
        """Return the parent's ends of the pipes as binary file objects."""
        if self.parent_fds == [None, None, None]:
            return (None, None, None)
        modes = ("wb", "rb", "rb")
        return tuple(
            None if fd is None else open(fd, mode)
            for fd, mode in zip(self.parent_fds, modes, strict=True)
        )
