"""The ``python`` backend: the protocol with the standard library only.

It speaks the same protocol as the ``c`` backend, and every public
function has the signature of its counterpart in ``_cbackend``.
Children import this module before their function runs, so annotations
that need typing are strings instead of a ``from __future__`` import.
"""

import errno
import os

from ._child import MARKER
from ._protocol import (
    CHECK_LINKS,
    CHECK_MESSAGES,
    CHECK_MODE,
    CHECK_NOT_REGULAR,
    CHECK_OWNER,
    CHECK_SIZE,
    ENCODING_PICKLE,
    HEADER_SIZE,
    LARGE_BODY,
    Marker,
    PayloadError,
    Started,
    build_header,
    check_header,
    format_marker,
    map_body,
    open_body,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, BinaryIO

_NO_FALLBACK_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def _move_above_stdio(fd: int) -> int:
    """Move a new fd to 3 or above, where the child's stdio cannot be.

    With 0, 1 or 2 closed in the parent, a new file lands there.
    """
    if fd > 2:
        return fd
    import fcntl

    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def _make_named_file(directory: str) -> tuple[int, str]:
    import tempfile

    # mkstemp() opens with O_EXCL and O_NOFOLLOW, mode 0600, and os.open()
    # sets close-on-exec.
    fd, path = tempfile.mkstemp(prefix="pyfork-", dir=directory)
    try:
        return _move_above_stdio(fd), path
    except OSError:
        os.unlink(path)
        raise


def _write_all(fd: int, buffers: list[bytes]) -> None:
    views = [memoryview(buffer) for buffer in buffers]
    offset = 0
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][written:]


def create_anonymous_file() -> int:
    """Create an empty anonymous file and return its close-on-exec fd.

    Raises OSError with the fallback directory as filename.
    """
    try:
        return _move_above_stdio(os.memfd_create("pyfork", os.MFD_CLOEXEC))
    except OSError as error:
        if error.errno in _NO_FALLBACK_ERRNOS:
            raise
    import tempfile

    directory = tempfile.gettempdir()
    try:
        fd, path = _make_named_file(directory)
        os.unlink(path)
    except OSError as error:
        error.filename = directory
        raise
    return fd


def write_record(fd: int, token: bytes, encoding: int, body: bytes) -> None:
    """Replace the contents of ``fd`` with a header and ``body``."""
    header = build_header(token, encoding, len(body))
    _write_all(fd, [header, body])
    os.ftruncate(fd, len(header) + len(body))


def write_header(fd: int, token: bytes, encoding: int, body_size: int) -> None:
    """Write the header of a body that is already in place. Raises OSError."""
    header = build_header(token, encoding, body_size)
    written = os.pwrite(fd, header, 0)
    if written != len(header):
        raise OSError(errno.EIO, "short write of the payload header")


def read_record(
    fd: int, token: bytes
) -> tuple[int, bytearray | memoryview] | None:
    """Read the record that a child wrote to its result file.

    Returns None when the file contains no record yet: it is empty, or has
    the empty record that the parent writes first. Raises PayloadError.
    """
    if os.fstat(fd).st_size == 0:
        return None
    try:
        encoding, body_size = _check_payload(
            fd, False, token, "result file", None
        )
        if body_size == 0:
            return None
        return encoding, _read_body(fd, False, body_size, "result file")
    except OSError as error:
        message = f"cannot read result file: {error.strerror}"
        raise PayloadError(message) from None


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
        try:
            fd, path = _make_named_file(directory)
        except OSError as error:
            error.filename = directory
            raise

    try:
        header = build_header(token, encoding, len(body))
        _write_all(fd, [header, body])
    except OSError as error:
        os.close(fd)
        if path is not None:
            os.unlink(path)
        error.filename = path or directory
        raise
    return fd, path


def remove_payload(path: str) -> None:
    """Remove a named payload file. Raises OSError."""
    os.unlink(path)


def _inheritable_fds(keep_fds: "Sequence[int]") -> list[int]:
    """Return the inheritable fds above 2 that are not in ``keep_fds``.

    Fds at or above the fd limit are left out, since posix_spawn() rejects
    close actions for them; such an fd reaches the child.
    """
    open_max = os.sysconf("SC_OPEN_MAX")
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < 3 or fd in keep_fds or fd >= open_max > 0:
            continue
        try:
            if os.get_inheritable(fd):
                found.append(fd)
        except OSError:
            continue  # the descriptor of the listing, closed by now
    return found


def _spawn(
    executable: str,
    argv: "Sequence[str]",
    marker: str,
    env: "Mapping[str, str] | None",
    keep_fds: "Sequence[int]",
    *,
    stdio: "Sequence[int]" = (-1, -1, -1),
    cwd: str | None = None,
    setsid: bool = False,
    pgroup: int | None = None,
) -> int:
    """Start the child and return its pid. Raises OSError.

    ``stdio`` contains the fds that become the child's 0, 1 and 2, or -1 to
    keep the parent's; none of them may be below 3. ``cwd`` is where the
    child starts. ``setsid`` starts a new session; ``pgroup`` is the
    process group to join, 0 for a new one, or None for the parent's.
    """
    import signal

    if cwd is not None:
        # os.posix_spawn() has no action that changes directory.
        from ._reexec import wrap_chdir

        executable, argv = wrap_chdir(executable, argv, cwd)
    child_env = dict(os.environ if env is None else env)
    child_env[MARKER] = marker
    actions: list[tuple[int, ...]] = [
        (os.POSIX_SPAWN_DUP2, source, target)
        for target, source in enumerate(stdio)
        if source >= 0
    ]
    actions.extend((os.POSIX_SPAWN_DUP2, fd, fd) for fd in keep_fds)
    actions.extend(
        (os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds(keep_fds)
    )
    options: dict[str, Any] = {}
    if pgroup is not None:
        options["setpgroup"] = pgroup
    try:
        return os.posix_spawn(
            executable,
            list(argv),
            child_env,
            file_actions=actions,
            setsigmask=(),
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            setsid=setsid,
            **options,
        )
    except OSError as error:
        error.filename = executable
        raise


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
    The other arguments are those of _spawn(). Raises FileCreationError
    when a file cannot be created or written, and OSError when the child
    cannot be started. No fd that this created is left open then.
    """
    result_fd = _create_written("result", token, 0, b"")
    own_payload = payload_fd < 0
    try:
        if own_payload:
            encoding, data = (0, b"") if body is None else body
            payload_fd = _create_written("payload", token, encoding, data)
        if payload_path is None:
            marker = format_marker(token, payload_fd, None, result_fd)
            keep_fds = (result_fd, payload_fd, *pass_fds)
        else:
            marker = format_marker(token, None, payload_path, result_fd)
            keep_fds = (result_fd, *pass_fds)
        # NOTE: KeyboardInterrupt that arrives as os.posix_spawn() returns
        # drops the pid, so pyfork never reaps that child. The c backend
        # receives the pid in a struct and keeps it.
        started.pid = _spawn(
            executable,
            argv,
            marker,
            env,
            keep_fds,
            stdio=stdio,
            cwd=cwd,
            setsid=setsid,
            pgroup=pgroup,
        )
        started.result_fd = result_fd
    except BaseException:
        if started.pid < 0:
            os.close(result_fd)
        else:  # interrupted after the spawn: the caller owns both now
            started.result_fd = result_fd
        raise
    finally:
        if own_payload and payload_fd >= 0:
            os.close(payload_fd)  # the child has its own copy now


def _create_written(
    kind: str, token: bytes, encoding: int, body: bytes
) -> int:
    """Create an anonymous file that contains a header and ``body``.
    Raises FileCreationError with ``kind``."""
    try:
        fd, _ = create_payload(token, encoding, body, None)
    except OSError as error:
        from ._errors import FileCreationError

        raise FileCreationError(
            kind, error.errno, error.strerror, error.filename
        ) from error
    return fd


def take_marker() -> str | None:
    """Read and remove the marker variable. Return None when it is unset."""
    return os.environ.pop(MARKER, None)


def _read_at(fd: int, size: int, offset: int, source: str) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            raise PayloadError(f"{source} {CHECK_MESSAGES[CHECK_SIZE]}")
        done += count
    return buffer


def _check_file(fd: int, named: bool, source: str) -> int:
    """Check the file behind ``fd`` and return its size."""
    import stat

    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = CHECK_NOT_REGULAR
    elif info.st_uid != os.geteuid():
        problem = CHECK_OWNER
    elif named and info.st_mode & 0o077:
        problem = CHECK_MODE
    elif named and info.st_nlink != 1:
        problem = CHECK_LINKS
    if problem is not None:
        raise PayloadError(f"{source} {CHECK_MESSAGES[problem]}")
    return info.st_size


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
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(marker.path, flags)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise PayloadError(f"{source} is a symbolic link") from None
            message = f"cannot open {source}: {error.strerror}"
            raise PayloadError(message) from None
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
    except OSError as error:
        message = f"cannot read {source}: {error.strerror}"
        raise PayloadError(message) from None
    finally:
        if body_file is None:
            _close_quietly(fd)


def _check_payload(
    fd: int, named: bool, token: bytes, source: str, path: str | None
) -> tuple[int, int]:
    """Check the file behind ``fd`` and unlink ``path``.

    Returns the body encoding and size. Raises PayloadError and OSError.
    """
    size = _check_file(fd, named, source)
    header = _read_at(fd, min(size, HEADER_SIZE), 0, source)
    try:
        encoding = check_header(header, token, size)
    except PayloadError as error:
        raise PayloadError(f"{source} {error}") from None
    if path is not None:
        try:
            os.unlink(path)
        except OSError as error:
            message = f"cannot remove {source}: {error.strerror}"
            raise PayloadError(message) from None
    return encoding, size - HEADER_SIZE


def _read_body(
    fd: int, named: bool, body_size: int, source: str
) -> bytearray | memoryview:
    """Read the body of a checked file, or map it when the file is
    anonymous and the body large."""
    if not named and body_size >= LARGE_BODY:
        return map_body(fd, body_size)
    return _read_at(fd, body_size, HEADER_SIZE, source)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # an invalid inherited fd: the check above reported it
