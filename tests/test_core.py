"""The C functions of pyfork._core, called directly through cffi.

The tests run in pytest's own process, because these calls never
re-execute pytest: the children they spawn run /bin/sh, /bin/true or
/bin/sleep.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import open_fds

import pyfork
from pyfork import _protocol
from pyfork._core import ffi, lib

SH = b"/bin/sh"
BASE_ENV = (b"PATH=/usr/bin:/bin",)
TOKEN = bytes(range(16))
OTHER_TOKEN = bytes(range(1, 17))
BODY = b"the payload body"
# Fd numbers above those that pytest keeps open, so that a test controls
# the order of its fds.
LOW_FD = 200
MIDDLE_FD = 300
HIGH_FD = 400


@pytest.fixture
def opened_fds() -> Iterator[list[int]]:
    """A list of the fds that a test leaves open, which teardown closes."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def _cstring_array(items: Sequence[bytes]) -> tuple[Any, list[Any]]:
    """Return a NULL-terminated ``char *[]`` and the buffers it points to."""
    buffers = [ffi.new("char[]", item) for item in items]
    return ffi.new("char *[]", [*buffers, ffi.NULL]), buffers


def _block_entries(block: Any) -> list[bytes]:
    """Return the entries of a NULL-terminated ``char **`` block."""
    entries = []
    i = 0
    while block[i] != ffi.NULL:
        entries.append(ffi.string(block[i]))
        i += 1
    return entries


def _build_env(base: Sequence[bytes], name: bytes, entry: bytes) -> Any:
    """Return the entries of pyfork_env_build(), or None with errno set."""
    array, _buffers = _cstring_array(base)
    block = lib.pyfork_env_build(array, name, entry)
    if block == ffi.NULL:
        return None
    try:
        return _block_entries(block)
    finally:
        lib.pyfork_env_free(block)


def _process_environment() -> list[bytes]:
    """Return the C-level process environment, which os.environ may lag."""
    name = b"PYFORK_TEST_UNUSED"
    block = lib.pyfork_env_build_locked(ffi.NULL, name, name + b"=")
    assert block != ffi.NULL, os.strerror(ffi.errno)
    try:
        return _block_entries(block)[:-1]
    finally:
        lib.pyfork_env_free(block)


def _spawn_raw(
    argv: Sequence[bytes],
    *,
    env: Sequence[bytes] = BASE_ENV,
    keep_fds: Sequence[int] = (),
    stdio: Sequence[int] = (-1, -1, -1),
    cwd: bytes | None = None,
    flags: int = 0,
    pgroup: int = 0,
) -> tuple[int, int, int]:
    """Call pyfork_spawn() and return its status, errno and the pid."""
    pid = ffi.new("pid_t *")
    c_argv, _argv_buffers = _cstring_array(argv)
    c_env, _env_buffers = _cstring_array(env)
    keep = ffi.new("int[]", list(keep_fds))
    cwd_buffer = ffi.NULL if cwd is None else ffi.new("char[]", cwd)
    options = ffi.new(
        "struct pyfork_spawn_options *",
        {
            "keep_fds": keep,
            "n_keep_fds": len(keep_fds),
            "stdio": list(stdio),
            "cwd": cwd_buffer,
            "flags": flags,
            "pgroup": pgroup,
        },
    )
    status = lib.pyfork_spawn(pid, argv[0], c_argv, c_env, options)
    return status, ffi.errno, int(pid[0])


def _spawn(argv: Sequence[bytes], **kwargs: Any) -> int:
    """Start a child through pyfork_spawn() and return its pid."""
    status, err, pid = _spawn_raw(argv, **kwargs)
    assert status == 0, f"pyfork_spawn failed: {os.strerror(err)}"
    return pid


def _wait(pid: int) -> int:
    """Reap a child and return its exit code, or -N for signal N."""
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


def _run_sh(script: str, *args: str, **kwargs: Any) -> int:
    """Run ``sh -c script`` with ``args`` as $1... and return its exit code."""
    argv = [SH, b"-c", script.encode(), b"sh", *map(os.fsencode, args)]
    return _wait(_spawn(argv, **kwargs))


@contextlib.contextmanager
def _sleeping_child(**kwargs: Any) -> Iterator[int]:
    """Spawn /bin/sleep, yield its pid, then kill and reap it."""
    pid = _spawn([b"/bin/sleep", b"30"], **kwargs)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _proc_status_mask(pid: int | str, field: str) -> int:
    """Return a signal mask field, such as SigBlk, of /proc/PID/status."""
    text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    match = re.search(rf"^{field}:\s*([0-9a-f]+)$", text, re.MULTILINE)
    assert match is not None, text
    return int(match.group(1), 16)


def _signal_bit(signum: int) -> int:
    return 1 << (signum - 1)


def _move_fd(fd: int, minimum: int, *, cloexec: bool) -> int:
    """Move ``fd`` to the lowest free number >= ``minimum`` and return it."""
    command = fcntl.F_DUPFD_CLOEXEC if cloexec else fcntl.F_DUPFD
    moved = fcntl.fcntl(fd, command, minimum)
    os.close(fd)
    return moved


def _is_cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _create_named(directory: Path, size: int = 4096) -> tuple[int, str]:
    """Call pyfork_payload_create_named() and return (fd, path)."""
    buffer = ffi.new("char[]", size)
    fd = lib.pyfork_payload_create_named(os.fsencode(directory), buffer, size)
    assert fd >= 0, os.strerror(ffi.errno)
    return fd, os.fsdecode(ffi.string(buffer))


def _write_payload(fd: int, body: bytes = BODY, encoding: int = 1) -> None:
    status = lib.pyfork_payload_write(fd, TOKEN, encoding, body, len(body))
    assert status == 0, os.strerror(ffi.errno)


def _check(fd: int, named: int, token: bytes = TOKEN) -> int:
    """Call pyfork_payload_check() and return its result."""
    info = ffi.new("struct pyfork_payload_info *")
    return int(lib.pyfork_payload_check(fd, named, token, info))


# Version and constants


def test_core_version_matches_package() -> None:
    """pyfork_core_version() equals pyfork.__version__."""
    version = ffi.string(lib.pyfork_core_version()).decode()
    assert version == pyfork.__version__


@pytest.mark.parametrize(
    ("c_name", "python_value"),
    [
        ("PYFORK_TOKEN_SIZE", _protocol.TOKEN_SIZE),
        ("PYFORK_HEADER_SIZE", _protocol.HEADER_SIZE),
        ("PYFORK_PROTOCOL_VERSION", _protocol.PROTOCOL_VERSION),
        ("PYFORK_E_NOT_REGULAR", _protocol.CHECK_NOT_REGULAR),
        ("PYFORK_E_OWNER", _protocol.CHECK_OWNER),
        ("PYFORK_E_MODE", _protocol.CHECK_MODE),
        ("PYFORK_E_LINKS", _protocol.CHECK_LINKS),
        ("PYFORK_E_MAGIC", _protocol.CHECK_MAGIC),
        ("PYFORK_E_VERSION", _protocol.CHECK_VERSION),
        ("PYFORK_E_TOKEN", _protocol.CHECK_TOKEN),
        ("PYFORK_E_SIZE", _protocol.CHECK_SIZE),
    ],
)
def test_constant_matches_protocol(c_name: str, python_value: int) -> None:
    """Each constant of the C header equals its _protocol counterpart."""
    assert getattr(lib, c_name) == python_value


# pyfork_spawn


def test_spawn_missing_path_enoent(tmp_path: Path) -> None:
    """Spawning a path that does not exist fails with ENOENT."""
    missing = os.fsencode(tmp_path / "missing")
    status, err, _ = _spawn_raw([missing])
    assert status == -1
    assert err == errno.ENOENT


def test_spawn_not_executable_eacces(tmp_path: Path) -> None:
    """Spawning a file without execute permission fails with EACCES."""
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nexit 0\n", encoding="ascii")
    script.chmod(0o644)
    status, err, _ = _spawn_raw([os.fsencode(script)])
    assert status == -1
    assert err == errno.EACCES


def test_spawn_returns_child_pid() -> None:
    """A successful spawn returns the pid of a child that os.waitpid reaps."""
    status, _, pid = _spawn_raw([b"/bin/true"])
    assert status == 0
    assert pid > 0
    reaped, wait_status = os.waitpid(pid, 0)
    assert reaped == pid
    assert os.waitstatus_to_exitcode(wait_status) == 0


def test_spawn_exit_code_reaches_parent() -> None:
    """The exit code of the spawned program reaches os.waitpid."""
    assert _run_sh("exit 7") == 7


def test_spawn_passes_environment(tmp_path: Path) -> None:
    """The child gets the block that the caller built, not os.environ."""
    output = tmp_path / "env.txt"
    env = [*BASE_ENV, b"PYFORK_TEST_VAR=hello world"]
    assert "PYTEST_CURRENT_TEST" in os.environ

    assert _run_sh('env > "$1"', str(output), env=env) == 0

    lines = output.read_text(encoding="utf-8").splitlines()
    assert "PYFORK_TEST_VAR=hello world" in lines
    assert "PATH=/usr/bin:/bin" in lines
    inherited = [line for line in lines if line.startswith("PYTEST_")]
    assert inherited == []


def test_spawn_keeps_cloexec_fd(opened_fds: list[int]) -> None:
    """A close-on-exec fd in keep_fds is open in the child at its number."""
    read_end, write_end = os.pipe()
    opened_fds.append(read_end)
    write_end = _move_fd(write_end, MIDDLE_FD, cloexec=True)
    assert _is_cloexec(write_end)

    try:
        pid = _spawn(
            [SH, b"-c", f"echo kept > /proc/self/fd/{write_end}".encode()],
            keep_fds=[write_end],
        )
    finally:
        os.close(write_end)

    assert _wait(pid) == 0
    assert _read_all(read_end) == b"kept\n"


def test_spawn_keep_fd_stays_cloexec_in_parent(
    opened_fds: list[int],
) -> None:
    """pyfork_spawn leaves the parent's close-on-exec flag of kept fds."""
    read_end, write_end = os.pipe()
    opened_fds += [read_end, write_end]

    assert _wait(_spawn([b"/bin/true"], keep_fds=[write_end])) == 0
    assert _is_cloexec(write_end)


def test_spawn_closes_unlisted_inheritable_fds(
    tmp_path: Path, opened_fds: list[int]
) -> None:
    """Inheritable fds below and above the kept fd are closed in the child."""
    below = _move_fd(os.open(os.devnull, os.O_RDONLY), LOW_FD, cloexec=False)
    opened_fds.append(below)
    kept = _move_fd(os.open(os.devnull, os.O_RDONLY), MIDDLE_FD, cloexec=True)
    opened_fds.append(kept)
    above = _move_fd(os.open(os.devnull, os.O_RDONLY), HIGH_FD, cloexec=False)
    opened_fds.append(above)
    assert not _is_cloexec(below)
    assert not _is_cloexec(above)
    output = tmp_path / "open-fds.txt"
    script = (
        'out=$1; shift; for fd in "$@"; do '
        '[ -e /proc/self/fd/$fd ] && echo "$fd"; done > "$out"; exit 0'
    )

    status = _run_sh(
        script,
        str(output),
        str(below),
        str(kept),
        str(above),
        keep_fds=[kept],
    )

    assert status == 0
    open_in_child = output.read_text(encoding="ascii").split()
    assert str(below) not in open_in_child
    assert str(above) not in open_in_child
    assert str(kept) in open_in_child


def test_spawn_negative_keep_fd_ebadf() -> None:
    """A negative fd in keep_fds fails with EBADF before any child starts."""
    status, err, _ = _spawn_raw([b"/bin/true"], keep_fds=[-1])
    assert status == -1
    assert err == errno.EBADF


def test_spawn_resets_signal_state() -> None:
    """The child has an empty mask and default SIGPIPE and SIGXFSZ."""
    parent_ignored = _proc_status_mask("self", "SigIgn")
    assert parent_ignored & _signal_bit(signal.SIGPIPE)
    assert parent_ignored & _signal_bit(signal.SIGXFSZ)
    blocked = {signal.SIGTERM, signal.SIGUSR1}
    spawned: dict[str, Any] = {}

    def spawn_with_blocked_signals() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        spawned["thread_mask"] = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        spawned["result"] = _spawn_raw([b"/bin/sleep", b"30"])

    thread = threading.Thread(target=spawn_with_blocked_signals)
    thread.start()
    thread.join()
    status, err, pid = spawned["result"]
    assert status == 0, os.strerror(err)
    try:
        child_blocked = _proc_status_mask(pid, "SigBlk")
        child_ignored = _proc_status_mask(pid, "SigIgn")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    assert blocked <= spawned["thread_mask"]
    assert child_blocked == 0
    assert not child_ignored & _signal_bit(signal.SIGPIPE)
    assert not child_ignored & _signal_bit(signal.SIGXFSZ)


def test_spawn_setsid_new_session() -> None:
    """PYFORK_SPAWN_SETSID makes the child the leader of a new session."""
    with _sleeping_child(flags=lib.PYFORK_SPAWN_SETSID) as pid:
        session = os.getsid(pid)
    assert session == pid


def test_spawn_without_setsid_same_session() -> None:
    """Without PYFORK_SPAWN_SETSID the child stays in the caller's session."""
    with _sleeping_child() as pid:
        session = os.getsid(pid)
    assert session == os.getsid(0)


def test_spawn_setpgroup_new_group() -> None:
    """PYFORK_SPAWN_SETPGROUP with pgroup 0 gives the child its own group."""
    with _sleeping_child(flags=lib.PYFORK_SPAWN_SETPGROUP, pgroup=0) as pid:
        group = os.getpgid(pid)
    assert group == pid


def test_spawn_redirects_stdio() -> None:
    """The stdio fds become the child's 1 and 2; fd 0 stays inherited."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        pid = _spawn(
            [b"/bin/sh", b"-c", b"echo out; echo err >&2"],
            stdio=(-1, out_write, err_write),
        )
        os.close(out_write)
        os.close(err_write)
        out_write = err_write = -1
        returncode = _wait(pid)
        stdout = os.read(out_read, 100)
        stderr = os.read(err_read, 100)
    finally:
        for fd in (out_read, err_read, out_write, err_write):
            if fd >= 0:
                os.close(fd)
    assert returncode == 0
    assert stdout == b"out\n"
    assert stderr == b"err\n"


def test_spawn_cwd(tmp_path: Path) -> None:
    """The child starts in ``cwd`` when it is given."""
    with _sleeping_child(cwd=os.fsencode(tmp_path)) as pid:
        child_cwd = os.readlink(f"/proc/{pid}/cwd")
    assert child_cwd == str(tmp_path.resolve())


def test_spawn_missing_cwd_enoent(tmp_path: Path) -> None:
    """A ``cwd`` that does not exist fails the spawn with ENOENT."""
    missing = os.fsencode(tmp_path / "missing")
    status, err, _ = _spawn_raw([b"/bin/true"], cwd=missing)
    assert status == -1
    assert err == errno.ENOENT


# pyfork_env_build


def test_env_build_keeps_entries() -> None:
    """Every base entry is kept in order and the new entry comes last."""
    base = [b"A=1", b"B=", b"C=x=y"]
    entries = _build_env(base, b"PYFORK_CHILD", b"PYFORK_CHILD=new")
    assert entries == [*base, b"PYFORK_CHILD=new"]


def test_env_build_empty_base() -> None:
    """An empty base gives a block with the new entry only."""
    entries = _build_env([], b"PYFORK_CHILD", b"PYFORK_CHILD=new")
    assert entries == [b"PYFORK_CHILD=new"]


def test_env_build_replaces_stale_marker() -> None:
    """Stale entries of the name are dropped, so the new one is unique."""
    base = [b"PYFORK_CHILD=old", b"A=1", b"PYFORK_CHILD=older"]
    entries = _build_env(base, b"PYFORK_CHILD", b"PYFORK_CHILD=new")
    assert entries == [b"A=1", b"PYFORK_CHILD=new"]


def test_env_build_keeps_similar_names() -> None:
    """Entries whose name only starts or ends like the marker are kept."""
    base = [b"PYFORK_CHILDX=1", b"PYFORK_CHIL=2", b"XPYFORK_CHILD=3"]
    entries = _build_env(base, b"PYFORK_CHILD", b"PYFORK_CHILD=new")
    assert entries == [*base, b"PYFORK_CHILD=new"]


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        pytest.param(b"PYFORK_CHILD", b"OTHER=1", id="other-name"),
        pytest.param(b"PYFORK_CHILD", b"PYFORK_CHILDX=1", id="longer-name"),
        pytest.param(b"PYFORK_CHILD", b"PYFORK_CHIL=1", id="shorter-name"),
        pytest.param(b"PYFORK_CHILD", b"PYFORK_CHILD", id="no-equals"),
        pytest.param(b"A=B", b"A=B=1", id="name-with-equals"),
        pytest.param(b"", b"=1", id="empty-name"),
    ],
)
def test_env_build_invalid_einval(name: bytes, entry: bytes) -> None:
    """A name with '=' or an entry of another name returns NULL and EINVAL."""
    array, _buffers = _cstring_array([b"A=1"])
    block = lib.pyfork_env_build(array, name, entry)
    err = ffi.errno
    if block != ffi.NULL:
        lib.pyfork_env_free(block)
    assert block == ffi.NULL
    assert err == errno.EINVAL


def test_env_build_copies_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a NULL base the block copies the process environment."""
    monkeypatch.setenv("PYFORK_TEST_SCRATCH", "scratch value")
    monkeypatch.setenv("PYFORK_TEST_MARKER", "stale")
    name = b"PYFORK_TEST_MARKER"

    block = lib.pyfork_env_build_locked(ffi.NULL, name, name + b"=new")
    assert block != ffi.NULL, os.strerror(ffi.errno)
    try:
        entries = _block_entries(block)
    finally:
        lib.pyfork_env_free(block)

    assert b"PYFORK_TEST_SCRATCH=scratch value" in entries
    assert [e for e in entries if e.startswith(name + b"=")] == [
        name + b"=new"
    ]
    assert entries[-1] == name + b"=new"
    missing = [
        key
        for key, value in os.environb.items()
        if key != name and key + b"=" + value not in entries
    ]
    assert missing == []


# pyfork_env_take


def test_env_take_returns_and_unsets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The value is copied out and the variable leaves the C environment."""
    monkeypatch.setenv("PYFORK_TEST_TAKE", "the value")
    buffer = ffi.new("char[]", 64)

    length = lib.pyfork_env_take(b"PYFORK_TEST_TAKE", buffer, 64)

    assert length == len("the value")
    assert ffi.string(buffer) == b"the value"
    assert b"PYFORK_TEST_TAKE=the value" not in _process_environment()
    # os.environ is a Python copy that the C call cannot update, which is
    # why _cbackend.take_marker() pops the marker from it.
    assert os.environ["PYFORK_TEST_TAKE"] == "the value"


def test_env_take_empty_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty value returns 0 and still unsets the variable."""
    monkeypatch.setenv("PYFORK_TEST_TAKE", "")
    buffer = ffi.new("char[]", 8)

    length = lib.pyfork_env_take(b"PYFORK_TEST_TAKE", buffer, 8)

    assert length == 0
    assert ffi.string(buffer) == b""
    assert b"PYFORK_TEST_TAKE=" not in _process_environment()


def test_env_take_unset_enoent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable that is not set returns -1 with ENOENT."""
    monkeypatch.delenv("PYFORK_TEST_TAKE", raising=False)
    buffer = ffi.new("char[]", 64)

    length = lib.pyfork_env_take(b"PYFORK_TEST_TAKE", buffer, 64)

    assert length == -1
    assert ffi.errno == errno.ENOENT


def test_env_take_small_buffer_erange(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A buffer without room for the NUL returns ERANGE and keeps the value."""
    monkeypatch.setenv("PYFORK_TEST_TAKE", "abcdef")
    buffer = ffi.new("char[]", 6)

    length = lib.pyfork_env_take(b"PYFORK_TEST_TAKE", buffer, 6)

    assert length == -1
    assert ffi.errno == errno.ERANGE
    assert b"PYFORK_TEST_TAKE=abcdef" in _process_environment()


def test_env_take_exact_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A buffer of exactly the value's length plus the NUL is enough."""
    monkeypatch.setenv("PYFORK_TEST_TAKE", "abcdef")
    buffer = ffi.new("char[]", 7)

    length = lib.pyfork_env_take(b"PYFORK_TEST_TAKE", buffer, 7)

    assert length == 6
    assert ffi.string(buffer) == b"abcdef"


# Creating payload files


def test_create_anonymous_memfd(opened_fds: list[int]) -> None:
    """An anonymous payload file is close-on-exec and has no name on disk."""
    fd = lib.pyfork_payload_create_anonymous(ffi.NULL)
    assert fd >= 0, os.strerror(ffi.errno)
    opened_fds.append(fd)

    assert _is_cloexec(fd)
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    assert stat.S_ISREG(os.fstat(fd).st_mode)
    assert os.fstat(fd).st_nlink == 0


def test_create_anonymous_fallback_unused(
    tmp_path: Path, opened_fds: list[int]
) -> None:
    """Where memfd works, a fallback directory is left untouched."""
    fd = lib.pyfork_payload_create_anonymous(os.fsencode(tmp_path))
    assert fd >= 0, os.strerror(ffi.errno)
    opened_fds.append(fd)

    assert os.fstat(fd).st_nlink == 0
    assert list(tmp_path.iterdir()) == []


def test_create_named_file(tmp_path: Path, opened_fds: list[int]) -> None:
    """A named payload file is DIR/pyfork-XXXXXX, mode 0600, close-on-exec."""
    fd, path = _create_named(tmp_path)
    opened_fds.append(fd)

    assert re.fullmatch(rf"{re.escape(str(tmp_path))}/pyfork-\w{{6}}", path)
    info = os.stat(path)
    assert stat.S_ISREG(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert os.path.samestat(info, os.fstat(fd))
    assert _is_cloexec(fd)
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR


def test_create_named_missing_dir_enoent(tmp_path: Path) -> None:
    """A directory that does not exist fails with ENOENT."""
    buffer = ffi.new("char[]", 4096)
    directory = os.fsencode(tmp_path / "missing")

    fd = lib.pyfork_payload_create_named(directory, buffer, 4096)

    assert fd == -1
    assert ffi.errno == errno.ENOENT


@pytest.mark.parametrize("shortfall", [1, 10])
def test_create_named_short_buffer(tmp_path: Path, shortfall: int) -> None:
    """A path buffer too small fails with ENAMETOOLONG and creates nothing."""
    needed = len(os.fsencode(tmp_path / "pyfork-XXXXXX")) + 1
    buffer = ffi.new("char[]", needed)

    fd = lib.pyfork_payload_create_named(
        os.fsencode(tmp_path), buffer, needed - shortfall
    )

    assert fd == -1
    assert ffi.errno == errno.ENAMETOOLONG
    assert list(tmp_path.iterdir()) == []


def test_create_named_tiny_buffer(tmp_path: Path) -> None:
    """A four-byte path buffer fails with ENAMETOOLONG."""
    buffer = ffi.new("char[]", 4)

    fd = lib.pyfork_payload_create_named(os.fsencode(tmp_path), buffer, 4)

    assert fd == -1
    assert ffi.errno == errno.ENAMETOOLONG


def test_create_named_exact_buffer(
    tmp_path: Path, opened_fds: list[int]
) -> None:
    """A path buffer of exactly the path's length plus the NUL is enough."""
    needed = len(os.fsencode(tmp_path / "pyfork-XXXXXX")) + 1

    fd, path = _create_named(tmp_path, needed)
    opened_fds.append(fd)

    assert os.path.exists(path)


# Writing and checking payload files


@pytest.mark.parametrize(
    "body",
    [b"", BODY, bytes(range(256)) * 4099],
    ids=["empty", "short", "over-1-mib"],
)
def test_payload_round_trip(opened_fds: list[int], body: bytes) -> None:
    """A written payload passes the check and reads back byte for byte."""
    fd = lib.pyfork_payload_create_anonymous(ffi.NULL)
    assert fd >= 0, os.strerror(ffi.errno)
    opened_fds.append(fd)
    _write_payload(fd, body, encoding=1)
    info = ffi.new("struct pyfork_payload_info *")

    status = lib.pyfork_payload_check(fd, 0, TOKEN, info)

    assert status == 0
    assert info.encoding == 1
    assert info.body_size == len(body)
    buffer = ffi.new("char[]", len(body) + 1)
    assert lib.pyfork_read_at(fd, buffer, len(body), 32) == 0
    assert ffi.buffer(buffer, len(body))[:] == body


def test_payload_write_layout(opened_fds: list[int]) -> None:
    """The C writer produces the header that _protocol.build_header builds."""
    fd = lib.pyfork_payload_create_anonymous(ffi.NULL)
    assert fd >= 0, os.strerror(ffi.errno)
    opened_fds.append(fd)

    _write_payload(fd, BODY, encoding=1)

    expected = _protocol.build_header(TOKEN, 1, len(BODY)) + BODY
    assert os.pread(fd, len(expected) + 1, 0) == expected


def test_payload_write_replaces_contents(opened_fds: list[int]) -> None:
    """A shorter payload written over a longer one leaves no trailing bytes."""
    fd = lib.pyfork_payload_create_anonymous(ffi.NULL)
    assert fd >= 0, os.strerror(ffi.errno)
    opened_fds.append(fd)
    _write_payload(fd, BODY * 10)

    _write_payload(fd, BODY)

    assert os.fstat(fd).st_size == 32 + len(BODY)
    assert _check(fd, named=0) == 0


def test_payload_write_closed_fd_ebadf() -> None:
    """Writing to an fd that is not open fails with EBADF."""
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)

    status = lib.pyfork_payload_write(fd, TOKEN, 0, BODY, len(BODY))

    assert status == -1
    assert ffi.errno == errno.EBADF


def test_check_named_file_passes(
    tmp_path: Path, opened_fds: list[int]
) -> None:
    """A named file from pyfork_payload_create_named passes the check."""
    fd, _ = _create_named(tmp_path)
    opened_fds.append(fd)
    _write_payload(fd)

    assert _check(fd, named=1) == 0


def _corrupt_magic(fd: int) -> None:
    os.pwrite(fd, b"X", 0)


def _corrupt_version(fd: int) -> None:
    os.pwrite(fd, bytes([_protocol.PROTOCOL_VERSION + 1]), 6)


def _truncate_body(fd: int) -> None:
    os.ftruncate(fd, 32 + len(BODY) - 1)


def _truncate_header(fd: int) -> None:
    os.ftruncate(fd, 20)


def _truncate_to_empty(fd: int) -> None:
    os.ftruncate(fd, 0)


def _append_byte(fd: int) -> None:
    os.pwrite(fd, b"!", 32 + len(BODY))


@pytest.mark.parametrize("named", [0, 1])
@pytest.mark.parametrize(
    ("corrupt", "code"),
    [
        pytest.param(_corrupt_magic, lib.PYFORK_E_MAGIC, id="magic"),
        pytest.param(_corrupt_version, lib.PYFORK_E_VERSION, id="version"),
        pytest.param(_truncate_body, lib.PYFORK_E_SIZE, id="truncated-body"),
        pytest.param(
            _truncate_header, lib.PYFORK_E_SIZE, id="truncated-header"
        ),
        pytest.param(_truncate_to_empty, lib.PYFORK_E_SIZE, id="empty"),
        pytest.param(_append_byte, lib.PYFORK_E_SIZE, id="trailing-byte"),
    ],
)
def test_check_corrupt_header(
    tmp_path: Path,
    opened_fds: list[int],
    corrupt: Callable[[int], None],
    code: int,
    named: int,
) -> None:
    """A corrupted header or size returns its PYFORK_E_* code."""
    fd, _ = _create_named(tmp_path)
    opened_fds.append(fd)
    _write_payload(fd)

    corrupt(fd)

    assert _check(fd, named) == code


@pytest.mark.parametrize("named", [0, 1])
def test_check_token_mismatch(
    tmp_path: Path, opened_fds: list[int], named: int
) -> None:
    """A header whose token differs from the expected one is rejected."""
    fd, _ = _create_named(tmp_path)
    opened_fds.append(fd)
    _write_payload(fd)

    assert _check(fd, named, OTHER_TOKEN) == lib.PYFORK_E_TOKEN


@pytest.mark.parametrize(("named", "code"), [(1, lib.PYFORK_E_MODE), (0, 0)])
def test_check_group_mode(
    tmp_path: Path, opened_fds: list[int], named: int, code: int
) -> None:
    """Mode 0640 is rejected for a named file only."""
    fd, path = _create_named(tmp_path)
    opened_fds.append(fd)
    _write_payload(fd)

    os.chmod(path, 0o640)

    assert _check(fd, named) == code


@pytest.mark.parametrize(("named", "code"), [(1, lib.PYFORK_E_LINKS), (0, 0)])
def test_check_two_links(
    tmp_path: Path, opened_fds: list[int], named: int, code: int
) -> None:
    """A second hard link is rejected for a named file only."""
    fd, path = _create_named(tmp_path)
    opened_fds.append(fd)
    _write_payload(fd)

    os.link(path, tmp_path / "second-link")

    assert _check(fd, named) == code


@pytest.mark.skipif(
    os.geteuid() != 0, reason="only root can give a file to another user"
)
@pytest.mark.parametrize("named", [0, 1])
def test_check_other_owner(
    tmp_path: Path, opened_fds: list[int], named: int
) -> None:
    """A file owned by another user is rejected."""
    fd, path = _create_named(tmp_path)
    opened_fds.append(fd)
    _write_payload(fd)

    os.chown(path, 65534, 65534)

    assert _check(fd, named) == lib.PYFORK_E_OWNER


@pytest.mark.parametrize("named", [0, 1])
def test_check_directory_not_regular(
    tmp_path: Path, opened_fds: list[int], named: int
) -> None:
    """A directory fd is not a regular file."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    opened_fds.append(fd)

    assert _check(fd, named) == lib.PYFORK_E_NOT_REGULAR


@pytest.mark.parametrize("named", [0, 1])
def test_check_pipe_not_regular(opened_fds: list[int], named: int) -> None:
    """A pipe is not a regular file, even with a valid payload in it."""
    read_end, write_end = os.pipe()
    opened_fds += [read_end, write_end]
    os.write(write_end, _protocol.build_header(TOKEN, 1, 0))

    assert _check(read_end, named) == lib.PYFORK_E_NOT_REGULAR


def test_check_closed_fd_ebadf() -> None:
    """Checking an fd that is not open returns -1 with EBADF."""
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)

    assert _check(fd, 0) == -1
    assert ffi.errno == errno.EBADF


# pyfork_payload_open_named


def test_open_named_regular(tmp_path: Path, opened_fds: list[int]) -> None:
    """A regular file opens read-only and close-on-exec."""
    path = tmp_path / "payload"
    path.write_bytes(BODY)

    fd = lib.pyfork_payload_open_named(os.fsencode(path))
    assert fd >= 0, os.strerror(ffi.errno)
    opened_fds.append(fd)

    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    assert _is_cloexec(fd)


@pytest.mark.parametrize("dangling", [False, True])
def test_open_named_symlink_eloop(tmp_path: Path, dangling: bool) -> None:
    """A symbolic link at the path fails with ELOOP, even a dangling one."""
    target = tmp_path / "target"
    if not dangling:
        target.write_bytes(BODY)
    link = tmp_path / "link"
    link.symlink_to(target)

    fd = lib.pyfork_payload_open_named(os.fsencode(link))
    err = ffi.errno
    if fd >= 0:
        os.close(fd)

    assert fd == -1
    assert err == errno.ELOOP


def test_open_named_missing_enoent(tmp_path: Path) -> None:
    """A path that does not exist fails with ENOENT."""
    fd = lib.pyfork_payload_open_named(os.fsencode(tmp_path / "missing"))
    assert fd == -1
    assert ffi.errno == errno.ENOENT


def test_open_named_fifo_no_block(
    tmp_path: Path, opened_fds: list[int]
) -> None:
    """A FIFO without a writer opens at once and then fails the check."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    opened: dict[str, int] = {}

    def open_fifo() -> None:
        opened["fd"] = lib.pyfork_payload_open_named(os.fsencode(fifo))

    thread = threading.Thread(target=open_fifo, daemon=True)
    thread.start()
    thread.join(timeout=5)
    blocked = thread.is_alive()
    if blocked:
        # Opening the write end releases the blocked reader.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
    fd = opened["fd"]
    if fd >= 0:
        opened_fds.append(fd)

    assert not blocked
    assert fd >= 0
    assert _check(fd, 1) == lib.PYFORK_E_NOT_REGULAR


# pyfork_read_at and pyfork_unlink


@pytest.mark.parametrize(
    ("size", "offset", "expected"),
    [(4, 3, b"3456"), (10, 0, b"0123456789"), (1, 9, b"9"), (0, 100, b"")],
)
def test_read_at_exact_bytes(
    opened_fds: list[int], size: int, offset: int, expected: bytes
) -> None:
    """pyfork_read_at reads exactly ``size`` bytes at ``offset``."""
    fd = os.memfd_create("pyfork-test", os.MFD_CLOEXEC)
    opened_fds.append(fd)
    os.write(fd, b"0123456789")
    buffer = ffi.new("char[]", max(size, 1))

    assert lib.pyfork_read_at(fd, buffer, size, offset) == 0
    assert ffi.buffer(buffer, size)[:] == expected


@pytest.mark.parametrize(
    ("size", "offset"), [(5, 8), (1, 10), (1, 100), (1, 2**63)]
)
def test_read_at_past_end(
    opened_fds: list[int], size: int, offset: int
) -> None:
    """A read past the end of the file returns PYFORK_E_SIZE."""
    fd = os.memfd_create("pyfork-test", os.MFD_CLOEXEC)
    opened_fds.append(fd)
    os.write(fd, b"0123456789")
    buffer = ffi.new("char[]", size)

    assert lib.pyfork_read_at(fd, buffer, size, offset) == lib.PYFORK_E_SIZE


def test_read_at_pipe_espipe(opened_fds: list[int]) -> None:
    """Reading a pipe at an offset returns -1 with ESPIPE."""
    read_end, write_end = os.pipe()
    opened_fds += [read_end, write_end]
    os.write(write_end, b"data")
    buffer = ffi.new("char[]", 4)

    assert lib.pyfork_read_at(read_end, buffer, 4, 0) == -1
    assert ffi.errno == errno.ESPIPE


def test_unlink_removes_file(tmp_path: Path) -> None:
    """pyfork_unlink removes the file at the path."""
    path = tmp_path / "payload"
    path.write_bytes(BODY)

    assert lib.pyfork_unlink(os.fsencode(path)) == 0
    assert not path.exists()


def test_unlink_missing_enoent(tmp_path: Path) -> None:
    """Removing a path that does not exist fails with ENOENT."""
    assert lib.pyfork_unlink(os.fsencode(tmp_path / "missing")) == -1
    assert ffi.errno == errno.ENOENT


# pyfork_start

MARKER_NAME = b"PYFORK_CHILD"
# The child's report: its marker, then every fd from 3 to 500 that it has
# open. The loop has no redirection, which would make the shell open fds.
REPORT_SCRIPT = (
    'r=$PYFORK_CHILD; n=3; while [ "$n" -le 500 ]; do '
    '[ -e "/proc/self/fd/$n" ] && r="$r $n"; n=$((n + 1)); done; '
    'printf "%s\\n" "$r" > "$1"'
)


def _start_raw(
    argv: Sequence[bytes],
    *,
    env: Sequence[bytes] | None = BASE_ENV,
    payload_fd: int = -1,
    payload_path: bytes | None = None,
    body: bytes = BODY,
    keep_fds: Sequence[int] = (),
) -> tuple[int, int, Any]:
    """Call pyfork_start() and return its status, errno and the
    ``struct pyfork_started``."""
    c_argv, _argv_buffers = _cstring_array(argv)
    c_env, _env_buffers = (
        (ffi.NULL, None) if env is None else _cstring_array(env)
    )
    buffers = {
        "executable": ffi.new("char[]", argv[0]),
        "marker_name": ffi.new("char[]", MARKER_NAME),
        "token": ffi.new("unsigned char[]", TOKEN),
        "body": ffi.new("char[]", body),
        "payload_path": (
            ffi.NULL
            if payload_path is None
            else ffi.new("char[]", payload_path)
        ),
    }
    request = ffi.new(
        "struct pyfork_start_request *",
        {
            **buffers,
            "argv": c_argv,
            "env": c_env,
            "payload_fd": payload_fd,
            "encoding": 1,
            "body_size": len(body),
            "fallback_dir": ffi.NULL,
        },
    )
    keep = ffi.new("int[]", list(keep_fds))
    options = ffi.new(
        "struct pyfork_spawn_options *",
        {"keep_fds": keep, "n_keep_fds": len(keep_fds), "stdio": [-1] * 3},
    )
    started = ffi.new("struct pyfork_started *")
    status = lib.pyfork_start_locked(request, options, started)
    return status, ffi.errno, started


def _report_lines(output: Path) -> tuple[str, set[int]]:
    """Return the marker and the open fds that REPORT_SCRIPT wrote."""
    marker, *fds = output.read_text(encoding="ascii").split()
    return marker, {int(fd) for fd in fds}


def test_start_anonymous_payload(tmp_path: Path) -> None:
    """The child gets the marker, the result fd and the payload fd; the
    parent keeps only the result fd, which contains an empty record."""
    output = tmp_path / "report.txt"
    before = open_fds()

    status, err, started = _start_raw(
        [SH, b"-c", REPORT_SCRIPT.encode(), b"sh", os.fsencode(output)]
    )

    assert status == 0, os.strerror(err)
    assert started.failed_step == 0
    result_fd = started.result_fd
    try:
        assert _wait(started.pid) == 0
        assert open_fds() - before == {result_fd}
        assert _is_cloexec(result_fd)
        info = ffi.new("struct pyfork_payload_info *")
        assert lib.pyfork_payload_check(result_fd, 0, TOKEN, info) == 0
        assert info.body_size == 0
    finally:
        os.close(result_fd)
    marker, child_fds = _report_lines(output)
    match = re.fullmatch(r"1:([0-9a-f]{32}):(\d+):fd:(\d+)", marker)
    assert match is not None, marker
    assert bytes.fromhex(match.group(1)) == TOKEN
    assert int(match.group(2)) == result_fd
    payload_fd = int(match.group(3))
    assert payload_fd not in before
    assert child_fds == {result_fd, payload_fd}


def test_start_payload_reaches_child(tmp_path: Path) -> None:
    """The anonymous payload file contains the header and the body."""
    output = tmp_path / "payload.bin"
    script = 'p=${PYFORK_CHILD##*:}; cat "/proc/self/fd/$p" > "$1"'

    status, err, started = _start_raw(
        [SH, b"-c", script.encode(), b"sh", os.fsencode(output)]
    )

    assert status == 0, os.strerror(err)
    os.close(started.result_fd)
    assert _wait(started.pid) == 0
    payload = output.read_bytes()
    assert payload[: _protocol.HEADER_SIZE] == _protocol.build_header(
        TOKEN, 1, len(BODY)
    )
    assert payload[_protocol.HEADER_SIZE :] == BODY


def test_start_named_payload(tmp_path: Path, opened_fds: list[int]) -> None:
    """A named payload file is named in the marker, not passed as an fd,
    and the caller's fd stays open."""
    payload_fd, path = _create_named(tmp_path)
    opened_fds.append(payload_fd)
    _write_payload(payload_fd)
    output = tmp_path / "report.txt"
    devnull = os.open(os.devnull, os.O_RDONLY)
    passed_fd = _move_fd(devnull, HIGH_FD, cloexec=True)
    opened_fds.append(passed_fd)

    status, err, started = _start_raw(
        [SH, b"-c", REPORT_SCRIPT.encode(), b"sh", os.fsencode(output)],
        payload_fd=payload_fd,
        payload_path=os.fsencode(path),
        keep_fds=[passed_fd],
    )

    assert status == 0, os.strerror(err)
    os.close(started.result_fd)
    assert _wait(started.pid) == 0
    os.fstat(payload_fd)  # still open in the parent
    marker, child_fds = _report_lines(output)
    expected = f"1:{TOKEN.hex()}:{started.result_fd}:path:{path}"
    assert marker == expected
    assert child_fds == {started.result_fd, passed_fd}


def test_start_environment(tmp_path: Path) -> None:
    """The child's environment is the base block with the marker replaced."""
    output = tmp_path / "env.txt"
    env = [*BASE_ENV, b"PYFORK_CHILD=stale", b"PYFORK_TEST_VAR=1"]

    status, err, started = _start_raw(
        [SH, b"-c", b'env > "$1"', b"sh", os.fsencode(output)], env=env
    )

    assert status == 0, os.strerror(err)
    os.close(started.result_fd)
    assert _wait(started.pid) == 0
    lines = output.read_text(encoding="ascii").splitlines()
    markers = [line for line in lines if line.startswith("PYFORK_CHILD=")]
    assert len(markers) == 1
    assert markers[0].startswith(f"PYFORK_CHILD=1:{TOKEN.hex()}:")
    assert "PYFORK_TEST_VAR=1" in lines
    assert not [line for line in lines if line.startswith("PYTEST_")]


def test_start_spawn_failure_closes_files(tmp_path: Path) -> None:
    """A child that cannot start leaves no fd open and names the step."""
    before = open_fds()

    status, err, started = _start_raw([os.fsencode(tmp_path / "missing")])

    assert status == -1
    assert err == errno.ENOENT
    assert started.failed_step == lib.PYFORK_START_SPAWN
    assert started.pid == -1
    assert started.result_fd == -1
    assert open_fds() == before


@contextlib.contextmanager
def _fd_limit_above_lowest_free(extra: int) -> Iterator[None]:
    """Lower RLIMIT_NOFILE so that only ``extra`` more fds can be made."""
    import resource

    lowest_free = 0
    while lowest_free in open_fds():
        lowest_free += 1
    highest = max(open_fds())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Fds above the limit stay open, but every new fd is the lowest free
    # one, and numbers at or above the limit are refused.
    assert highest < soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    ("extra", "step"),
    [
        pytest.param(0, "PYFORK_START_RESULT_FILE", id="result"),
        pytest.param(1, "PYFORK_START_PAYLOAD_FILE", id="payload"),
    ],
)
def test_start_file_failure(extra: int, step: str) -> None:
    """Without fds for its files, pyfork_start() names the file it could
    not create, starts nothing and leaves no fd open."""
    before = open_fds()

    with _fd_limit_above_lowest_free(extra):
        status, err, started = _start_raw([b"/bin/true"])

    assert status == -1
    assert err == errno.EMFILE
    assert started.failed_step == getattr(lib, step)
    assert started.pid == -1
    assert open_fds() == before
