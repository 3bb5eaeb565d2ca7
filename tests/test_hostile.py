"""A child's start-up with a hostile or broken payload.

Each test crafts a payload file, or puts something else at the payload
path, and starts a real child: the script runs with the marker in its
environment, as if a parent had forked it, and without a result file.
The script registers ``victim``, which prints RAN, and defines
``Canary``, whose ``__setstate__`` prints UNPICKLED. A rejected payload
must do neither, and must leave the files at the path alone.
"""

from __future__ import annotations

import errno
import marshal
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ScriptRun, ScriptRunner

import pyfork
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
    HEADER_SIZE,
    PROTOCOL_VERSION,
    TOKEN_SIZE,
    build_header,
    encode_body,
)

VICTIM_SCRIPT = """\
import pyfork


class Canary:
    def __setstate__(self, state):
        print("UNPICKLED", flush=True)
        self.__dict__.update(state)


@pyfork.register
def victim(*args):
    print("RAN", flush=True)


pyfork.init()
"""

# Seconds a child may take to reject its payload. Only a hang reaches it.
CHILD_TIMEOUT = 30

# The uid of "nobody" on Linux, which owns no file that the tests create.
OTHER_UID = 65534

# A descriptor number that no child has open at start-up.
CLOSED_FD = 4321


@dataclass(frozen=True)
class Payload:
    """A payload request, encoded but not yet written to a file."""

    token: bytes
    encoding: int
    body: bytes

    def to_bytes(self, token: bytes | None = None) -> bytes:
        """Return the header and the body, with ``token`` in the header."""
        header = build_header(
            self.token if token is None else token,
            self.encoding,
            len(self.body),
        )
        return header + self.body


def victim_request(args: object, cwd: Path) -> tuple[object, ...]:
    """Return the request tuple that runs victim with ``args`` in ``cwd``."""
    return ("victim", args, {}, str(cwd), 1, [str(cwd / "app.py")])


def pickle_request(
    monkeypatch: pytest.MonkeyPatch, class_name: str, cwd: Path
) -> bytes:
    """Pickle a request to run victim with a ``__main__.<class_name>``.

    The class exists in pytest's ``__main__`` module only while pickling,
    so pickle writes the same reference that the child's script resolves.
    """
    argument_class = type(class_name, (), {"__module__": "__main__"})
    argument = argument_class()
    # A non-empty __dict__ makes unpickling call __setstate__.
    argument.label = "canary"
    with monkeypatch.context() as patch:
        patch.setattr(
            sys.modules["__main__"], class_name, argument_class, raising=False
        )
        encoding, body = encode_body(victim_request((argument,), cwd))
    assert encoding == ENCODING_PICKLE
    return body


@pytest.fixture
def payload(
    monkeypatch: pytest.MonkeyPatch, run_script: ScriptRunner
) -> Payload:
    """A valid payload that runs victim with a Canary argument."""
    body = pickle_request(monkeypatch, "Canary", run_script.directory)
    return Payload(os.urandom(TOKEN_SIZE), ENCODING_PICKLE, body)


@pytest.fixture
def payload_dir(tmp_path: Path) -> Path:
    """An empty directory for payload files, apart from the run's TMPDIR."""
    directory = tmp_path / "payloads"
    directory.mkdir(mode=0o700)
    return directory


def write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` with ``data`` and exactly ``mode``, despite umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.chmod(path, mode)


def path_marker(token: bytes, path: Path | str) -> str:
    """Return the marker of a named payload, with no result file."""
    return f"{PROTOCOL_VERSION}:{token.hex()}::path:{path}"


def start_child(run_script: ScriptRunner, marker: str) -> ScriptRun:
    """Run the victim script as a child that ``marker`` points at."""
    return run_script(
        VICTIM_SCRIPT, env={MARKER: marker}, timeout=CHILD_TIMEOUT
    )


def assert_start_failed(run: ScriptRun, message: str) -> None:
    """Check that the child rejected its start with ``message``."""
    assert run.returncode == pyfork.EXIT_START_FAILED, run.stderr
    assert message in run.stderr
    assert "RAN" not in run.stdout
    assert "UNPICKLED" not in run.stdout


def listing(directory: Path) -> list[str]:
    """Return the sorted names in ``directory``."""
    return sorted(os.listdir(directory))


# An accepted payload


def test_valid_payload_runs_and_removed(
    run_script: ScriptRunner, payload: Payload, payload_dir: Path
) -> None:
    """A valid payload unpickles, runs victim, and is removed."""
    path = payload_dir / "pyfork-valid"
    write_file(path, payload.to_bytes())

    run = start_child(run_script, path_marker(payload.token, path))

    assert run.returncode == 0, run.stderr
    assert run.stdout == "UNPICKLED\nRAN\n"
    assert run.stderr == ""
    assert not os.path.lexists(path)


def test_marshal_payload_runs(
    run_script: ScriptRunner, payload_dir: Path
) -> None:
    """A valid marshal payload runs victim, as the unusable bodies do not."""
    token = os.urandom(TOKEN_SIZE)
    body = marshal.dumps(victim_request((), run_script.directory))
    path = payload_dir / "pyfork-marshal"
    write_file(path, Payload(token, ENCODING_MARSHAL, body).to_bytes())

    run = start_child(run_script, path_marker(token, path))

    assert run.returncode == 0, run.stderr
    assert run.stdout == "RAN\n"
    assert not os.path.lexists(path)


# Hostile files at the payload path. Each function puts something at
# `path` that the child must reject, next to a valid payload where the
# case needs one.


def place_symlink(path: Path, payload: Payload) -> None:
    target = path.with_name("target")
    write_file(target, payload.to_bytes())
    path.symlink_to(target)


def place_group_readable(path: Path, payload: Payload) -> None:
    write_file(path, payload.to_bytes(), mode=0o640)


def place_other_readable(path: Path, payload: Payload) -> None:
    write_file(path, payload.to_bytes(), mode=0o604)


def place_hard_link(path: Path, payload: Payload) -> None:
    target = path.with_name("target")
    write_file(target, payload.to_bytes())
    os.link(target, path)


def place_other_owner(path: Path, payload: Payload) -> None:
    write_file(path, payload.to_bytes())
    os.chown(path, OTHER_UID, OTHER_UID)


def place_other_token(path: Path, payload: Payload) -> None:
    other_token = bytes(byte ^ 0xFF for byte in payload.token)
    write_file(path, payload.to_bytes(token=other_token))


def place_empty_file(path: Path, payload: Payload) -> None:
    write_file(path, b"")


def place_partial_header(path: Path, payload: Payload) -> None:
    write_file(path, payload.to_bytes()[: HEADER_SIZE // 2])


def place_header_only(path: Path, payload: Payload) -> None:
    write_file(path, payload.to_bytes()[:HEADER_SIZE])


def place_cut_body(path: Path, payload: Payload) -> None:
    write_file(path, payload.to_bytes()[:-1])


def place_trailing_garbage(path: Path, payload: Payload) -> None:
    write_file(path, payload.to_bytes() + b"garbage")


def place_bad_magic(path: Path, payload: Payload) -> None:
    write_file(path, b"PYFORX" + payload.to_bytes()[6:])


def place_other_version(path: Path, payload: Payload) -> None:
    data = payload.to_bytes()
    write_file(path, data[:6] + bytes((PROTOCOL_VERSION + 1,)) + data[7:])


def place_nothing(path: Path, payload: Payload) -> None:
    pass


def place_directory(path: Path, payload: Payload) -> None:
    path.mkdir(mode=0o700)


def place_fifo(path: Path, payload: Payload) -> None:
    os.mkfifo(path, 0o600)


def rejection_message(check: int) -> str:
    """Return the message template of a failed check on ``{path}``."""
    return "payload file {path} " + CHECK_MESSAGES[check]


NEEDS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason="chown to another user needs root"
)

HOSTILE_FILES = [
    pytest.param(
        place_symlink,
        "payload file {path} is a symbolic link",
        id="symlink",
    ),
    pytest.param(
        place_group_readable, rejection_message(CHECK_MODE), id="mode-0640"
    ),
    pytest.param(
        place_other_readable, rejection_message(CHECK_MODE), id="mode-0604"
    ),
    pytest.param(
        place_hard_link, rejection_message(CHECK_LINKS), id="hard-link"
    ),
    pytest.param(
        place_other_owner,
        rejection_message(CHECK_OWNER),
        id="other-owner",
        marks=NEEDS_ROOT,
    ),
    pytest.param(
        place_other_token, rejection_message(CHECK_TOKEN), id="token-mismatch"
    ),
    pytest.param(place_empty_file, rejection_message(CHECK_SIZE), id="empty"),
    pytest.param(
        place_partial_header,
        rejection_message(CHECK_SIZE),
        id="partial-header",
    ),
    pytest.param(
        place_header_only, rejection_message(CHECK_SIZE), id="header-only"
    ),
    pytest.param(place_cut_body, rejection_message(CHECK_SIZE), id="cut-body"),
    pytest.param(
        place_trailing_garbage,
        rejection_message(CHECK_SIZE),
        id="trailing-garbage",
    ),
    pytest.param(
        place_bad_magic, rejection_message(CHECK_MAGIC), id="bad-magic"
    ),
    pytest.param(
        place_other_version,
        rejection_message(CHECK_VERSION),
        id="other-version",
    ),
    pytest.param(
        place_nothing,
        "cannot open payload file {path}: " + os.strerror(errno.ENOENT),
        id="missing",
    ),
    pytest.param(
        place_directory, rejection_message(CHECK_NOT_REGULAR), id="directory"
    ),
    pytest.param(place_fifo, rejection_message(CHECK_NOT_REGULAR), id="fifo"),
]


@pytest.mark.parametrize(("place", "message"), HOSTILE_FILES)
def test_hostile_file_rejected(
    run_script: ScriptRunner,
    payload: Payload,
    payload_dir: Path,
    place: Callable[[Path, Payload], None],
    message: str,
) -> None:
    """The child exits with EXIT_START_FAILED and names the failed check."""
    path = payload_dir / "pyfork-hostile"
    place(path, payload)
    before = listing(payload_dir)

    run = start_child(run_script, path_marker(payload.token, path))

    assert_start_failed(run, message.format(path=path))
    # Only a payload that passes every check is removed.
    assert listing(payload_dir) == before


def test_device_file_rejected(
    run_script: ScriptRunner, payload: Payload
) -> None:
    """A marker that names /dev/null is rejected, and the device stays."""
    run = start_child(run_script, path_marker(payload.token, "/dev/null"))

    message = rejection_message(CHECK_NOT_REGULAR).format(path="/dev/null")
    assert_start_failed(run, message)
    assert os.path.exists("/dev/null")


# Payloads that pass the checks but hold no usable request


def test_unknown_class_rejected(
    monkeypatch: pytest.MonkeyPatch,
    run_script: ScriptRunner,
    payload_dir: Path,
) -> None:
    """Arguments whose class is missing in the child fail to decode."""
    body = pickle_request(monkeypatch, "NoSuchClass", run_script.directory)
    token = os.urandom(TOKEN_SIZE)
    path = payload_dir / "pyfork-unknown-class"
    write_file(path, Payload(token, ENCODING_PICKLE, body).to_bytes())

    run = start_child(run_script, path_marker(token, path))

    assert_start_failed(run, "cannot decode the arguments: AttributeError")
    assert "NoSuchClass" in run.stderr
    # The file passed every check, so the child removed it before decoding.
    assert not os.path.lexists(path)


UNUSABLE_BODIES = [
    pytest.param(
        ENCODING_PICKLE,
        b"not a pickle",
        "cannot decode the arguments: UnpicklingError",
        id="not-pickle",
    ),
    pytest.param(
        9,
        marshal.dumps(victim_request((), Path("/"))),
        "cannot decode the arguments: PayloadError: unknown body encoding 9",
        id="unknown-encoding",
    ),
    pytest.param(
        ENCODING_MARSHAL,
        marshal.dumps(42),
        "the payload does not hold a pyfork request",
        id="not-request",
    ),
    pytest.param(
        ENCODING_MARSHAL,
        marshal.dumps(victim_request([], Path("/"))),
        "the payload does not hold a pyfork request",
        id="args-not-tuple",
    ),
]


@pytest.mark.parametrize(("encoding", "body", "message"), UNUSABLE_BODIES)
def test_unusable_body_rejected(
    run_script: ScriptRunner,
    payload_dir: Path,
    encoding: int,
    body: bytes,
    message: str,
) -> None:
    """A body that is not a request exits with EXIT_START_FAILED."""
    token = os.urandom(TOKEN_SIZE)
    path = payload_dir / "pyfork-unusable"
    write_file(path, Payload(token, encoding, body).to_bytes())

    run = start_child(run_script, path_marker(token, path))

    assert_start_failed(run, message)
    assert not os.path.lexists(path)


# Malformed markers, next to a valid payload that the child must not touch


MALFORMED_MARKERS = [
    pytest.param(
        "{version}:" + "zz" * TOKEN_SIZE + "::path:{path}",
        "invalid token in marker",
        id="token-not-hex",
    ),
    pytest.param(
        "{version}:abcd::path:{path}",
        "invalid token in marker",
        id="token-short",
    ),
    pytest.param(
        "{version}:{token}::path", "invalid marker", id="four-fields"
    ),
    pytest.param(
        "{version}:{token}:{path}", "invalid marker", id="three-fields"
    ),
    pytest.param("", "invalid marker", id="empty"),
    pytest.param(
        "{other_version}:{token}::path:{path}",
        "is for protocol version {other_version}",
        id="other-version",
    ),
    pytest.param(
        "{version}:{token}::path:pyfork-relative",
        "invalid payload reference",
        id="relative-path",
    ),
    pytest.param(
        "{version}:{token}::pipe:{path}",
        "invalid payload reference",
        id="unknown-kind",
    ),
    pytest.param(
        "{version}:{token}::fd:three",
        "invalid payload reference",
        id="fd-not-number",
    ),
    pytest.param(
        "{version}:{token}:x:path:{path}",
        "invalid result descriptor",
        id="result-not-number",
    ),
]


@pytest.mark.parametrize(("template", "message"), MALFORMED_MARKERS)
def test_malformed_marker_rejected(
    run_script: ScriptRunner,
    payload: Payload,
    payload_dir: Path,
    template: str,
    message: str,
) -> None:
    """A malformed marker fails the start and leaves the payload alone."""
    path = payload_dir / "pyfork-valid"
    write_file(path, payload.to_bytes())
    values = {
        "version": PROTOCOL_VERSION,
        "other_version": PROTOCOL_VERSION + 1,
        "token": payload.token.hex(),
        "path": path,
    }

    run = start_child(run_script, template.format(**values))

    assert_start_failed(run, "invalid marker")
    assert message.format(**values) in run.stderr
    assert listing(payload_dir) == ["pyfork-valid"]


def test_closed_fd_rejected(
    run_script: ScriptRunner, payload: Payload
) -> None:
    """An fd marker that names a descriptor that is not open is rejected."""
    marker = f"{PROTOCOL_VERSION}:{payload.token.hex()}::fd:{CLOSED_FD}"

    run = start_child(run_script, marker)

    reason = os.strerror(errno.EBADF)
    expected = f"cannot read payload descriptor {CLOSED_FD}: {reason}"
    assert_start_failed(run, expected)
