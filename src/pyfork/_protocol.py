"""The protocol between a parent and the child that it starts.

The marker is the environment variable ``PYFORK_CHILD``. Its value is
``VERSION:TOKEN:RESULT:fd:N`` when the payload is the inherited
descriptor N, or ``VERSION:TOKEN:RESULT:path:PATH`` when it is a named
file. TOKEN is 16 random bytes in hex, fresh for every fork, and the
payload header repeats it. RESULT is the inherited descriptor of the
result file, or empty when the parent wants no result.

The payload file is a 32-byte header (magic ``PYFORK``, protocol version,
body encoding, token, body size as an unsigned 64-bit little-endian
integer) followed by the body. The body is the tuple
``(name, args, kwargs, cwd, depth, argv)``, encoded with marshal when it has
only values of exact builtin types, and with pickle otherwise. marshal
needs no import in the child, while ``_pickle`` costs milliseconds
there (2.5 ms measured on the two-core VM of BENCHMARKS.md).

The result file is an anonymous file that the parent creates and the
child inherits. The child writes a record there, with the same header
and token: ``("started",)`` before it calls the function, then one of
``("returned", value)``, ``("exited", code)``, ``("raised", type_name,
message, traceback_text, pickled_exception)`` or
``("start_failed", message)``, each replacing the one before.

This module runs in every child before the function, so it imports
nothing beyond what the interpreter loads at start-up, and annotations
that need typing are strings instead of a ``from __future__`` import.
"""

import marshal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

PROTOCOL_VERSION = 1
TOKEN_SIZE = 16
HEADER_SIZE = 32
HEADER_MAGIC = b"PYFORK"

ENCODING_MARSHAL = 0
ENCODING_PICKLE = 1

#: Exit code of a child that could not start the function: the marker or
#: payload was missing, unreadable or rejected, the arguments failed to
#: unpickle, or the function is not registered in the child.
EXIT_START_FAILED = 121

#: Exit code of a child that exited without reaching ``pyfork.init()``, or
#: that called ``pyfork.fork()`` before it.
EXIT_NO_INIT = 122

#: Reasons a payload is rejected, by the PYFORK_E_* code of the C core.
CHECK_MESSAGES = {
    1: "is not a regular file",
    2: "is owned by another user",
    3: "has group or other permission bits set",
    4: "has more than one link",
    5: "has no pyfork header",
    6: "was written for another protocol version",
    7: "has a token that does not match the marker",
    8: "is truncated or has trailing bytes",
}
CHECK_NOT_REGULAR = 1
CHECK_OWNER = 2
CHECK_MODE = 3
CHECK_LINKS = 4
CHECK_MAGIC = 5
CHECK_VERSION = 6
CHECK_TOKEN = 7
CHECK_SIZE = 8

# Deeper payloads go through pickle. marshal itself stops at 2000 levels
# (CPython's MAX_MARSHAL_STACK_DEPTH), and pickle at the recursion limit.
_MARSHAL_MAX_DEPTH = 1500
# Larger payloads go through pickle rather than a slow walk in Python.
_MARSHAL_MAX_ITEMS = 10_000
# A child unpickles a payload body at least this large straight from its
# file, and maps any other body this large of an anonymous file instead of
# copying it. Requests whose strings and bytes add up to more go through
# pickle, which the parent streams into the file.
LARGE_BODY = 1 << 20
_MARSHAL_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes})


class PayloadError(Exception):
    """The marker or the payload is invalid. The message gives the reason."""


class Marker:
    """The parsed value of the marker variable."""

    __slots__ = ("fd", "path", "result_fd", "token")

    def __init__(
        self,
        token: bytes,
        fd: int | None,
        path: str | None,
        result_fd: int | None = None,
    ) -> None:
        self.token = token
        self.fd = fd
        self.path = path
        self.result_fd = result_fd


class Started:
    """The pid and result fd of a child, once a backend has started it.

    Fork.start() passes one to the backend's start(), which fills it as
    soon as the child exists, so that an exception that arrives before the
    Process exists, such as KeyboardInterrupt, cannot lose the child.
    """

    __slots__ = ("pid", "result_fd")

    def __init__(self) -> None:
        self.pid = -1
        self.result_fd = -1


def format_marker(
    token: bytes,
    fd: int | None,
    path: str | None,
    result_fd: int | None = None,
) -> str:
    """Return the marker value that points a child at its payload."""
    result = "" if result_fd is None else str(result_fd)
    prefix = f"{PROTOCOL_VERSION}:{token.hex()}:{result}"
    if path is not None:
        return f"{prefix}:path:{path}"
    return f"{prefix}:fd:{fd}"


def _is_fd(text: str) -> bool:
    # A descriptor is a C int, so at most 2**31 - 1.
    return text.isascii() and text.isdigit() and int(text) < 2**31


def parse_marker(value: str) -> Marker:
    """Parse a marker value. Raise PayloadError if it is invalid."""
    parts = value.split(":", 4)
    if len(parts) != 5:
        raise PayloadError(f"invalid marker {value!r}")
    version, token_hex, result, kind, reference = parts
    if version != str(PROTOCOL_VERSION):
        raise PayloadError(
            f"marker {value!r} is for protocol version {version}, but this "
            f"pyfork speaks version {PROTOCOL_VERSION}"
        )
    try:
        token = bytes.fromhex(token_hex)
    except ValueError:
        token = b""
    if len(token) != TOKEN_SIZE:
        raise PayloadError(f"invalid token in marker {value!r}")
    if result and not _is_fd(result):
        raise PayloadError(f"invalid result descriptor in marker {value!r}")
    result_fd = int(result) if result else None
    if kind == "fd" and _is_fd(reference):
        return Marker(token, int(reference), None, result_fd)
    if kind == "path" and reference.startswith("/"):
        return Marker(token, None, reference, result_fd)
    raise PayloadError(f"invalid payload reference in marker {value!r}")


def build_header(token: bytes, encoding: int, body_size: int) -> bytes:
    """Return the 32-byte payload header."""
    return b"".join(
        (
            HEADER_MAGIC,
            bytes((PROTOCOL_VERSION, encoding)),
            token,
            body_size.to_bytes(8, "little"),
        )
    )


def check_header(
    header: bytes | bytearray, token: bytes, file_size: int
) -> int:
    """Return the body encoding, or raise PayloadError for a bad header."""
    if len(header) < HEADER_SIZE:
        raise PayloadError(CHECK_MESSAGES[CHECK_SIZE])
    if header[:6] != HEADER_MAGIC:
        raise PayloadError(CHECK_MESSAGES[CHECK_MAGIC])
    if header[6] != PROTOCOL_VERSION:
        raise PayloadError(CHECK_MESSAGES[CHECK_VERSION])
    if header[8:24] != token:
        raise PayloadError(CHECK_MESSAGES[CHECK_TOKEN])
    body_size = int.from_bytes(header[24:32], "little")
    if file_size - HEADER_SIZE != body_size:
        raise PayloadError(CHECK_MESSAGES[CHECK_SIZE])
    return header[7]


def fits_marshal(value: object) -> bool:
    """Return whether marshal round-trips ``value`` exactly as pickle would,
    and the value is small enough for marshal to be the faster choice.

    marshal writes any buffer (bytearray, memoryview, array) as bytes and
    accepts code objects, so only exact builtin types qualify.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    # Every item pushed counts, so a large container is rejected before
    # its items are copied onto the stack.
    budget = _MARSHAL_MAX_ITEMS
    size_budget = LARGE_BODY
    while stack:
        item, depth = stack.pop()
        if depth > _MARSHAL_MAX_DEPTH:
            return False
        kind = type(item)
        if kind is str or kind is bytes:
            size_budget -= len(item)
            if size_budget < 0:
                return False
            continue
        if kind in _MARSHAL_ATOMS:
            continue
        if kind is tuple or kind is list or kind is set or kind is frozenset:
            budget -= len(item)
            if budget < 0:
                return False
            stack.extend((child, depth + 1) for child in item)
        elif kind is dict:
            budget -= 2 * len(item)
            if budget < 0:
                return False
            for key, child in item.items():
                stack.append((key, depth + 1))
                stack.append((child, depth + 1))
        else:
            return False
    return True


def encode_body(
    request: "tuple[Any, ...]", use_marshal: bool | None = None
) -> tuple[int, bytes]:
    """Encode a request or a record. Return the encoding and the body.

    ``use_marshal`` is what fits_marshal() returns for the request, when
    the caller has it already. Raises whatever pickle raises for a value
    that cannot be pickled.
    """
    if use_marshal is None:
        use_marshal = fits_marshal(request)
    if use_marshal:
        return ENCODING_MARSHAL, marshal.dumps(request)
    try:
        from _pickle import dumps
    except ImportError:  # pragma: no cover - CPython always has _pickle
        from pickle import dumps
    # Protocol -1 is the highest that this interpreter supports.
    return ENCODING_PICKLE, dumps(request, protocol=-1)


RECORD_STARTED = "started"
RECORD_RETURNED = "returned"
RECORD_EXITED = "exited"
RECORD_RAISED = "raised"
RECORD_START_FAILED = "start_failed"


def stream_body(fd: int, request: "tuple[Any, ...]") -> int:
    """Pickle ``request`` into ``fd`` after the header. Return its size.

    Large bytes and str objects go to the file without an extra copy in
    memory, which ``encode_body()`` would make. Raises what pickle raises.
    """
    import os
    from pickle import dump

    os.lseek(fd, HEADER_SIZE, os.SEEK_SET)
    with open(fd, "wb", closefd=False) as stream:
        dump(request, stream, protocol=-1)
    return os.lseek(fd, 0, os.SEEK_CUR) - HEADER_SIZE


def map_body(fd: int, body_size: int) -> memoryview:
    """Map the body of an anonymous payload file instead of copying it."""
    import mmap

    mapping = mmap.mmap(fd, HEADER_SIZE + body_size, prot=mmap.PROT_READ)
    return memoryview(mapping)[HEADER_SIZE:]


def open_body(fd: int) -> "BinaryIO":
    """Return a file that reads the body of payload file ``fd``.

    The file takes over ``fd`` and closes it when it is closed. Unpickling
    from it reads each large bytes object straight into the new object,
    so the child neither faults in nor unmaps a mapping of the file. For a
    100 MB bytes argument that saved about 12 ms per child on the two-core
    VM of BENCHMARKS.md. The buffered reader repeats the short reads that
    Linux makes of 2 GiB or more, which pickle would take for truncation.
    The fd is made close-on-exec first, since unpickling runs user code
    that may start programs.
    """
    import os

    os.set_inheritable(fd, False)
    os.lseek(fd, HEADER_SIZE, os.SEEK_SET)
    return open(fd, "rb")


def decode_body(
    encoding: int, body: "bytes | bytearray | memoryview | BinaryIO"
) -> object:
    """Decode a body, held in memory or in a file from ``open_body()``.

    Closes a file once it is decoded. Raises what marshal or pickle raises
    for bad data, and OSError when the file cannot be read.
    """
    if isinstance(body, (bytes, bytearray, memoryview)):
        return _decode_buffer(encoding, body)
    with body:
        if encoding == ENCODING_MARSHAL:
            return marshal.load(body)
        if encoding == ENCODING_PICKLE:
            try:
                from _pickle import load
            except ImportError:  # pragma: no cover - CPython has _pickle
                from pickle import load
            return load(body)
    raise PayloadError(f"unknown body encoding {encoding}")


def _decode_buffer(
    encoding: int, body: bytes | bytearray | memoryview
) -> object:
    if encoding == ENCODING_MARSHAL:
        return marshal.loads(body)
    if encoding == ENCODING_PICKLE:
        try:
            from _pickle import loads
        except ImportError:  # pragma: no cover - CPython always has _pickle
            from pickle import loads
        return loads(body)
    raise PayloadError(f"unknown body encoding {encoding}")
