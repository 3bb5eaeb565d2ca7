"""The ``c`` backend: the protocol on top of the compiled core.

This is the only module that imports ``pyfork._core``, so cffi's untyped
values stay here. Every public function has the signature of its
counterpart in ``_pybackend``.
Children import this module before their function runs, so annotations
that need typing are strings instead of a ``from __future__`` import.
"""

import errno
import os

from . import _core
from ._child import MARKER
from ._protocol import (
    CHECK_MESSAGES,
    ENCODING_PICKLE,
    HEADER_SIZE,
    LARGE_BODY,
    Marker,
    PayloadError,
    Started,
    map_body,
    open_body,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, BinaryIO

ffi: "Any" = _core.ffi
lib: "Any" = _core.lib

CORE_VERSION: str = ffi.string(lib.pyfork_core_version()).decode()

_MARKER_NAME = MARKER.encode()
_MARKER_NAME_BUFFER = ffi.new("char[]", _MARKER_NAME)
# Fits a path of PATH_MAX (4096 on Linux) bytes, and a marker with one.
_BUFFER_SIZE = 4096 + 64
# Payload fds that memfd cannot replace: the process is out of resources.
_NO_FALLBACK_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def _raise_errno(filename: str | None = None) -> None:
    err = ffi.errno
    raise OSError(err, os.strerror(err), filename)


def _cstring_array(items: "Sequence[bytes]") -> "tuple[Any, list[Any]]":
    """Return a NULL-terminated ``char *[]`` and the buffers it points to."""
    buffers = [ffi.new("char[]", item) for item in items]
    return ffi.new("char *[]", [*buffers, ffi.NULL]), buffers


# The temporary directory as a C string, once creating a memfd has failed
# in this process, or NULL. The core still tries memfd first on every
# call and uses the directory when that fails. Once set, it is never
# replaced, so a call that uses it may run while other threads set it.
_fallback_dir: "Any" = ffi.NULL


def _enable_fallback_dir(used: "Any", err: int) -> bool:
    """Set the fallback directory after creating a memfd failed with
    ``err`` in a call that passed ``used``.

    Returns True when a retry can help: the directory is set now, or
    another thread set it during the call. Raises OSError when there is
    no usable temporary directory.
    """
    global _fallback_dir
    if _fallback_dir != used:
        return True
    if used != ffi.NULL or err in _NO_FALLBACK_ERRNOS:
        return False
    import tempfile

    directory = ffi.new("char[]", os.fsencode(tempfile.gettempdir()))
    if _fallback_dir == ffi.NULL:  # no other thread was first
        _fallback_dir = directory
    return True


def _directory_name(directory: "Any") -> str | None:
    if directory == ffi.NULL:
        return None
    return os.fsdecode(ffi.string(directory))


def create_anonymous_file() -> int:
    """Create an empty anonymous file and return its close-on-exec fd.

    Raises OSError with the fallback directory as filename.
    """
    while True:
        fallback = _fallback_dir  # kept alive until the call returns
        fd = lib.pyfork_payload_create_anonymous(fallback)
        if fd >= 0:
            return int(fd)
        err = ffi.errno
        if not _enable_fallback_dir(fallback, err):
            raise OSError(err, os.strerror(err), _directory_name(fallback))


def write_record(fd: int, token: bytes, encoding: int, body: bytes) -> None:
    """Replace the contents of ``fd`` with a header and ``body``."""
    if lib.pyfork_payload_write(fd, token, encoding, body, len(body)) != 0:
        _raise_errno()


def write_header(fd: int, token: bytes, encoding: int, body_size: int) -> None:
    """Write the header of a body that is already in place. Raises OSError."""
    if lib.pyfork_payload_write_header(fd, token, encoding, body_size) != 0:
        _raise_errno()


def read_record(
    fd: int, token: bytes
) -> tuple[int, bytearray | memoryview] | None:
    """Read the record that a child wrote to its result file.

    Returns None when the file contains no record yet: it is empty, or has
    the empty record that the parent writes first. Raises PayloadError.
    """
    if os.fstat(fd).st_size == 0:
        return None
    encoding, body_size = _check_payload(fd, False, token, "result file", None)
    if body_size == 0:
        return None
    return encoding, _read_body(fd, False, body_size, "result file")


def create_payload(
    token: bytes, encoding: int, body: bytes, directory: str | None
) -> tuple[int, str | None]:
    """Create a payload file, write the payload, and return (fd, path).

    With ``directory`` None the file is anonymous and the path is None.
    Raises OSError with the directory as filename. Nothing remains then.
    """
    path: str | None = None
    if directory is None:
        fd = create_anonymous_file()
    else:
        buffer = ffi.new("char[]", _BUFFER_SIZE)
        fd = lib.pyfork_payload_create_named(
            os.fsencode(directory), buffer, _BUFFER_SIZE
        )
        if fd < 0:
            _raise_errno(directory)
        path = os.fsdecode(ffi.string(buffer))

    if lib.pyfork_payload_write(fd, token, encoding, body, len(body)) != 0:
        err = ffi.errno
        os.close(fd)
        if path is not None:
            lib.pyfork_unlink(os.fsencode(path))
        raise OSError(err, os.strerror(err), path or directory)
    return fd, path


def remove_payload(path: str) -> None:
    """Remove a named payload file. Raises OSError."""
    if lib.pyfork_unlink(os.fsencode(path)) != 0:
        _raise_errno(path)


# The C strings of recent commands: a program re-executes itself with the
# same executable and argv on every fork.
_commands: "dict[tuple[str, ...], tuple[Any, Any, list[Any]]]" = {}
_COMMAND_CACHE_SIZE = 8


def _command(
    executable: str, argv: "Sequence[str]"
) -> "tuple[Any, Any, list[Any]]":
    """Return ``executable`` as a C string, ``argv`` as a ``char *[]`` and
    the buffers that the array points to, reusing those of recent calls.

    The caller keeps the whole tuple until the C call returns, since
    another thread may clear the cache.
    """
    key = (executable, *argv)
    cached = _commands.get(key)
    if cached is None:
        if len(_commands) >= _COMMAND_CACHE_SIZE:
            _commands.clear()
        array, buffers = _cstring_array([os.fsencode(arg) for arg in argv])
        path = ffi.new("char[]", os.fsencode(executable))
        cached = (path, array, buffers)
        _commands[key] = cached
    return cached


def _environment_array(env: "Mapping[str, str]") -> "tuple[Any, list[Any]]":
    """Return ``env`` as a ``char *[]`` of NAME=VALUE, and its buffers."""
    return _cstring_array(
        [
            os.fsencode(key) + b"=" + os.fsencode(value)
            for key, value in env.items()
        ]
    )


# The options of a child with nothing but the defaults, which most forks
# use. The core only reads them, so threads can share them.
_default_options: "tuple[Any, list[Any]] | None" = None


def _spawn_options(
    keep_fds: "Sequence[int]",
    stdio: "Sequence[int]",
    cwd: str | None,
    setsid: bool,
    pgroup: int | None,
) -> "tuple[Any, list[Any]]":
    """Return a ``struct pyfork_spawn_options *`` and the buffers it
    points to."""
    global _default_options
    default = (
        not keep_fds
        and cwd is None
        and not setsid
        and pgroup is None
        and tuple(stdio) == (-1, -1, -1)
    )
    if default and _default_options is not None:
        return _default_options

    flags = lib.PYFORK_SPAWN_SETSID if setsid else 0
    if pgroup is not None:
        flags |= lib.PYFORK_SPAWN_SETPGROUP
    keep = ffi.new("int[]", list(keep_fds)) if keep_fds else ffi.NULL
    cwd_buffer = (
        ffi.NULL if cwd is None else ffi.new("char[]", os.fsencode(cwd))
    )
    options = ffi.new(
        "struct pyfork_spawn_options *",
        {
            "keep_fds": keep,
            "n_keep_fds": len(keep_fds),
            "stdio": list(stdio),
            "cwd": cwd_buffer,
            "flags": flags,
            "pgroup": pgroup or 0,
        },
    )
    if default:
        _default_options = (options, [keep, cwd_buffer])
    return options, [keep, cwd_buffer]


def start(
    executable: str,
    argv: "Sequence[str]",
    env: "Mapping[str, str] | None",
    token: bytes,
    started: Started,
    *,
    body: "tuple[int, bytes] | None" = None,
    payload_fd: int = -1,
    payload_path: str | None = None,
    pass_fds: "Sequence[int]" = (),
    stdio: "Sequence[int]" = (-1, -1, -1),
    cwd: str | None = None,
    setsid: bool = False,
    pgroup: int | None = None,
) -> None:
    """Create the result file and start a child, and store its pid and
    result fd in ``started`` as soon as the child exists.

    The payload is ``body``, (encoding, body) for a new anonymous file that
    is closed again once the child has it, or the file at ``payload_fd``
    that the caller created, named ``payload_path`` when it has a name.
    ``env`` replaces the environment when not None, and the child keeps
    ``pass_fds``. ``stdio`` contains the fds that become the child's 0, 1
    and 2, or -1 to keep the parent's; none of them may be below 3.
    ``cwd`` is where the child starts. ``setsid`` starts a new session;
    ``pgroup`` is the process group to join, 0 for a new one, or None for
    the parent's. Raises FileCreationError
    when a file cannot be created or written, and OSError when the child
    cannot be started. No fd that this created is left open then.
    """
    encoding, data = (0, b"") if body is None else body
    # Every buffer that the request points to has a name here, so that it
    # outlives the call.
    executable_buffer, argv_array, _argv_buffers = _command(executable, argv)
    token_buffer = ffi.from_buffer("unsigned char[]", token)
    body_buffer = ffi.from_buffer(data)
    env_array, _env_buffers = (
        (ffi.NULL, None) if env is None else _environment_array(env)
    )
    path_buffer = (
        ffi.NULL
        if payload_path is None
        else ffi.new("char[]", os.fsencode(payload_path))
    )
    request = ffi.new(
        "struct pyfork_start_request *",
        {
            "executable": executable_buffer,
            "argv": argv_array,
            "env": env_array,
            "marker_name": _MARKER_NAME_BUFFER,
            "token": token_buffer,
            "payload_fd": payload_fd,
            "payload_path": path_buffer,
            "encoding": encoding,
            "body": body_buffer,
            "body_size": len(data),
        },
    )
    options, _option_buffers = _spawn_options(
        pass_fds, stdio, cwd, setsid, pgroup
    )
    result = ffi.new("struct pyfork_started *")
    while True:
        fallback = _fallback_dir  # kept alive until the call returns
        request.fallback_dir = fallback
        try:
            status = lib.pyfork_start_locked(request, options, result)
        finally:
            # Stored before anything else runs, since KeyboardInterrupt
            # can arrive right after the call, with the child started.
            started.pid = result.pid
            started.result_fd = result.result_fd
        if status == 0:
            return
        err = ffi.errno
        step = result.failed_step
        if step == lib.PYFORK_START_SPAWN:
            break
        _check_file_step(step, fallback, err)
    if err == errno.ENOSYS and cwd is not None:
        # glibc before 2.29 cannot change directory in posix_spawn().
        from ._reexec import wrap_chdir

        shell, shell_argv = wrap_chdir(executable, argv, cwd)
        start(
            shell,
            shell_argv,
            env,
            token,
            started,
            body=body,
            payload_fd=payload_fd,
            payload_path=payload_path,
            pass_fds=pass_fds,
            stdio=stdio,
            setsid=setsid,
            pgroup=pgroup,
        )
        return
    raise OSError(err, os.strerror(err), executable)


_FILE_KINDS = {
    lib.PYFORK_START_RESULT_FILE: "result",
    lib.PYFORK_START_RESULT_WRITE: "result",
    lib.PYFORK_START_PAYLOAD_FILE: "payload",
    lib.PYFORK_START_PAYLOAD_WRITE: "payload",
}


def _check_file_step(step: int, fallback: "Any", err: int) -> None:
    """Return when a start whose ``step`` failed with ``err`` may be retried
    with the fallback directory, else raise FileCreationError.

    Only a failure to create a file can be retried. A file that could not
    be written is reported without a directory, as a file in memory.
    """
    from ._errors import FileCreationError

    kind = _FILE_KINDS[step]
    if step in (lib.PYFORK_START_RESULT_WRITE, lib.PYFORK_START_PAYLOAD_WRITE):
        raise FileCreationError(kind, err, os.strerror(err), None)
    try:
        if _enable_fallback_dir(fallback, err):
            return
    except OSError as error:  # no usable temporary directory
        raise FileCreationError(
            kind, error.errno, error.strerror, None
        ) from error
    raise FileCreationError(
        kind, err, os.strerror(err), _directory_name(fallback)
    )


def take_marker() -> str | None:
    """Read and remove the marker variable in one step.

    Returns its value, or None when it is not set. ``os.environ`` is
    updated to match.
    """
    buffer = ffi.new("char[]", _BUFFER_SIZE)
    size = lib.pyfork_env_take_locked(_MARKER_NAME, buffer, _BUFFER_SIZE)
    err = ffi.errno
    os.environ.pop(MARKER, None)
    if size < 0:
        if err == errno.ENOENT:
            return None
        raise OSError(err, os.strerror(err), MARKER)
    return os.fsdecode(ffi.buffer(buffer, size)[:])


def read_payload(
    marker: Marker,
) -> "tuple[int, bytearray | memoryview | BinaryIO]":
    """Open, check and read the payload. Return its encoding and body.

    A named file is unlinked once it passes the checks, before the body
    is read. A large pickle body is returned as an open file from
    open_body(), which takes over the descriptor, and decode_body() reads
    and closes it. Raises PayloadError.
    """
    named = marker.path is not None
    if marker.path is not None:
        source = f"payload file {marker.path}"
        fd = lib.pyfork_payload_open_named(os.fsencode(marker.path))
        if fd < 0:
            err = ffi.errno
            if err == errno.ELOOP:
                raise PayloadError(f"{source} is a symbolic link")
            raise PayloadError(f"cannot open {source}: {os.strerror(err)}")
    else:
        assert marker.fd is not None
        source = f"payload descriptor {marker.fd}"
        fd = marker.fd

    body_file = None
    try:
        encoding, body_size = _check_payload(
            fd, named, marker.token, source, marker.path
        )
        if encoding == ENCODING_PICKLE and body_size >= LARGE_BODY:
            body_file = open_body(fd)
            return encoding, body_file
        return encoding, _read_body(fd, named, body_size, source)
    finally:
        if body_file is None:
            try:
                os.close(fd)
            except OSError:
                pass  # an invalid inherited fd: the check above reported it


def _check_payload(
    fd: int, named: bool, token: bytes, source: str, path: str | None
) -> tuple[int, int]:
    """Check the file behind ``fd`` and unlink ``path``.

    Returns the body encoding and size. Raises PayloadError.
    """
    info = ffi.new("struct pyfork_payload_info *")
    status = lib.pyfork_payload_check(fd, named, token, info)
    _check_status(status, source)
    if path is not None and lib.pyfork_unlink(os.fsencode(path)) != 0:
        err = ffi.errno
        raise PayloadError(f"cannot remove {source}: {os.strerror(err)}")
    return int(info.encoding), int(info.body_size)


def _read_body(
    fd: int, named: bool, body_size: int, source: str
) -> bytearray | memoryview:
    """Read the body of a checked file, or map it when the file is
    anonymous and the body large."""
    if not named and body_size >= LARGE_BODY:
        return map_body(fd, body_size)
    body = bytearray(body_size)
    status = lib.pyfork_read_at(
        fd, ffi.from_buffer(body), len(body), HEADER_SIZE
    )
    _check_status(status, source)
    return body


def _check_status(status: int, source: str) -> None:
    if status == -1:
        err = ffi.errno
        raise PayloadError(f"cannot read {source}: {os.strerror(err)}")
    if status != 0:
        raise PayloadError(f"{source} {CHECK_MESSAGES[status]}")
