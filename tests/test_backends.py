"""The protocol through the functions of both backends, and _protocol.

read_payload() returns the body as bytes and never unpickles it, so the
tests of hostile payloads check that it raises and leaves the file alone.
"""

from __future__ import annotations

import ctypes
import errno
import marshal
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import open_fds

from pyfork import _cbackend, _protocol, _pybackend
from pyfork._child import MARKER
from pyfork._protocol import (
    CHECK_LINKS,
    CHECK_MAGIC,
    CHECK_MESSAGES,
    CHECK_MODE,
    CHECK_NOT_REGULAR,
    CHECK_OWNER,
    CHECK_SIZE,
    CHECK_TOKEN,
    CHECK_VERSION,
    ENCODING_MARSHAL,
    ENCODING_PICKLE,
    Marker,
    PayloadError,
    build_header,
    decode_body,
    encode_body,
    format_marker,
    parse_marker,
)

BACKEND_MODULES = [
    pytest.param(_cbackend, id="c"),
    pytest.param(_pybackend, id="python"),
]
TOKEN = bytes.fromhex("00112233445566778899aabbccddeeff")
OTHER_TOKEN = bytes.fromhex("ffeeddccbbaa99887766554433221100")
BODY = b"\x00the payload body\xff"
TRANSPORTS = ["anonymous", "named"]

_libc = ctypes.CDLL(None)
_libc.getenv.restype = ctypes.c_char_p
_libc.getenv.argtypes = [ctypes.c_char_p]


@pytest.fixture(params=BACKEND_MODULES)
def backend_module(request: pytest.FixtureRequest) -> ModuleType:
    """The backend module under test: _cbackend or _pybackend."""
    module: ModuleType = request.param
    return module


def _create(
    module: ModuleType, transport: str, directory: Path, body: bytes = BODY
) -> tuple[Marker, int | None]:
    """Create a payload and return its parsed marker and the fd to close.

    The fd to close is None for an anonymous payload, whose fd the marker
    names and read_payload() closes.
    """
    location = None if transport == "anonymous" else str(directory)
    fd, path = module.create_payload(TOKEN, ENCODING_PICKLE, body, location)
    marker = parse_marker(format_marker(TOKEN, fd, path))
    if path is None:
        return marker, None
    return marker, fd


def _c_getenv(name: str) -> bytes | None:
    """Return a variable of the C environment, which os.environ may lag."""
    value: bytes | None = _libc.getenv(name.encode())
    return value


# Round trips


def test_anonymous_round_trip(backend_module: ModuleType) -> None:
    """An anonymous payload reads back with its encoding and body."""
    fd, path = backend_module.create_payload(
        TOKEN, ENCODING_PICKLE, BODY, None
    )
    marker = parse_marker(format_marker(TOKEN, fd, path))

    encoding, body = backend_module.read_payload(marker)

    assert path is None
    assert marker.fd == fd
    assert encoding == ENCODING_PICKLE
    assert body == BODY
    assert type(body) is bytearray


def test_read_payload_closes_fd(backend_module: ModuleType) -> None:
    """read_payload() closes the payload descriptor that the marker names."""
    fd, _ = backend_module.create_payload(TOKEN, ENCODING_PICKLE, BODY, None)

    backend_module.read_payload(Marker(TOKEN, fd, None))

    with pytest.raises(OSError, match="Bad file descriptor") as caught:
        os.fstat(fd)
    assert caught.value.errno == errno.EBADF


def test_named_round_trip(backend_module: ModuleType, tmp_path: Path) -> None:
    """A named payload reads back, and read_payload() removes its file."""
    fd, path = backend_module.create_payload(
        TOKEN, ENCODING_MARSHAL, BODY, str(tmp_path)
    )
    os.close(fd)
    marker = parse_marker(format_marker(TOKEN, None, path))
    assert path is not None
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith("pyfork-")
    assert os.stat(path).st_mode & 0o777 == 0o600

    encoding, body = backend_module.read_payload(marker)

    assert encoding == ENCODING_MARSHAL
    assert body == BODY
    assert not os.path.lexists(path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_empty_body_round_trip(
    backend_module: ModuleType, tmp_path: Path, transport: str
) -> None:
    """A payload with an empty body reads back as an empty bytearray."""
    marker, fd = _create(backend_module, transport, tmp_path, body=b"")
    if fd is not None:
        os.close(fd)

    encoding, body = backend_module.read_payload(marker)

    assert encoding == ENCODING_PICKLE
    assert body == bytearray()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("writer", BACKEND_MODULES)
@pytest.mark.parametrize("reader", BACKEND_MODULES)
def test_cross_backend_round_trip(
    writer: ModuleType, reader: ModuleType, transport: str, tmp_path: Path
) -> None:
    """A payload written by either backend reads back with either backend."""
    marker, fd = _create(writer, transport, tmp_path)
    if fd is not None:
        os.close(fd)

    encoding, body = reader.read_payload(marker)

    assert encoding == ENCODING_PICKLE
    assert body == BODY
    assert list(tmp_path.iterdir()) == []


def test_unknown_encoding_passed_through(
    backend_module: ModuleType,
) -> None:
    """read_payload() returns an unknown encoding byte for decode_body."""
    fd, _ = backend_module.create_payload(TOKEN, 7, BODY, None)

    encoding, _ = backend_module.read_payload(Marker(TOKEN, fd, None))

    assert encoding == 7


# Hostile payloads. Each function prepares one in an empty directory and
# returns the marker that points at it.


def _write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def _payload_bytes(token: bytes = TOKEN, body: bytes = BODY) -> bytes:
    return build_header(token, ENCODING_PICKLE, len(body)) + body


def _named_marker(path: Path) -> Marker:
    return parse_marker(format_marker(TOKEN, None, str(path)))


def _prepare_symlink(directory: Path) -> Marker:
    target = directory / "target"
    _write_file(target, _payload_bytes())
    link = directory / "pyfork-link"
    link.symlink_to(target)
    return _named_marker(link)


def _prepare_dangling_symlink(directory: Path) -> Marker:
    link = directory / "pyfork-link"
    link.symlink_to(directory / "missing")
    return _named_marker(link)


def _prepare_group_mode(directory: Path) -> Marker:
    path = directory / "pyfork-payload"
    _write_file(path, _payload_bytes(), mode=0o640)
    return _named_marker(path)


def _prepare_two_links(directory: Path) -> Marker:
    path = directory / "pyfork-payload"
    _write_file(path, _payload_bytes())
    os.link(path, directory / "second-link")
    return _named_marker(path)


def _prepare_other_owner(directory: Path) -> Marker:
    path = directory / "pyfork-payload"
    _write_file(path, _payload_bytes())
    os.chown(path, 65534, 65534)
    return _named_marker(path)


def _prepare_token_mismatch(directory: Path) -> Marker:
    path = directory / "pyfork-payload"
    _write_file(path, _payload_bytes(token=OTHER_TOKEN))
    return _named_marker(path)


def _prepare_truncated_body(directory: Path) -> Marker:
    path = directory / "pyfork-payload"
    _write_file(path, _payload_bytes()[:-1])
    return _named_marker(path)


def _prepare_truncated_header(directory: Path) -> Marker:
    path = directory / "pyfork-payload"
    _write_file(path, _payload_bytes()[:20])
    return _named_marker(path)


def _prepare_trailing_bytes(directory: Path) -> Marker:
    path = directory / "pyfork-payload"
    _write_file(path, _payload_bytes() + b"!")
    return _named_marker(path)


def _prepare_corrupt_magic(directory: Path) -> Marker:
    path = directory / "pyfork-payload"
    _write_file(path, b"X" + _payload_bytes()[1:])
    return _named_marker(path)


def _prepare_wrong_version(directory: Path) -> Marker:
    path = directory / "pyfork-payload"
    data = bytearray(_payload_bytes())
    data[6] = _protocol.PROTOCOL_VERSION + 1
    _write_file(path, bytes(data))
    return _named_marker(path)


def _prepare_missing_file(directory: Path) -> Marker:
    return _named_marker(directory / "pyfork-missing")


def _prepare_directory(directory: Path) -> Marker:
    path = directory / "pyfork-directory"
    path.mkdir(mode=0o700)
    return _named_marker(path)


def _prepare_fifo(directory: Path) -> Marker:
    path = directory / "pyfork-fifo"
    os.mkfifo(path, 0o600)
    return _named_marker(path)


def _prepare_fd_not_open(directory: Path) -> Marker:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return Marker(TOKEN, fd, None)


def _prepare_fd_pipe(directory: Path) -> Marker:
    read_end, write_end = os.pipe()
    os.write(write_end, _payload_bytes())
    os.close(write_end)
    return Marker(TOKEN, read_end, None)


def _prepare_fd_token_mismatch(directory: Path) -> Marker:
    fd = os.memfd_create("pyfork-test", os.MFD_CLOEXEC)
    os.write(fd, _payload_bytes(token=OTHER_TOKEN))
    return Marker(TOKEN, fd, None)


def _prepare_fd_truncated(directory: Path) -> Marker:
    fd = os.memfd_create("pyfork-test", os.MFD_CLOEXEC)
    os.write(fd, _payload_bytes()[:-1])
    return Marker(TOKEN, fd, None)


_ONLY_ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason="only root can give a file to another user"
)

HOSTILE_PAYLOADS = [
    pytest.param(_prepare_symlink, "is a symbolic link", id="symlink"),
    pytest.param(
        _prepare_dangling_symlink, "is a symbolic link", id="dangling-symlink"
    ),
    pytest.param(_prepare_group_mode, CHECK_MESSAGES[CHECK_MODE], id="mode"),
    pytest.param(
        _prepare_two_links, CHECK_MESSAGES[CHECK_LINKS], id="two-links"
    ),
    pytest.param(
        _prepare_other_owner,
        CHECK_MESSAGES[CHECK_OWNER],
        id="other-owner",
        marks=_ONLY_ROOT,
    ),
    pytest.param(
        _prepare_token_mismatch, CHECK_MESSAGES[CHECK_TOKEN], id="token"
    ),
    pytest.param(
        _prepare_truncated_body,
        CHECK_MESSAGES[CHECK_SIZE],
        id="truncated-body",
    ),
    pytest.param(
        _prepare_truncated_header,
        CHECK_MESSAGES[CHECK_SIZE],
        id="truncated-header",
    ),
    pytest.param(
        _prepare_trailing_bytes,
        CHECK_MESSAGES[CHECK_SIZE],
        id="trailing-bytes",
    ),
    pytest.param(
        _prepare_corrupt_magic, CHECK_MESSAGES[CHECK_MAGIC], id="magic"
    ),
    pytest.param(
        _prepare_wrong_version, CHECK_MESSAGES[CHECK_VERSION], id="version"
    ),
    pytest.param(
        _prepare_missing_file,
        "cannot open payload file",
        id="missing-file",
    ),
    pytest.param(
        _prepare_directory, CHECK_MESSAGES[CHECK_NOT_REGULAR], id="directory"
    ),
    pytest.param(_prepare_fifo, CHECK_MESSAGES[CHECK_NOT_REGULAR], id="fifo"),
    pytest.param(
        _prepare_fd_not_open,
        "cannot read payload descriptor",
        id="fd-not-open",
    ),
    pytest.param(
        _prepare_fd_pipe, CHECK_MESSAGES[CHECK_NOT_REGULAR], id="fd-pipe"
    ),
    pytest.param(
        _prepare_fd_token_mismatch,
        CHECK_MESSAGES[CHECK_TOKEN],
        id="fd-token",
    ),
    pytest.param(
        _prepare_fd_truncated, CHECK_MESSAGES[CHECK_SIZE], id="fd-truncated"
    ),
]


def _rejection_message(
    module: ModuleType, prepare: Callable[[Path], Marker], directory: Path
) -> str:
    """Prepare a hostile payload in a fresh directory and return the error."""
    directory.mkdir()
    try:
        marker = prepare(directory)
        with pytest.raises(PayloadError) as caught:
            module.read_payload(marker)
    finally:
        shutil.rmtree(directory)
    return str(caught.value)


@pytest.mark.parametrize(("prepare", "reason"), HOSTILE_PAYLOADS)
def test_hostile_payload_rejected(
    backend_module: ModuleType,
    tmp_path: Path,
    prepare: Callable[[Path], Marker],
    reason: str,
) -> None:
    """read_payload() raises PayloadError that names the failed check."""
    marker = prepare(tmp_path)
    before = sorted(path.name for path in tmp_path.iterdir())

    with pytest.raises(PayloadError) as caught:
        backend_module.read_payload(marker)

    assert reason in str(caught.value)
    # Only a payload that passes every check is removed.
    assert sorted(path.name for path in tmp_path.iterdir()) == before


@pytest.mark.parametrize(("prepare", "reason"), HOSTILE_PAYLOADS)
def test_hostile_payload_same_message(
    tmp_path: Path, prepare: Callable[[Path], Marker], reason: str
) -> None:
    """Both backends reject a hostile payload with the same message."""
    directory = tmp_path / "payload"

    c_message = _rejection_message(_cbackend, prepare, directory)
    python_message = _rejection_message(_pybackend, prepare, directory)

    assert c_message == python_message
    assert reason in c_message


def test_missing_file_message(
    backend_module: ModuleType, tmp_path: Path
) -> None:
    """A missing named payload names the path and the system error."""
    path = tmp_path / "pyfork-missing"

    with pytest.raises(PayloadError) as caught:
        backend_module.read_payload(_named_marker(path))

    expected = f"cannot open payload file {path}: {os.strerror(errno.ENOENT)}"
    assert str(caught.value) == expected


def test_fd_out_of_range_rejected() -> None:
    """A marker fd beyond the range of a C int raises PayloadError."""
    with pytest.raises(PayloadError, match="invalid payload reference"):
        parse_marker(format_marker(TOKEN, 2**31, None))


# Creating and removing payload files


def test_create_missing_directory(
    backend_module: ModuleType, tmp_path: Path
) -> None:
    """A missing directory raises OSError naming it, and leaves nothing."""
    directory = str(tmp_path / "missing")

    with pytest.raises(FileNotFoundError) as caught:
        backend_module.create_payload(TOKEN, ENCODING_PICKLE, BODY, directory)

    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == directory
    assert list(tmp_path.iterdir()) == []


def test_remove_payload(backend_module: ModuleType, tmp_path: Path) -> None:
    """remove_payload() removes a named payload file."""
    fd, path = backend_module.create_payload(
        TOKEN, ENCODING_PICKLE, BODY, str(tmp_path)
    )
    os.close(fd)

    backend_module.remove_payload(path)

    assert list(tmp_path.iterdir()) == []


def test_remove_missing_payload(
    backend_module: ModuleType, tmp_path: Path
) -> None:
    """Removing a missing payload raises FileNotFoundError naming it."""
    path = str(tmp_path / "pyfork-missing")

    with pytest.raises(FileNotFoundError) as caught:
        backend_module.remove_payload(path)

    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == path


# The marker variable and spawn()


def test_take_marker_unsets(
    backend_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """take_marker() returns the value and unsets it in both environments."""
    monkeypatch.setenv(MARKER, "1:value")

    value = backend_module.take_marker()

    assert value == "1:value"
    assert MARKER not in os.environ
    assert _c_getenv(MARKER) is None


def test_take_marker_unset_none(
    backend_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """take_marker() returns None when the marker is not set."""
    monkeypatch.delenv(MARKER, raising=False)

    assert backend_module.take_marker() is None


def test_start_sets_marker(backend_module: ModuleType, tmp_path: Path) -> None:
    """The child gets the given environment, with a stale marker replaced
    by one that names the token, the result fd and the payload fd."""
    output = tmp_path / "output.txt"
    script = 'printf "%s\\n" "$PYFORK_CHILD" "$PYFORK_TEST_VAR" > "$1"'
    env = {"PATH": "/usr/bin:/bin", "PYFORK_TEST_VAR": "x", MARKER: "stale"}
    started = _protocol.Started()

    backend_module.start(
        "/bin/sh",
        ["sh", "-c", script, "sh", str(output)],
        env,
        TOKEN,
        started,
        body=(_protocol.ENCODING_MARSHAL, marshal.dumps(("work",))),
    )

    os.close(started.result_fd)
    _, status = os.waitpid(started.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    marker, variable = output.read_text(encoding="utf-8").splitlines()
    parsed = _protocol.parse_marker(marker)
    assert parsed.token == TOKEN
    assert parsed.result_fd == started.result_fd
    assert parsed.fd is not None
    assert parsed.path is None
    assert variable == "x"


def test_start_missing_executable(
    backend_module: ModuleType, tmp_path: Path
) -> None:
    """A missing executable raises FileNotFoundError naming it, and leaves
    no child and no fd behind."""
    executable = str(tmp_path / "missing")
    started = _protocol.Started()
    before = open_fds()

    with pytest.raises(FileNotFoundError) as caught:
        backend_module.start(executable, [executable], {}, TOKEN, started)

    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == executable
    assert started.pid == -1
    assert open_fds() == before


# _protocol: markers


@pytest.mark.parametrize(
    ("fd", "path"),
    [(5, None), (0, None), (None, "/tmp/pyfork-abc"), (None, "/a:b/c d")],
)
def test_marker_round_trip(fd: int | None, path: str | None) -> None:
    """parse_marker() returns the token and reference format_marker() got."""
    marker = parse_marker(format_marker(TOKEN, fd, path))

    assert marker.token == TOKEN
    assert marker.fd == fd
    assert marker.path == path


def test_marker_format() -> None:
    """A marker starts with VERSION:TOKEN and ends with its reference."""
    fd_marker = format_marker(TOKEN, 3, None)
    path_marker = format_marker(TOKEN, None, "/p")

    assert fd_marker.startswith(f"1:{TOKEN.hex()}:")
    assert fd_marker.endswith(":fd:3")
    assert path_marker.startswith(f"1:{TOKEN.hex()}:")
    assert path_marker.endswith(":path:/p")


_HEX = TOKEN.hex()
# Malformed markers are built from valid ones, so each case breaks one
# field and keeps the rest of the format.
_FD_MARKER = format_marker(TOKEN, 3, None)
_PATH_MARKER = format_marker(TOKEN, None, "/tmp/pyfork-abc")


def test_parse_marker_accepts_valid() -> None:
    """The valid markers that the malformed cases start from parse."""
    assert parse_marker(_FD_MARKER).fd == 3
    assert parse_marker(_PATH_MARKER).path == "/tmp/pyfork-abc"


_INVALID_MARKER = "invalid marker"
_INVALID_TOKEN = "invalid token"
_INVALID_REFERENCE = "invalid payload reference"
_OTHER_VERSION = "is for protocol version"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param("", _INVALID_MARKER, id="empty"),
        pytest.param(
            _FD_MARKER.rsplit(":", 1)[0], _INVALID_MARKER, id="missing-field"
        ),
        pytest.param(
            _FD_MARKER.split(":", 1)[1], _INVALID_MARKER, id="missing-version"
        ),
        pytest.param(
            _FD_MARKER + ":4", _INVALID_REFERENCE, id="fd-extra-field"
        ),
        pytest.param(
            _FD_MARKER.replace(_HEX, "zz" * 16), _INVALID_TOKEN, id="bad-hex"
        ),
        pytest.param(
            _FD_MARKER.replace(_HEX, _HEX[:-1]), _INVALID_TOKEN, id="odd-hex"
        ),
        pytest.param(
            _FD_MARKER.replace(_HEX, _HEX[:-2]),
            _INVALID_TOKEN,
            id="short-token",
        ),
        pytest.param(
            _FD_MARKER.replace(_HEX, _HEX + "00"),
            _INVALID_TOKEN,
            id="long-token",
        ),
        pytest.param("2" + _FD_MARKER[1:], _OTHER_VERSION, id="version-2"),
        pytest.param("0" + _FD_MARKER, _OTHER_VERSION, id="version-01"),
        pytest.param(
            _PATH_MARKER.replace(":/tmp/", ":tmp/"),
            _INVALID_REFERENCE,
            id="relative-path",
        ),
        pytest.param(
            _PATH_MARKER.replace(":/tmp/pyfork-abc", ":"),
            _INVALID_REFERENCE,
            id="empty-path",
        ),
        pytest.param(
            _FD_MARKER[:-1] + "abc", _INVALID_REFERENCE, id="fd-letters"
        ),
        pytest.param(
            _FD_MARKER[:-1] + "-1", _INVALID_REFERENCE, id="fd-negative"
        ),
        pytest.param(_FD_MARKER[:-1], _INVALID_REFERENCE, id="fd-empty"),
        pytest.param(
            _FD_MARKER[:-1] + " 3", _INVALID_REFERENCE, id="fd-space"
        ),
        pytest.param(
            _FD_MARKER[:-1] + "\uff13",
            _INVALID_REFERENCE,
            id="fd-fullwidth-digit",
        ),
        pytest.param(
            _FD_MARKER.replace(":fd:", ":pipe:"),
            _INVALID_REFERENCE,
            id="unknown-kind",
        ),
    ],
)
def test_parse_marker_rejects(value: str, reason: str) -> None:
    """A malformed marker raises PayloadError that names the invalid field."""
    with pytest.raises(PayloadError) as caught:
        parse_marker(value)

    assert reason in str(caught.value)


# _protocol: bodies


class _Point:
    """A class instance that marshal cannot encode."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Point):
            return NotImplemented
        return (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


class _Count(int):
    """A subclass of int, which marshal would write as a plain int."""


def _nested_list(depth: int) -> list[Any]:
    """Return a list nested ``depth`` levels deep around an int."""
    value: list[Any] = [0]
    for _ in range(depth - 1):
        value = [value]
    return value


def _request(*args: Any) -> tuple[Any, ...]:
    return ("name", args, {"key": "value"}, "/", 0)


_BUILTIN_VALUES = (
    None,
    True,
    -(2**100),
    1.5,
    2 + 3j,
    "text \u00e9",
    b"bytes",
    [1, [2, (3,)]],
    {1, 2},
    frozenset({"a"}),
    {"a": {"b": [None]}},
    (),
)


def test_encode_builtins_marshal() -> None:
    """A request of exact builtin types is encoded with marshal."""
    request = _request(*_BUILTIN_VALUES)

    encoding, body = encode_body(request)

    assert encoding == ENCODING_MARSHAL
    assert marshal.loads(body) == request


@pytest.mark.parametrize("depth", [50, 900])
def test_encode_nesting_marshal(depth: int) -> None:
    """Lists nested within marshal's depth cap are encoded with marshal."""
    request = _request(_nested_list(depth))

    encoding, body = encode_body(request)

    assert encoding == ENCODING_MARSHAL
    assert marshal.loads(body) == request


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(bytearray(b"buffer"), id="bytearray"),
        pytest.param(_Count(3), id="int-subclass"),
        pytest.param(_Point(1, 2), id="class-instance"),
        pytest.param(list(range(20_000)), id="many-items"),
    ],
)
def test_encode_other_values_pickle(value: object) -> None:
    """A request with any other value is encoded with pickle."""
    request = _request(value)

    encoding, body = encode_body(request)

    assert encoding == ENCODING_PICKLE
    assert pickle.loads(body) == request


def test_encode_self_reference_pickle() -> None:
    """A list that contains itself goes through pickle and keeps its loop."""
    loop: list[Any] = []
    loop.append(loop)

    encoding, body = encode_body(_request(loop))
    decoded = decode_body(encoding, body)

    assert encoding == ENCODING_PICKLE
    assert isinstance(decoded, tuple)
    decoded_loop = decoded[1][0]
    assert decoded_loop[0] is decoded_loop


def test_encode_code_object_raises() -> None:
    """A code object, which marshal would accept, raises as pickle does."""
    code = compile("1", "<test>", "eval")

    with pytest.raises(TypeError):
        encode_body(_request(code))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(_BUILTIN_VALUES, id="builtins"),
        pytest.param(bytearray(b"buffer"), id="bytearray"),
        pytest.param(_Count(3), id="int-subclass"),
        pytest.param(_Point(1, 2), id="class-instance"),
        pytest.param((b"bytes", bytearray(b"buffer")), id="bytes-and-buffer"),
        pytest.param(([1], (1,), {1}, frozenset({1})), id="containers"),
    ],
)
def test_decode_round_trip(value: object) -> None:
    """decode_body(encode_body(x)) returns an equal value of the same type."""
    request = _request(value)

    decoded = decode_body(*encode_body(request))

    assert decoded == request
    assert isinstance(decoded, tuple)
    decoded_value = decoded[1][0]
    assert type(decoded_value) is type(value)
    if isinstance(value, tuple):
        types = [type(item) for item in decoded_value]
        assert types == [type(item) for item in value]


def test_decode_unknown_encoding() -> None:
    """An unknown encoding raises PayloadError naming it."""
    with pytest.raises(PayloadError, match="unknown body encoding 9"):
        decode_body(9, b"")
