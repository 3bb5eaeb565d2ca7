"""The child side: ``init()``, the dispatch to the function, and the exit.

Everything here runs on every fork before the function starts, so it
imports nothing that the interpreter has not loaded at start-up.
"""

from __future__ import annotations

import os
import sys

from . import _registry
from ._errors import PyforkError
from ._protocol import (
    EXIT_NO_INIT,
    EXIT_START_FAILED,
    MARKER,
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
    from typing import Any, NoReturn

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

_initialized = False
_started_by_pyfork = MARKER in os.environ
_depth = 0
# The fd and token of the result file, once the marker is read.
_result_file: tuple[int, bytes] | None = None


def is_child() -> bool:
    """Return True in a process that pyfork started."""
    return _started_by_pyfork


def depth() -> int:
    """Return how many pyfork parents this process has."""
    return _depth


def check_can_fork() -> None:
    """Raise PyforkError unless this process may call ``fork()``."""
    if _initialized:
        return
    if MARKER in os.environ:
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
    raise PyforkError(message)


def init() -> None:
    """Run the requested function and exit in a child. Return in a parent.

    Call it early in the program, after every ``register()`` and before
    any code that must not run again in the child. Later calls do nothing.
    """
    global _initialized
    if _initialized:
        return
    _initialized = True
    if MARKER in os.environ:
        _dispatch()


def _report(message: str) -> None:
    sys.stderr.write(f"pyfork: child {os.getpid()}: {message}\n")


def _fail_start(message: str) -> NoReturn:
    _report(message)
    _write_record((RECORD_START_FAILED, message))
    _flush_stdio()
    os._exit(EXIT_START_FAILED)


def _write_record(record: tuple[Any, ...]) -> bool:
    """Replace the contents of the result file with ``record``.

    Returns False, after a message on stderr, when it cannot be written.
    """
    if _result_file is None:
        return True
    from ._backend import backend

    fd, token = _result_file
    try:
        encoding, body = encode_body(record)
    except Exception as error:
        _report(f"cannot pickle the result: {type(error).__name__}: {error}")
        return False
    try:
        backend.write_record(fd, token, encoding, body)
    except OSError as error:
        _report(f"cannot write the result file: {error.strerror}")
        return False
    return True


def _open_result_file(fd: int | None, token: bytes) -> None:
    """Adopt the inherited result file, hidden from the child's children."""
    global _result_file
    if fd is None:
        return
    try:
        os.set_inheritable(fd, False)
    except OSError as error:
        _report(f"result descriptor {fd} is unusable: {error.strerror}")
        return
    _result_file = (fd, token)


def _read_request() -> tuple[
    str, tuple[Any, ...], dict[str, Any], str, int, list[str]
]:
    from ._backend import backend

    try:
        value = backend.take_marker()
        if value is None:
            raise PayloadError(f"{MARKER} disappeared before init()")
        marker = parse_marker(value)
    except (PayloadError, OSError) as error:
        _fail_start(f"invalid marker: {error}")
    _open_result_file(marker.result_fd, marker.token)
    try:
        encoding, body = backend.read_payload(marker)
    except (PayloadError, OSError) as error:
        _fail_start(f"cannot read the payload: {error}")

    try:
        request = decode_body(encoding, body)
    except Exception as error:
        _fail_start(
            f"cannot decode the arguments: {type(error).__name__}: {error}"
        )
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


def _dispatch() -> NoReturn:
    global _depth, _started_by_pyfork
    _started_by_pyfork = True
    name, args, kwargs, cwd, request_depth, argv = _read_request()
    function = _registry.get(name)
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
    _write_record((RECORD_STARTED,))
    _finish(_call(function, args, kwargs))


def _call(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
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
        traceback = error.__traceback__
        if traceback is not None and traceback.tb_next is not None:
            traceback = traceback.tb_next
        # The default hook prints the exception's own traceback, not its
        # argument, so the exception gets the shortened one.
        error.__traceback__ = traceback
        sys.excepthook(type(error), error, traceback)
        _write_record(_raised_record(error, traceback))
        return 1
    if _write_record((RECORD_RETURNED, value)):
        return 0
    # The value cannot be pickled: report that as the function's failure.
    try:
        encode_body((value,))
    except Exception as error:
        _write_record(_raised_record(error, error.__traceback__))
    return 1


def _raised_record(
    error: BaseException, traceback: TracebackType | None
) -> tuple[Any, ...]:
    """Describe an exception for the parent, with the exception pickled."""
    import traceback as traceback_module

    kind = type(error)
    type_name = kind.__qualname__
    if kind.__module__ != "builtins":
        type_name = f"{kind.__module__}.{type_name}"
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
    """Run what interpreter shutdown runs that users rely on."""
    threading = sys.modules.get("threading")
    if threading is not None:
        current = threading.current_thread()
        for thread in threading.enumerate():
            if thread is not current and not thread.daemon:
                thread.join()
    import atexit

    atexit._run_exitfuncs()


def _finish(code: int) -> NoReturn:
    """Exit the child with ``code``, skipping interpreter finalization.

    Non-daemon threads are joined and atexit functions run, as at a normal
    exit. Tearing down every module would cost about 1.5 ms more.
    """
    _shut_down()
    if not _flush_stdio() and code == 0:
        code = _EXIT_FLUSH_FAILED
    os._exit(code & 0xFF)


def _exit_by_sigint() -> NoReturn:
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


if _started_by_pyfork:
    import atexit

    atexit.register(_exit_without_init)
