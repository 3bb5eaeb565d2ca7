"""Payload bodies of at least LARGE_BODY bytes.

The child unpickles a large pickle body straight from the payload file,
which read_payload() returns open, and maps or reads any other large body
into memory. A large result record is always read into memory, because
the parent closes the result file right after read_record().
"""

from __future__ import annotations

import errno
import marshal
import os
import pickle
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ScriptRunner
from script_helpers import records, script

from pyfork import _cbackend, _pybackend
from pyfork._protocol import (
    ENCODING_MARSHAL,
    ENCODING_PICKLE,
    LARGE_BODY,
    Marker,
    decode_body,
    format_marker,
    parse_marker,
)

BACKEND_MODULES = [
    pytest.param(_cbackend, id="c"),
    pytest.param(_pybackend, id="python"),
]
TRANSPORTS = ["anonymous", "named"]
TOKEN = bytes.fromhex("00112233445566778899aabbccddeeff")
# A request-shaped value whose pickle is larger than LARGE_BODY.
LARGE_VALUE = ("name", (os.urandom(LARGE_BODY + 4096),), {}, "/", 0, ["app"])


@pytest.fixture(params=BACKEND_MODULES)
def backend_module(request: pytest.FixtureRequest) -> ModuleType:
    """The backend module under test: _cbackend or _pybackend."""
    module: ModuleType = request.param
    return module


def _create(
    module: ModuleType,
    transport: str,
    directory: Path,
    encoding: int,
    body: bytes,
) -> Marker:
    """Create a payload and return the marker that points at it."""
    location = None if transport == "anonymous" else str(directory)
    fd, path = module.create_payload(TOKEN, encoding, body, location)
    if path is not None:
        os.close(fd)  # the reader opens the named file itself
    return parse_marker(format_marker(TOKEN, fd, path))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as error:
        if error.errno == errno.EBADF:
            return False
        raise
    return True


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_large_pickle_body_open_file(
    backend_module: ModuleType, tmp_path: Path, transport: str
) -> None:
    """read_payload() returns a large pickle body as a file at its start."""
    body = pickle.dumps(LARGE_VALUE, protocol=-1)
    marker = _create(
        backend_module, transport, tmp_path, ENCODING_PICKLE, body
    )

    encoding, body_file = backend_module.read_payload(marker)

    try:
        assert encoding == ENCODING_PICKLE
        assert hasattr(body_file, "readinto")
        if marker.fd is not None:
            assert body_file.fileno() == marker.fd
        assert list(tmp_path.iterdir()) == []
        assert body_file.read() == body
    finally:
        body_file.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_large_pickle_body_decoded_closed(
    backend_module: ModuleType, tmp_path: Path, transport: str
) -> None:
    """decode_body() unpickles a body file and closes its descriptor."""
    body = pickle.dumps(LARGE_VALUE, protocol=-1)
    marker = _create(
        backend_module, transport, tmp_path, ENCODING_PICKLE, body
    )
    encoding, body_file = backend_module.read_payload(marker)
    fd = body_file.fileno()
    assert _is_open(fd)

    value = decode_body(encoding, body_file)

    assert value == LARGE_VALUE
    assert body_file.closed
    assert not _is_open(fd)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_large_bad_pickle_closed(
    backend_module: ModuleType, tmp_path: Path, transport: str
) -> None:
    """A body file that fails to unpickle is closed all the same."""
    body = pickle.dumps(LARGE_VALUE, protocol=-1)[:-4096]
    marker = _create(
        backend_module, transport, tmp_path, ENCODING_PICKLE, body
    )
    encoding, body_file = backend_module.read_payload(marker)
    fd = body_file.fileno()

    with pytest.raises((pickle.UnpicklingError, EOFError)):
        decode_body(encoding, body_file)

    assert body_file.closed
    assert not _is_open(fd)


def test_body_file_marshal_decoded(tmp_path: Path) -> None:
    """decode_body() reads a marshal body from a file too."""
    value = {"key": [1, 2.5, "three"], "blob": b"\x00" * 100}
    path = tmp_path / "body"
    path.write_bytes(marshal.dumps(value))

    body_file = path.open("rb", buffering=0)
    decoded = decode_body(ENCODING_MARSHAL, body_file)

    assert decoded == value
    assert body_file.closed


@pytest.mark.parametrize(
    ("transport", "body_type"),
    [("anonymous", memoryview), ("named", bytearray)],
)
def test_large_marshal_body_in_memory(
    backend_module: ModuleType,
    tmp_path: Path,
    transport: str,
    body_type: type,
) -> None:
    """A large marshal body is mapped from an anonymous file, else read."""
    body = marshal.dumps(LARGE_VALUE)
    marker = _create(
        backend_module, transport, tmp_path, ENCODING_MARSHAL, body
    )

    encoding, loaded = backend_module.read_payload(marker)

    assert encoding == ENCODING_MARSHAL
    assert type(loaded) is body_type
    assert loaded == body
    if marker.fd is not None:
        assert not _is_open(marker.fd)
    assert decode_body(encoding, loaded) == LARGE_VALUE


def test_large_result_record_in_memory(backend_module: ModuleType) -> None:
    """read_record() maps a large record instead of returning a file."""
    body = pickle.dumps(LARGE_VALUE, protocol=-1)
    fd = backend_module.create_anonymous_file()
    try:
        backend_module.write_record(fd, TOKEN, ENCODING_PICKLE, body)

        record = backend_module.read_record(fd, TOKEN)
    finally:
        os.close(fd)

    assert record is not None
    encoding, loaded = record
    assert encoding == ENCODING_PICKLE
    assert type(loaded) is memoryview
    assert decode_body(encoding, loaded) == LARGE_VALUE


@pytest.mark.parametrize("transport", ["fd", "path"])
def test_large_arguments_reach_child(
    run_script: ScriptRunner, transport: str
) -> None:
    """Large bytes and a user class reach the child, whose payload file is
    closed before the function runs."""
    source = script(
        """
        import hashlib


        class Holder:
            def __init__(self, data):
                self.data = data


        @pyfork.register
        def check(blob, holder):
            targets = []
            for name in os.listdir("/proc/self/fd"):
                try:
                    targets.append(os.readlink(f"/proc/self/fd/{name}"))
                except OSError:
                    pass  # the descriptor of the listing, closed by now
            emit(
                child_blob=hashlib.sha256(blob).hexdigest(),
                child_holder=hashlib.sha256(holder.data).hexdigest(),
                child_holder_type=type(holder).__name__,
                pyfork_files=[
                    name
                    for name in targets
                    if name.startswith("/memfd:") or "/pyfork-" in name
                ],
                child_modules=[
                    name for name in ("mmap", "pickle") if name in sys.modules
                ],
            )


        pyfork.init()
        blob = os.urandom(3 << 20)
        holder = Holder(os.urandom(2 << 20))
        spec = pyfork.Fork(check, transport=sys.argv[1])
        emit(
            returncode=spec.start(blob, holder).wait(),
            parent_blob=hashlib.sha256(blob).hexdigest(),
            parent_holder=hashlib.sha256(holder.data).hexdigest(),
        )
        """
    )

    run = run_script(source, transport)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 0, run.stderr
    assert output["child_blob"] == output["parent_blob"]
    assert output["child_holder"] == output["parent_holder"]
    assert output["child_holder_type"] == "Holder"
    # Only the result file is left: an anonymous one.
    assert output["pyfork_files"] == ["/memfd:pyfork (deleted)"]
    assert output["child_modules"] == []
    assert run.leftover_files() == []
