"""The registry of functions, ``init()``, and the child side: the
dispatch to the function and the exit.

Everything here runs on every fork before the function starts, so it
imports nothing that the interpreter has not loaded at start-up, and
annotations that need typing are strings instead of a ``from
__future__`` import. It is one module because each module a child
imports costs start-up time.
"""

import os
import sys

#: The environment variable that marks a child. _protocol describes its
#: value.
MARKER = "PYFORK_CHILD"

if MARKER in os.environ:
    # Only a child needs the protocol at start-up. A parent loads it with
    # the parent-side modules when init() runs, so that programs that
    # import pyfork and never fork do not pay for it.
    from ._protocol import (
        EXIT_NO_INIT,
        EXIT_START_FAILED,
        RECORD_EXITED,
        RECORD_RAISED,
        RECORD_RETURNED,
        RECORD_START_FAILED,
        RECORD_STARTED,
        PayloadError,
        decode_body,
        encode_body,
        parse_marker,
    )

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import Any, NoReturn, TypeVar, overload

    F = TypeVar("F", bound=Callable[..., Any])

# Exit code of CPython when flushing stdout at exit fails.
_EXIT_FLUSH_FAILED = 120

# The directories the program started in, as far as pyfork can tell: the
# working directory and sys.path[0] when pyfork was first imported. A
# child starts there, so that module-level code and -m see the same.
try:
    STARTUP_CWD = os.getcwd()
except OSError:  # the directory was removed
    STARTUP_CWD = ""
STARTUP_PATH0 = sys.path[0] if sys.path else ""

_functions: "dict[str, Callable[..., Any]]" = {}


def _add(name: str, function: "Callable[..., Any]") -> None:
    if not isinstance(name, str):
        message = f"function name must be a str, not {type(name).__name__}"
        raise TypeError(message)
    if not name:
        raise ValueError("function name must not be empty")
    if not callable(function):
        message = f"cannot register {function!r} as {name!r}: not callable"
        raise TypeError(message)
    registered = _functions.get(name)
    if registered is not None and registered is not function:
        message = (
            f"{name!r} is already registered to {registered!r}; "
            f"register {function!r} under another name"
        )
        raise ValueError(message)
    _functions[name] = function


if TYPE_CHECKING:

    @overload
    def register(name_or_function: F, /) -> F: ...

    @overload
    def register(name_or_function: str, /) -> Callable[[F], F]: ...

    @overload
    def register(name_or_function: str, function: F, /) -> F: ...


def register(
    name_or_function: "str | Callable[..., Any]",
    function: "Callable[..., Any] | None" = None,
    /,
) -> "Any":
    """Register a function that ``pyfork.fork()`` can run in a child.

    Three forms:

    - ``@register`` registers under the function's ``__name__``;
    - ``@register("name")`` registers under ``name``;
    - ``register("name", function)`` registers ``function`` directly.

    Each form returns the function unchanged. Registering the same
    function under the same name again does nothing. Registering another
    function under a name that is taken raises ValueError.

    Register every function before ``pyfork.init()`` runs: the child looks
    the name up when its ``init()`` dispatches.
    """
    if isinstance(name_or_function, str):
        name = name_or_function
        if function is not None:
            _add(name, function)
            return function

        def decorator(target: "F") -> "F":
            _add(name, target)
            return target

        return decorator

    if function is not None:
        message = (
            "register(name, function) takes the name first; "
            f"got {name_or_function!r} as the name"
        )
        raise TypeError(message)
    target = name_or_function
    target_name = getattr(target, "__name__", None)
    if not isinstance(target_name, str):
        message = (
            f"{target!r} has no __name__; "
            "register it with register('name', function)"
        )
        raise TypeError(message)
    _add(target_name, target)
    return target


def lookup(
    name_or_function: "str | Callable[..., Any]",
) -> "tuple[str, Callable[..., Any]]":
    """Return the registered name and function for a name or a function.

    Raises NotRegisteredError when it was never registered.
    """
    if isinstance(name_or_function, str):
        function = _functions.get(name_or_function)
        if function is not None:
            return name_or_function, function
        message = (
            f"no function is registered as {name_or_function!r}; "
            "decorate it with @pyfork.register above pyfork.init()"
        )
    else:
        for name, function in _functions.items():
            if function is name_or_function:
                return name, function
        message = (
            f"{name_or_function!r} is not registered; decorate it with "
            "@pyfork.register above pyfork.init()"
        )
    # Imported here: every fork calls this, and the import statement
    # costs more than the lookup.
    from ._errors import NotRegisteredError

    raise NotRegisteredError(message)


_initialized = False
_depth = 0
# The marker value, read and removed from the environment when pyfork is
# first imported, so that code above init() cannot pass it on to other
# programs; None in a process that pyfork did not start.
_marker_value: str | None = None
# The fd, token and (st_dev, st_ino) of the result file, once adopted,
# and the pid that may write it: a copy made by os.fork() may not.
_result_file: tuple[int, bytes, tuple[int, int]] | None = None
_dispatch_pid = 0
_function_name = ""


def is_child() -> bool:
    """Return True in a process that pyfork started."""
    return _marker_value is not None


def depth() -> int:
    """Return how many pyfork parents this process has."""
    return _depth


def check_can_fork() -> None:
    """Raise PyforkError unless this process may call ``fork()``."""
    if _initialized:
        return
    if _marker_value is not None:
        message = (
            "fork() was called in a child that has not reached "
            "pyfork.init(); the child would start the program once more. "
            "Call pyfork.init() before any code that forks"
        )
    else:
        message = (
            "call pyfork.init() before pyfork.fork(): in the child, "
            "init() is what runs the function"
        )
    from ._errors import PyforkError

    raise PyforkError(message)


def init() -> None:
    """Run the requested function and exit in a child. Return in a parent.

    Call it early in the program, after every ``register()`` and before
    any code that must not run again in the child. Later calls do nothing.
    In a child it must run in the main thread. In a parent it loads the
    parent-side modules, so that no fork() has to import them, which
    would fail once the process has no fd left.
    """
    global _initialized
    if _initialized:
        return
    _initialized = True
    if _marker_value is not None:
        _dispatch()
    from . import _fork  # noqa: F401


def _report(message: str) -> None:
    sys.stderr.write(f"pyfork: child {os.getpid()}: {message}\n")


def _fail_start(message: str) -> "NoReturn":
    _report(message)
    _write_record((RECORD_START_FAILED, message))
    _flush_stdio()
    os._exit(EXIT_START_FAILED)


def _write_record(record: "tuple[Any, ...]") -> Exception | None:
    """Replace the contents of the result file with ``record``.

    Writes only from the dispatching process, and only while the fd still
    refers to the adopted file: the function may have closed it and
    opened another file at the same number. A file that cannot be written
    is reported on stderr. Returns the error when the record cannot be
    pickled, else None.
    """
    if _result_file is None or os.getpid() != _dispatch_pid:
        return None
    from ._backend import backend

    fd, token, identity = _result_file
    try:
        info = os.fstat(fd)
    except OSError:
        info = None
    if info is None or (info.st_dev, info.st_ino) != identity:
        _report(f"the result file at fd {fd} was closed; no result is sent")
        return None
    try:
        encoding, body = encode_body(record)
    except Exception as error:
        return error
    try:
        backend.write_record(fd, token, encoding, body)
    except OSError as error:
        _report(f"cannot write the result file: {error.strerror}")
    return None


def _adopt_result_file(fd: int | None, token: bytes) -> None:
    """Adopt the inherited result file after checking that it is pyfork's.

    The parent writes an empty record with the token when it creates the
    file, so a number that names another file, such as an fd inherited
    with a leaked marker, is never written to.
    """
    global _result_file
    if fd is None:
        return
    from ._backend import backend

    try:
        info = os.fstat(fd)
        if info.st_nlink != 0:
            raise PayloadError("is a file with a name")
        backend.read_record(fd, token)
        os.set_inheritable(fd, False)
    except (OSError, PayloadError) as error:
        _report(f"result descriptor {fd} is not usable: {error}")
        return
    _result_file = (fd, token, (info.st_dev, info.st_ino))


def _read_request() -> (
    "tuple[str, tuple[Any, ...], dict[str, Any], str, int, list[str]]"
):
    from ._backend import backend

    assert _marker_value is not None
    try:
        marker = parse_marker(_marker_value)
    except PayloadError as error:
        _fail_start(f"invalid marker: {error}")
    try:
        encoding, body = backend.read_payload(marker)
    except (PayloadError, OSError) as error:
        _fail_start(f"cannot read the payload: {error}")
    _adopt_result_file(marker.result_fd, marker.token)

    try:
        request = decode_body(encoding, body)
    except Exception as error:
        _fail_start(
            f"cannot decode the arguments: {type(error).__name__}: {error}"
        )
    finally:
        del body  # a mapped body is unmapped with its last reference
    if not (
        type(request) is tuple
        and len(request) == 6
        and type(request[0]) is str
        and type(request[1]) is tuple
        and type(request[2]) is dict
        and type(request[3]) is str
        and type(request[4]) is int
        and type(request[5]) is list
    ):
        _fail_start("the payload does not hold a pyfork request")
    return request


def _dispatch() -> "NoReturn":
    """Run the function of this child and exit; nothing escapes init()."""
    global _dispatch_pid
    _dispatch_pid = os.getpid()
    try:
        _run_request()
    except BaseException as error:  # a bug in pyfork or a failing hook
        _report(f"internal error: {type(error).__name__}: {error}")
        _flush_stdio()
        os._exit(EXIT_START_FAILED)


def _in_main_thread() -> bool:
    """Return whether this is the main thread, without importing threading.

    Importing threading costs milliseconds on every fork, and a program
    that never imported it has started no other thread through it.
    """
    threading = sys.modules.get("threading")
    if threading is None:
        return True
    main: bool = threading.current_thread() is threading.main_thread()
    return main


def _run_request() -> "NoReturn":
    global _depth, _function_name
    if not _in_main_thread():
        _fail_start("pyfork.init() must be called from the main thread")
    name, args, kwargs, cwd, request_depth, argv = _read_request()
    function = _functions.get(name)
    if function is None:
        _fail_start(
            f"no function is registered as {name!r}; register it above "
            "the call to pyfork.init()"
        )
    try:
        os.chdir(cwd)
    except OSError as error:
        _fail_start(f"cannot change to the working directory: {error}")
    _depth = request_depth
    sys.argv[:] = argv  # the parent's, where argv[0] may be relative
    _function_name = repr(name)
    _write_record((RECORD_STARTED,))
    _finish(_call(function, args, kwargs))


def _call(
    function: "Callable[..., Any]",
    args: "tuple[Any, ...]",
    kwargs: "dict[str, Any]",
) -> int:
    """Run the function, record its outcome, and return the exit code."""
    try:
        value = function(*args, **kwargs)
    except SystemExit as exit_request:
        code = _system_exit_code(exit_request)
        _write_record((RECORD_EXITED, code))
        return code
    except KeyboardInterrupt:
        _exit_by_sigint()
    except BaseException as error:
        # Start the traceback at the function, as if it were the program.
        # A builtin function has no frame, so nothing is left then.
        traceback = error.__traceback__
        if traceback is not None:
            traceback = traceback.tb_next
        # The default hook prints the exception's own traceback, not its
        # argument, so the exception gets the shortened one.
        error.__traceback__ = traceback
        sys.excepthook(type(error), error, traceback)
        _write_record(_raised_record(error, traceback))
        return 1
    pickle_error = _write_record((RECORD_RETURNED, value))
    if pickle_error is None:
        return 0
    # A value that cannot be pickled is the function's failure.
    message = (
        f"cannot pickle the return value of {_function_name}: {pickle_error}"
    )
    _report(message)
    traceback = pickle_error.__traceback__
    _write_record(_raised_record(pickle_error, traceback, message))
    return 1


def _raised_record(
    error: BaseException,
    traceback: "TracebackType | None",
    message: str | None = None,
) -> "tuple[Any, ...]":
    """Describe an exception for the parent, with the exception pickled.

    ``message`` replaces ``str(error)`` in the description.
    """
    import traceback as traceback_module

    kind = type(error)
    type_name = kind.__qualname__
    if kind.__module__ != "builtins":
        type_name = f"{kind.__module__}.{type_name}"
    if message is None:
        try:
            message = str(error)
        except Exception:
            message = f"<str() of {type_name} failed>"
    text = "".join(traceback_module.format_exception(kind, error, traceback))
    try:
        from _pickle import dumps

        pickled: bytes | None = dumps(error, -1)
    except Exception:
        pickled = None  # the parent still gets the type, message and text
    return (RECORD_RAISED, type_name, message, text, pickled)


def _system_exit_code(exit_request: SystemExit) -> int:
    """Return the exit code for SystemExit, as the interpreter does."""
    code = exit_request.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def _flush_stdio() -> bool:
    """Flush stdout and stderr. Return False when stdout failed."""
    stdout_ok = True
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            stdout_ok = stdout_ok and stream is not sys.stdout
    return stdout_ok


def _shut_down() -> None:
    """Run what interpreter shutdown runs that users rely on.

    threading._shutdown() is what Py_FinalizeEx() calls: it runs the hooks
    that concurrent.futures registers to stop its workers, then joins the
    non-daemon threads. atexit functions run after it, as at a normal exit.
    """
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    import atexit

    atexit._run_exitfuncs()


def _finish(code: int) -> "NoReturn":
    """Exit the child with ``code``, skipping interpreter finalization.

    Non-daemon threads are joined and atexit functions run, as at a normal
    exit. Tearing down every module would cost about 1.5 ms more.
    """
    _shut_down()
    if not _flush_stdio() and code == 0:
        code = _EXIT_FLUSH_FAILED
    os._exit(code & 0xFF)


def _exit_by_sigint() -> "NoReturn":
    """Exit as killed by SIGINT, without a traceback.

    The parent got the same Ctrl-C and reports it, so the child stays
    quiet, like a shell command that SIGINT stops.
    """
    import atexit
    import signal

    atexit._run_exitfuncs()
    _flush_stdio()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    os._exit(128 + signal.SIGINT)  # pragma: no cover - SIGINT was fatal


def _exit_without_init() -> None:
    """Exit with EXIT_NO_INIT when the child never reached ``init()``."""
    if _initialized:
        return
    sys.stderr.write(
        f"pyfork: child {os.getpid()}: the program exited without calling "
        "pyfork.init(); call it at start-up, before any code that must not "
        "run in the child\n"
    )
    _flush_stdio()
    os._exit(EXIT_NO_INIT)


if MARKER in os.environ:
    from ._backend import backend as _backend

    try:
        _marker_value = _backend.take_marker()
    except OSError as _error:
        _report(f"cannot read {MARKER}: {_error}")
        os._exit(EXIT_START_FAILED)
    import atexit

    atexit.register(_exit_without_init)
