"""Property tests of the payload reader and of the body encoding.

read_payload() of both backends runs in pytest's own process on files
that the tests write: random bytes, truncated and bit-flipped payloads,
and payloads with a wrong token. Each result is compared with a model of
the header check, so the reader must raise PayloadError exactly when the
model rejects the file and must otherwise return exactly the file's
encoding byte and body. No test here forks.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfork import _cbackend, _pybackend
from pyfork._protocol import (
    CHECK_MESSAGES,
    CHECK_TOKEN,
    ENCODING_MARSHAL,
    ENCODING_PICKLE,
    HEADER_MAGIC,
    HEADER_SIZE,
    PROTOCOL_VERSION,
    TOKEN_SIZE,
    Marker,
    PayloadError,
    build_header,
    decode_body,
    encode_body,
)

BACKEND_MODULES = [
    pytest.param(_cbackend, id="c"),
    pytest.param(_pybackend, id="python"),
]
TRANSPORTS = ["anonymous", "named"]
TOKEN = bytes.fromhex("00112233445566778899aabbccddeeff")

# Header bytes whose change the reader must detect: everything except the
# encoding byte at offset 7, which decode_body() checks later.
CHECKED_HEADER_BYTES = frozenset(range(HEADER_SIZE)) - {7}

_file_numbers = itertools.count()


@pytest.fixture(scope="module")
def payload_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for named payload files, shared by a module's examples."""
    return tmp_path_factory.mktemp("payloads")


def _model_read(data: bytes, token: bytes) -> tuple[int, bytes] | None:
    """Return what a correct reader returns for ``data``, or None to reject.

    The model follows the header layout in pyfork._protocol: magic,
    version, encoding byte, token and a little-endian u64 body size, which
    must match the file size.
    """
    if len(data) < HEADER_SIZE:
        return None
    if data[:6] != HEADER_MAGIC or data[6] != PROTOCOL_VERSION:
        return None
    if data[8:24] != token:
        return None
    body_size = int.from_bytes(data[24:32], "little")
    if len(data) - HEADER_SIZE != body_size:
        return None
    return data[7], data[HEADER_SIZE:]


def _create_file(
    transport: str, directory: Path, data: bytes, size: int | None = None
) -> tuple[Marker, Path | None]:
    """Write ``data`` to a new payload file and return its marker and path.

    ``size`` extends the file with a hole to that many bytes. An anonymous
    file is a memfd whose fd the marker names.
    """
    if transport == "anonymous":
        fd = os.memfd_create("pyfork-test", os.MFD_CLOEXEC)
        path = None
    else:
        path = directory / f"payload-{os.getpid()}-{next(_file_numbers)}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, data)
        if size is not None:
            os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    if path is None:
        return Marker(TOKEN, fd, None), None
    os.close(fd)
    return Marker(TOKEN, None, str(path)), path


def _read(
    module: ModuleType,
    transport: str,
    directory: Path,
    data: bytes,
    size: int | None = None,
) -> tuple[int, bytes] | None:
    """Return what read_payload() returns, or None when it raised PayloadError.

    Any other exception propagates. Also checks that read_payload() closed
    an anonymous file's fd and removed a named file only when it accepted
    the file.
    """
    marker, path = _create_file(transport, directory, data, size)
    try:
        try:
            encoding, body = module.read_payload(marker)
        except PayloadError:
            result = None
        else:
            assert type(body) is bytearray
            result = (encoding, bytes(body))
        if marker.fd is not None:
            with pytest.raises(OSError, match="Bad file descriptor") as closed:
                os.fstat(marker.fd)
            assert closed.value.errno == errno.EBADF
        if path is not None:
            assert path.exists() == (result is None)
        return result
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


def _payload(token: bytes, encoding: int, body: bytes) -> bytes:
    return build_header(token, encoding, len(body)) + body


# Files that are close to payloads: every header field is either right or
# random, so that the checks after the magic are reached too.
tokens = st.one_of(st.just(TOKEN), st.binary(min_size=16, max_size=16))
payload_like = st.builds(
    lambda magic, version, encoding, token, size, body: (
        magic + bytes((version, encoding)) + token + size + body
    ),
    st.one_of(st.just(HEADER_MAGIC), st.binary(min_size=6, max_size=6)),
    st.one_of(st.just(PROTOCOL_VERSION), st.integers(0, 255)),
    st.integers(0, 255),
    tokens,
    st.one_of(
        st.integers(0, 64).map(lambda n: n.to_bytes(8, "little")),
        st.binary(min_size=8, max_size=8),
    ),
    st.binary(max_size=64),
)
valid_payloads = st.builds(
    _payload, st.just(TOKEN), st.integers(0, 255), st.binary(max_size=256)
)

reader_settings = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("module", BACKEND_MODULES)
@reader_settings
@given(data=st.one_of(st.binary(max_size=128), payload_like))
def test_random_file_matches_model(
    module: ModuleType, transport: str, payload_dir: Path, data: bytes
) -> None:
    """Any file is rejected with PayloadError or read as the model predicts."""
    result = _read(module, transport, payload_dir, data)

    assert result == _model_read(data, TOKEN)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("module", BACKEND_MODULES)
@reader_settings
@given(payload=valid_payloads, cut=st.integers(min_value=1))
def test_truncated_payload_rejected(
    module: ModuleType,
    transport: str,
    payload_dir: Path,
    payload: bytes,
    cut: int,
) -> None:
    """A payload that lost any number of its last bytes is rejected."""
    truncated = payload[: -min(cut, len(payload))]

    assert _read(module, transport, payload_dir, truncated) is None


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("module", BACKEND_MODULES)
@reader_settings
@given(payload=valid_payloads, extra=st.binary(min_size=1, max_size=64))
def test_trailing_bytes_rejected(
    module: ModuleType,
    transport: str,
    payload_dir: Path,
    payload: bytes,
    extra: bytes,
) -> None:
    """A payload with bytes after the body that it counts is rejected."""
    assert _read(module, transport, payload_dir, payload + extra) is None


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("module", BACKEND_MODULES)
@reader_settings
@given(
    payload=valid_payloads,
    flips=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(1, 255)),
        min_size=1,
        max_size=8,
    ),
)
def test_bit_flips_detected_in_header(
    module: ModuleType,
    transport: str,
    payload_dir: Path,
    payload: bytes,
    flips: list[tuple[int, int]],
) -> None:
    """Flipped header bits are rejected, flipped body bits are read back.

    The header has no checksum of the body, so a flip in the body (or in
    the encoding byte) must come back unchanged, with the size intact.
    """
    mutated = bytearray(payload)
    for position, mask in flips:
        mutated[position % len(mutated)] ^= mask
    changed = {i for i in range(len(payload)) if mutated[i] != payload[i]}

    result = _read(module, transport, payload_dir, bytes(mutated))

    if changed & CHECKED_HEADER_BYTES:
        assert result is None
    else:
        assert result == (mutated[7], bytes(mutated[HEADER_SIZE:]))


def _bytes_read_by_process() -> int:
    """Return rchar of /proc/self/io: bytes that this process has read."""
    with open("/proc/self/io", encoding="ascii") as io_file:
        for line in io_file:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar line in /proc/self/io")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("module", BACKEND_MODULES)
@reader_settings
@given(
    token=st.binary(min_size=TOKEN_SIZE, max_size=TOKEN_SIZE).filter(
        lambda token: token != TOKEN
    ),
    encoding=st.integers(0, 255),
    body_size=st.one_of(st.integers(0, 1 << 20), st.integers(0, 1 << 40)),
)
def test_token_mismatch_rejected_before_body(
    module: ModuleType,
    transport: str,
    payload_dir: Path,
    *,
    token: bytes,
    encoding: int,
    body_size: int,
) -> None:
    """A wrong token is rejected after the header, before any body read.

    The file has exactly the size in its header, up to 1 TiB with a
    hole, so only the token is wrong. A reader that allocated or read the
    body first would raise MemoryError or read far more than the header.
    """
    header = build_header(token, encoding, body_size)
    marker, path = _create_file(
        transport, payload_dir, header, HEADER_SIZE + body_size
    )
    try:
        before = _bytes_read_by_process()
        with pytest.raises(PayloadError) as raised:
            module.read_payload(marker)
        after = _bytes_read_by_process()

        assert CHECK_MESSAGES[CHECK_TOKEN] in str(raised.value)
        # The header plus the second read of /proc/self/io, with margin.
        assert after - before <= HEADER_SIZE + 4096
        if path is not None:
            assert path.exists()
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


# Body encoding


def _exactly_equal(a: object, b: object) -> bool:
    """Return whether ``b`` is ``a`` rebuilt: the same types and values.

    Floats compare by their bits, so NaN equals the same NaN and 0.0
    differs from -0.0. Dicts compare in insertion order, which marshal
    and pickle keep. Set items are matched one to one, in any order.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, (float, complex)):
        return _number_bits(a) == _number_bits(b)
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return _items_equal(list(a.items()), list(b.items()))
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple))
        return _items_equal(a, b)
    if isinstance(a, (set, frozenset)):
        assert isinstance(b, (set, frozenset))
        return _set_items_equal(a, b)
    return a == b


def _number_bits(number: object) -> bytes:
    assert isinstance(number, (float, complex))
    return struct.pack("<dd", number.real, number.imag)


def _items_equal(a: Sequence[object], b: Sequence[object]) -> bool:
    if len(a) != len(b):
        return False
    return all(_exactly_equal(x, y) for x, y in zip(a, b, strict=True))


def _set_items_equal(a: Iterable[object], b: Iterable[object]) -> bool:
    unmatched = list(b)
    for item in a:
        for i, candidate in enumerate(unmatched):
            if _exactly_equal(item, candidate):
                del unmatched[i]
                break
        else:
            return False
    return not unmatched


def _contains_bytearray(value: object) -> bool:
    if isinstance(value, bytearray):
        return True
    if isinstance(value, dict):
        return any(_contains_bytearray(item) for item in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_contains_bytearray(item) for item in value)
    return False


hashable_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(),
    st.complex_numbers(),
    # Lone surrogates too, which marshal and pickle both carry.
    st.text(st.characters(exclude_categories=())),
    st.binary(),
)
hashables = st.recursive(
    hashable_atoms,
    lambda items: st.one_of(
        st.lists(items, max_size=4).map(tuple),
        st.frozensets(items, max_size=4),
    ),
    max_leaves=8,
)
# bytearray is not of a type that marshal round-trips, so it sends the
# whole value through pickle.
builtin_values = st.recursive(
    st.one_of(hashable_atoms, st.binary().map(bytearray)),
    lambda items: st.one_of(
        st.lists(items, max_size=6),
        st.lists(items, max_size=6).map(tuple),
        st.dictionaries(hashables, items, max_size=6),
        st.sets(hashables, max_size=6),
        st.frozensets(hashables, max_size=6),
    ),
    max_leaves=40,
)


@settings(deadline=None)
@given(value=builtin_values)
def test_body_round_trip_exact(value: object) -> None:
    """decode_body(encode_body(v)) rebuilds v with exactly its types."""
    request = ("name", (value,), {"keyword": value}, "/", 1)

    encoding, body = encode_body(request)
    decoded = decode_body(encoding, bytearray(body))

    expected_encoding = (
        ENCODING_PICKLE if _contains_bytearray(value) else ENCODING_MARSHAL
    )
    assert encoding == expected_encoding
    assert _exactly_equal(request, decoded)


@settings(deadline=None)
@given(value=builtin_values)
def test_body_round_trip_from_bytes(value: object) -> None:
    """A body decodes the same from bytes as from a bytearray."""
    encoding, body = encode_body((value,))

    assert _exactly_equal((value,), decode_body(encoding, body))


def test_exactly_equal_distinguishes() -> None:
    """The comparison of the round-trip tests distinguishes unequal values."""
    assert _exactly_equal(math.nan, math.nan)
    assert not _exactly_equal(0.0, -0.0)
    assert not _exactly_equal(1, True)
    assert not _exactly_equal(b"x", bytearray(b"x"))
    assert not _exactly_equal((1,), [1])
    assert not _exactly_equal({1: 2, 3: 4}, {3: 4, 1: 2})
    assert _exactly_equal({1, 2}, {2, 1})
    assert not _exactly_equal(frozenset({1}), frozenset({True}))
