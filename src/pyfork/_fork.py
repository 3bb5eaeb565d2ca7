"""The parent side: ``fork()`` and the reusable ``Fork`` specification."""

from __future__ import annotations

import os

from . import _child, _registry
from ._backend import backend
from ._errors import PyforkError, SpawnError
from ._process import Process, reap_orphans
from ._protocol import TOKEN_SIZE, encode_body, format_marker
from ._reexec import child_command

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from inspect import Signature
    from typing import Any

_TRANSPORTS = ("fd", "path")

_signatures: dict[Callable[..., Any], Signature] = {}


def _bind(
    name: str,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """Raise TypeError unless the arguments fit the function's signature."""
    signature = _signatures.get(function)
    if signature is None:
        import inspect

        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return  # no signature to check, as for some builtins
        _signatures[function] = signature
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        message = f"cannot fork {name}{signature}: {error}"
        raise TypeError(message) from None


def _encode(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], depth: int
) -> tuple[int, bytes]:
    request = (name, args, kwargs, os.getcwd(), depth)
    try:
        return encode_body(request)
    except Exception as error:
        culprit = _find_unpicklable(args, kwargs)
        message = (
            f"cannot pickle {culprit} for {name!r}: "
            f"{type(error).__name__}: {error}"
        )
        raise PyforkError(message) from error


def _find_unpicklable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Return a description of the first argument that fails to pickle."""
    import pickle

    labelled = [
        (f"argument {i} ({arg!r:.60})", arg) for i, arg in enumerate(args)
    ]
    labelled += [
        (f"keyword argument {key!r} ({value!r:.60})", value)
        for key, value in kwargs.items()
    ]
    for label, value in labelled:
        try:
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            return label
    return "the arguments"


class Fork:
    """A reusable specification of a fork.

    ``Fork(function, transport="fd")`` names a registered function (by
    name or by the function object) and holds the options. ``start()``
    starts one child with the given arguments, and can run many times.

    ``transport`` selects how the arguments reach the child: ``"fd"`` (the
    default) passes an anonymous file as an inherited descriptor, so
    nothing ever exists on disk; ``"path"`` writes a named file with mode
    0600 in the temporary directory, which the child checks and removes.
    """

    def __init__(
        self,
        function: str | Callable[..., Any],
        *,
        transport: str = "fd",
    ) -> None:
        if not isinstance(function, str) and not callable(function):
            message = (
                "Fork() takes a registered function or its name, "
                f"not {type(function).__name__}"
            )
            raise TypeError(message)
        if transport not in _TRANSPORTS:
            message = f"transport must be 'fd' or 'path', not {transport!r}"
            raise ValueError(message)
        self.function = function
        self.transport = transport

    def __repr__(self) -> str:
        return f"pyfork.Fork({self.function!r}, transport={self.transport!r})"

    def start(self, *args: Any, **kwargs: Any) -> Process:
        """Start a child that runs the function with these arguments.

        Raises NotRegisteredError, TypeError for arguments that do not fit
        the function, PyforkError when an argument cannot be pickled or
        the payload cannot be written, and SpawnError when the child
        cannot be started. Nothing is left behind when it raises.
        """
        _child.check_can_fork()
        reap_orphans()
        name, function = _registry.lookup(self.function)
        _bind(name, function, args, kwargs)
        executable, argv = child_command()
        encoding, body = _encode(name, args, kwargs, _child.depth() + 1)
        token = os.urandom(TOKEN_SIZE)
        directory = None
        if self.transport == "path":
            import tempfile

            directory = tempfile.gettempdir()
        try:
            fd, path = backend.create_payload(token, encoding, body, directory)
        except OSError as error:
            where = directory if directory is not None else "memory"
            message = (
                f"cannot write the payload file in {where}: "
                f"{error.strerror} (errno {error.errno})"
            )
            raise PyforkError(message) from error

        try:
            identity = None
            if path is not None:
                info = os.fstat(fd)
                identity = (info.st_dev, info.st_ino)
            marker = format_marker(token, None if path else fd, path)
            keep_fds = () if path is not None else (fd,)
            try:
                pid = backend.spawn(executable, argv, marker, None, keep_fds)
            except OSError as error:
                if path is not None:
                    backend.remove_payload(path)
                raise SpawnError(
                    error.errno, error.strerror, executable
                ) from error
        finally:
            os.close(fd)
        return Process(pid, name, path, identity)


def fork(
    function: str | Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Process:
    """Run a registered function in a new process and return its handle.

    ``function`` is the registered name or the function itself. Every
    other argument goes to the function, so options live on ``Fork``.
    """
    return Fork(function).start(*args, **kwargs)
