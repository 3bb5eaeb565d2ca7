"""The parent side: ``fork()`` and the reusable ``Fork`` specification."""

from __future__ import annotations

import errno
import os
import sys

from . import _child
from ._backend import backend
from ._errors import FileCreationError, PyforkError, SpawnError
from ._process import Process, abandon, reap_orphans
from ._protocol import (
    ENCODING_PICKLE,
    TOKEN_SIZE,
    Started,
    encode_body,
    fits_marshal,
    stream_body,
)
from ._reexec import LaunchPlan, child_command
from ._stdio import StdioSetup, check_spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from inspect import Signature
    from typing import Any, NoReturn

_TRANSPORTS = ("fd", "path")

#: Nesting depth allowed when PYFORK_MAX_DEPTH is unset: a child of the
#: first parent is at depth 1.
DEFAULT_MAX_DEPTH = 32

_signatures: dict[Callable[..., Any], Signature] = {}


def _bind(
    name: str,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """Raise TypeError unless the arguments fit the function's signature."""
    if not kwargs and _takes_exactly(function, len(args)):
        return
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
        options = sorted(set(kwargs) & _FORK_OPTIONS)
        if options:
            message += (
                f"; fork() passes {', '.join(options)} to the function, "
                "while options go to pyfork.Fork(...).start()"
            )
        raise TypeError(message) from None


_FORK_OPTIONS = frozenset(
    {
        "stdin",
        "stdout",
        "stderr",
        "env",
        "cwd",
        "argv",
        "executable",
        "pass_fds",
        "start_new_session",
        "process_group",
        "transport",
    }
)

# Flags of a code object that takes *args or **kwargs, from inspect.
_CO_VARARGS = 0x04
_CO_VARKEYWORDS = 0x08


def _takes_exactly(function: Callable[..., Any], count: int) -> bool:
    """Return whether a plain function takes exactly ``count`` positional
    arguments and nothing else, so binding them cannot fail.

    This skips inspect.signature().bind() for the common call, which costs
    tens of microseconds on every fork.
    """
    code = getattr(function, "__code__", None)
    if code is None or type(function).__name__ != "function":
        return False
    return (
        code.co_argcount == count
        and code.co_kwonlyargcount == 0
        and not code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS)
    )


def _encode(request: tuple[Any, ...], use_marshal: bool) -> tuple[int, bytes]:
    try:
        return encode_body(request, use_marshal)
    except Exception as error:
        _raise_unpicklable(request, error)


def _raise_unpicklable(request: tuple[Any, ...], error: Exception) -> NoReturn:
    """Raise PyforkError that names the argument pickle failed on."""
    name, args, kwargs = request[:3]
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

    ``Fork(function, **options)`` names a registered function (by name or
    by the function object) and stores the options. ``start()`` starts one
    child with the given arguments, and can run many times.

    Options:
        stdin, stdout, stderr: None to inherit the parent's (the
            default), an fd, a file object, ``pyfork.DEVNULL``, or
            ``pyfork.PIPE`` for a pipe that the Process exposes as
            ``stdin``, ``stdout`` or ``stderr``. stderr also takes
            ``pyfork.STDOUT``.
        env: a mapping that replaces the child's environment; the marker
            is still added, and removed again by the child.
        cwd: the directory the function runs in; the parent's working
            directory at fork time when None.
        argv, executable: the command that starts the child instead of
            the re-executed program, for launchers that pyfork cannot
            replay. ``argv`` is the whole argument vector. The program
            it starts must register the function and call
            ``pyfork.init()``.
        pass_fds: descriptors that the child keeps, at the same numbers.
            Every other descriptor above 2 is closed in the child.
        start_new_session: start the child in a new session (setsid).
        process_group: the process group to put the child in, 0 for a
            new group led by the child, or None for the parent's group.
        transport: how the arguments reach the child. ``"fd"`` (the
            default) passes an anonymous file as an inherited descriptor,
            so nothing ever exists on disk. ``"path"`` writes a named
            file with mode 0600 in the temporary directory, which the
            child checks and removes.
    """

    def __init__(
        self,
        function: str | Callable[..., Any],
        *,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        argv: Sequence[str] | None = None,
        executable: str | os.PathLike[str] | None = None,
        pass_fds: Iterable[int] = (),
        start_new_session: bool = False,
        process_group: int | None = None,
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
        for index, spec in enumerate((stdin, stdout, stderr)):
            check_spec(spec, index)
        self.function = function
        self.stdio = (stdin, stdout, stderr)
        self.env = _check_env(env)
        self.cwd = _check_path("cwd", cwd)
        self.argv = _check_argv(argv)
        self.executable = _check_path("executable", executable)
        self.pass_fds = _check_fds(pass_fds)
        self.start_new_session = bool(start_new_session)
        self.process_group = _check_process_group(process_group)
        self.transport = transport
        self._launch: LaunchPlan | None = None

    def __repr__(self) -> str:
        return f"pyfork.Fork({self.function!r}, transport={self.transport!r})"

    def start(self, *args: Any, **kwargs: Any) -> Process:
        """Start a child that runs the function with these arguments.

        Raises NotRegisteredError, TypeError for arguments that do not fit
        the function, PyforkError when an argument cannot be pickled, the
        launch mode cannot be re-executed or the payload cannot be
        written, and SpawnError when the child cannot be started. Nothing
        is left behind when it raises.
        """
        _child.check_can_fork()
        reap_orphans()
        name, function = _child.lookup(self.function)
        _bind(name, function, args, kwargs)
        depth = _child_depth(name)
        launch = self._launch
        if launch is None:
            launch = child_command(self.executable, self.argv)
            self._launch = launch
        current = os.getcwd()
        cwd = _check_cwd(current, self.cwd)
        _check_open(self.pass_fds)
        request = (name, args, kwargs, cwd, depth, list(sys.argv))
        # A large anonymous payload is pickled straight into its file.
        # Everything else is encoded first, so an argument that cannot be
        # pickled creates no file at all.
        use_marshal = fits_marshal(request)
        streamed = self.transport == "fd" and not use_marshal
        encoded = None if streamed else _encode(request, use_marshal)
        token = os.urandom(TOKEN_SIZE)
        directory = _payload_directory() if self.transport == "path" else None

        stdio = StdioSetup(self.stdio)
        payload = _PayloadFile()
        started = Started()
        try:
            if encoded is None:
                payload.fd = _stream_payload(token, request)
            elif directory is not None:
                payload.fd, payload.path = _create_file(
                    backend.create_payload,
                    "payload",
                    token,
                    *encoded,
                    directory,
                )
                payload.identity = payload.file_identity()
            self._start_child(
                launch,
                current,
                stdio.child_fds,
                token=token,
                encoded=encoded,
                payload=payload,
                started=started,
            )
            stdio.spawned()
            payload.close()
            return Process(
                started.pid,
                name,
                token=token,
                result_fd=started.result_fd,
                payload_path=payload.path,
                payload_identity=payload.identity,
                streams=stdio.parent_streams(),
            )
        except BaseException:
            stdio.close_all()
            if started.pid < 0:
                payload.discard()
            else:
                # Interrupted after the spawn: the child runs on, and is
                # reaped and its unread payload removed as for a dropped
                # Process.
                payload.close()
                os.close(started.result_fd)
                abandon(started.pid, payload.path, payload.identity)
            raise

    def _start_child(
        self,
        launch: LaunchPlan,
        current: str,
        stdio: list[int],
        *,
        token: bytes,
        encoded: tuple[int, bytes] | None,
        payload: _PayloadFile,
        started: Started,
    ) -> None:
        """Start the child and store its pid and result fd in ``started``.

        ``encoded`` goes into a new anonymous payload file unless
        ``payload`` contains the payload already. Raises SpawnError, or
        PyforkError when a file cannot be created.
        """
        env = self.env
        if "PYTHONINSPECT" in (os.environ if env is None else env):
            # The child must never open a prompt, as -i is dropped for it.
            env = dict(os.environ if env is None else env)
            del env["PYTHONINSPECT"]
        spawn_cwd = launch.cwd
        if spawn_cwd == current:
            spawn_cwd = None  # the child starts here anyway
        try:
            backend.start(
                launch.executable,
                launch.argv,
                env,
                token,
                started,
                body=encoded if payload.fd < 0 else None,
                payload_fd=payload.fd,
                payload_path=payload.path,
                pass_fds=self.pass_fds,
                stdio=stdio,
                cwd=spawn_cwd,
                setsid=self.start_new_session,
                pgroup=self.process_group,
            )
        except FileCreationError as error:
            raise _file_error(error.kind, error) from error
        except OSError as error:
            spawn_error = SpawnError(
                error.errno, error.strerror, launch.executable
            )
            if error.errno == errno.EPERM and self.process_group is not None:
                # setpgid() failed: the group is in another session or gone.
                spawn_error.strerror = (
                    f"{error.strerror}: cannot join process group "
                    f"{self.process_group} (process_group=)"
                )
            raise spawn_error from error


class _PayloadFile:
    """A payload file that the parent created before the start, if any."""

    def __init__(self) -> None:
        self.fd = -1
        self.path: str | None = None
        self.identity: tuple[int, int] | None = None

    def file_identity(self) -> tuple[int, int]:
        """Return (st_dev, st_ino) of the open file."""
        info = os.fstat(self.fd)
        return (info.st_dev, info.st_ino)

    def close(self) -> None:
        """Close the parent's fd, once the child has its own."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Close and remove the file after a failed start."""
        self.close()
        if self.path is not None:
            try:
                backend.remove_payload(self.path)
            except FileNotFoundError:
                pass


def _stream_payload(token: bytes, request: tuple[Any, ...]) -> int:
    """Create an anonymous payload file and pickle ``request`` into it."""
    fd: int = _create_file(backend.create_anonymous_file, "payload")
    try:
        size = stream_body(fd, request)
        backend.write_header(fd, token, ENCODING_PICKLE, size)
    except OSError as error:
        os.close(fd)
        message = (
            f"cannot write the payload file: {error.strerror} "
            f"(errno {error.errno})"
        )
        raise PyforkError(message) from error
    except Exception as error:
        os.close(fd)
        _raise_unpicklable(request, error)
    except BaseException:  # KeyboardInterrupt while pickling
        os.close(fd)
        raise
    return fd


def _check_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """Return a copy of ``env``, or raise for a key or value it cannot use."""
    if env is None:
        return None
    if not callable(getattr(env, "items", None)):
        message = f"env must be a mapping of str to str, not {env!r}"
        raise TypeError(message)
    checked = {}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            message = (
                f"env keys and values must be str, not {key!r}: {value!r}"
            )
            raise TypeError(message)
        if not key or "=" in key or "\0" in key or "\0" in value:
            message = f"invalid environment variable {key!r}={value!r}"
            raise ValueError(message)
        try:
            os.fsencode(key)
            os.fsencode(value)
        except UnicodeEncodeError as error:
            message = f"env variable {key!r} cannot be encoded: {error}"
            raise ValueError(message) from None
        checked[key] = value
    return checked


def _check_path(option: str, value: Any) -> str | None:
    """Return a path option as str, or raise TypeError naming the option."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        message = f"{option} must be a str or os.PathLike, not {value!r}"
        raise TypeError(message)
    path = os.fspath(value)
    if not isinstance(path, str):
        message = f"{option} must be a str path, not {value!r}"
        raise TypeError(message)
    if "\0" in path:
        message = f"{option} must not contain a NUL character: {path!r}"
        raise ValueError(message)
    return path


def _check_argv(argv: Sequence[str] | None) -> list[str] | None:
    if argv is None:
        return None
    if isinstance(argv, (str, bytes)) or not argv:
        message = f"argv must be a non-empty list of str, not {argv!r}"
        raise TypeError(message)
    checked = []
    for arg in argv:
        path = _check_path("argv", arg)
        assert path is not None
        checked.append(path)
    return checked


def _check_fds(fds: Iterable[int]) -> tuple[int, ...]:
    """Return ``fds`` as a sorted tuple, or raise for an invalid one."""
    if isinstance(fds, (int, str, bytes)) or not hasattr(fds, "__iter__"):
        message = f"pass_fds must be an iterable of fds, not {fds!r}"
        raise TypeError(message)
    checked = set()
    for fd in fds:
        if not isinstance(fd, int) or isinstance(fd, bool):
            message = f"pass_fds must hold ints, not {fd!r}"
            raise TypeError(message)
        if fd < 0:
            message = f"pass_fds must hold fds of 0 or above, not {fd}"
            raise ValueError(message)
        checked.add(fd)
    return tuple(sorted(checked))


def _check_open(fds: tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError as error:
            message = f"pass_fds: descriptor {fd} is not open"
            raise PyforkError(message) from error


def _check_process_group(process_group: int | None) -> int | None:
    if process_group is None:
        return None
    if (
        not isinstance(process_group, int)
        or isinstance(process_group, bool)
        or process_group < 0
    ):
        message = (
            "process_group must be None, 0 or a process group id, "
            f"not {process_group!r}"
        )
        raise ValueError(message)
    return process_group


def _check_cwd(current: str, cwd: str | None) -> str:
    """Return the absolute working directory of the function."""
    if cwd is None:
        return current
    directory = os.path.join(current, cwd)
    if not os.path.isdir(directory):
        message = f"cwd {cwd!r} is not a directory; create it or fix the path"
        raise PyforkError(message)
    return directory


def _child_depth(name: str) -> int:
    """Return the nesting depth of a new child, or raise over the limit."""
    depth = _child.depth() + 1
    setting = os.environ.get("PYFORK_MAX_DEPTH", "")
    if not setting:
        limit = DEFAULT_MAX_DEPTH
    elif setting.isascii() and setting.isdigit() and int(setting) > 0:
        limit = int(setting)
    else:
        message = (
            f"PYFORK_MAX_DEPTH must be a positive integer, not {setting!r}"
        )
        raise PyforkError(message)
    if depth > limit:
        message = (
            f"cannot fork {name!r}: the child would be nested {depth} "
            f"levels deep, over the limit of {limit}. A function that "
            "forks itself needs a base case; PYFORK_MAX_DEPTH raises the "
            "limit"
        )
        raise PyforkError(message)
    return depth


def _payload_directory() -> str:
    """Return the directory of named payload files, by tempfile's rules."""
    import tempfile

    try:
        return tempfile.gettempdir()
    except OSError as error:
        message = (
            "cannot create the payload file: no usable temporary directory "
            f"({error.strerror}, errno {error.errno}); set TMPDIR to a "
            "writable directory"
        )
        raise PyforkError(message) from error


# Errors of a process or system out of fds or memory: the child cannot
# be started for the same reasons that posix_spawn() itself reports.
_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def _create_file(create: Callable[..., Any], kind: str, *args: Any) -> Any:
    """Call a backend's create function, turning OSError into PyforkError
    as _file_error() does."""
    try:
        return create(*args)
    except OSError as error:
        raise _file_error(kind, error) from error


def _file_error(kind: str, error: OSError) -> PyforkError:
    """Return the error to raise when the ``kind`` file cannot be created.

    Running out of fds or memory gives SpawnError with the errno, as a
    failed posix_spawn() does; other errors name the directory.
    """
    if error.errno in _RESOURCE_ERRNOS:
        strerror = f"{error.strerror}, creating the {kind} file"
        return SpawnError(error.errno, strerror, sys.executable)
    where = error.filename if error.filename else "memory"
    message = (
        f"cannot create the {kind} file in {where}: {error.strerror} "
        f"(errno {error.errno})"
    )
    return PyforkError(message)


def fork(
    function: str | Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Process:
    """Run a registered function in a new process and return its handle.

    ``function`` is the registered name or the function itself. Every
    other argument goes to the function, so options live on ``Fork``.
    """
    try:
        spec = _default_forks.get(function)
    except TypeError:  # an unhashable callable
        return Fork(function).start(*args, **kwargs)
    if spec is None:
        spec = Fork(function)
        if len(_default_forks) >= _DEFAULT_FORKS_SIZE:
            _default_forks.clear()
        _default_forks[function] = spec
    return spec.start(*args, **kwargs)


# fork() reuses one Fork without options per function, which keeps the
# checks of the options and the launch plan off each call.
_default_forks: dict[str | Callable[..., Any], Fork] = {}
_DEFAULT_FORKS_SIZE = 64
