"""Turn a child's exit code and result record into a value or ChildError."""

from __future__ import annotations

from ._errors import ChildError
from ._protocol import (
    EXIT_NO_INIT,
    EXIT_START_FAILED,
    RECORD_EXITED,
    RECORD_RAISED,
    RECORD_RETURNED,
    RECORD_START_FAILED,
    RECORD_STARTED,
    decode_body,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

# Lines of a captured stderr that a ChildError quotes.
_STDERR_TAIL_LINES = 10

#: ChildError.stage values, in the order a child goes through them.
STAGE_NO_INIT = "no_init"
STAGE_START = "start"
STAGE_RAISED = "raised"
STAGE_EXIT = "exit"
STAGE_SIGNAL = "signal"
STAGE_RESULT = "result"


class Outcome:
    """The outcome of one child: a return value, or a failure to report."""

    __slots__ = ("_cause", "_error", "_value")

    def __init__(
        self,
        value: Any = None,
        error: dict[str, Any] | None = None,
        cause: BaseException | None = None,
    ) -> None:
        self._value = value
        self._error = error
        self._cause = cause

    @property
    def error(self) -> dict[str, Any] | None:
        """The keyword arguments of the ChildError to raise, or None."""
        return self._error

    def unwrap(self) -> Any:
        """Return the value, or raise a new ChildError for the failure."""
        if self._error is None:
            return self._value
        raise ChildError(**self._error) from self._cause


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _failure(
    stage: str, message: str, pid: int, name: str, returncode: int
) -> dict[str, Any]:
    return {
        "message": f"child {pid} running {name!r}: {message}",
        "stage": stage,
        "pid": pid,
        "name": name,
        "returncode": returncode,
    }


def _raised(
    record: tuple[Any, ...], pid: int, name: str, returncode: int
) -> Outcome:
    _, type_name, text, traceback_text, pickled = record
    error = _failure(
        STAGE_RAISED,
        f"{type_name}: {text}\n\nRemote traceback:\n{traceback_text}",
        pid,
        name,
        returncode,
    )
    error.update(
        remote_type=type_name,
        remote_message=text,
        remote_traceback=traceback_text,
    )
    cause = None
    if pickled is not None:
        try:
            from pickle import loads

            loaded = loads(pickled)
        except Exception:
            loaded = None  # e.g. a constructor that needs more arguments
        if isinstance(loaded, BaseException):
            cause = loaded
    return Outcome(error=error, cause=cause)


def _without_record(pid: int, name: str, returncode: int) -> Outcome:
    if returncode == EXIT_START_FAILED:
        message = (
            "the child could not start the function (exit code "
            f"{returncode}); its stderr shows the reason"
        )
        stage = STAGE_START
    elif returncode == EXIT_NO_INIT:
        message = (
            f"the child exited with code {returncode} before it reached "
            "pyfork.init(), or called fork() before it; its stderr shows "
            "which"
        )
        stage = STAGE_NO_INIT
    else:
        message = (
            f"the child exited with code {returncode} before it reached "
            "pyfork.init(), for example after an error at import"
        )
        stage = STAGE_NO_INIT
    return Outcome(error=_failure(stage, message, pid, name, returncode))


def classify(
    record: tuple[Any, ...] | None, pid: int, name: str, returncode: int
) -> Outcome:
    """Return the outcome that a record and an exit code describe."""
    if returncode < 0:
        signal_name = _signal_name(-returncode)
        message = f"the child was killed by {signal_name}"
        return Outcome(
            error=_failure(STAGE_SIGNAL, message, pid, name, returncode)
        )
    if record is None:
        return _without_record(pid, name, returncode)

    kind = record[0]
    if kind == RECORD_RAISED:
        return _raised(record, pid, name, returncode)
    if kind == RECORD_START_FAILED:
        return Outcome(
            error=_failure(STAGE_START, record[1], pid, name, returncode)
        )
    # sys.exit(0) and sys.exit(None) in the function count as success.
    succeeded = kind == RECORD_RETURNED or record == (RECORD_EXITED, 0)
    if succeeded and returncode == 0:
        return Outcome(value=record[1] if kind == RECORD_RETURNED else None)
    return _exit_failure(record, pid, name, returncode)


def _exit_failure(
    record: tuple[Any, ...], pid: int, name: str, returncode: int
) -> Outcome:
    """Describe a child that stopped or exited without a usable result."""
    kind = record[0]
    if kind == RECORD_EXITED:
        message = f"the function called sys.exit({record[1]!r})"
    elif kind == RECORD_STARTED:
        message = (
            f"the child exited with code {returncode} while the function "
            "ran, without returning (os._exit() or a crash)"
        )
    else:
        message = (
            f"the function returned, but the child then exited with code "
            f"{returncode}"
        )
    return Outcome(error=_failure(STAGE_EXIT, message, pid, name, returncode))


class RawRecord:
    """The undecoded contents of a result file, or why it cannot be read."""

    __slots__ = ("body", "encoding", "error")

    def __init__(
        self,
        encoding: int = 0,
        body: bytes | bytearray | memoryview | None = None,
        error: Exception | None = None,
    ) -> None:
        self.encoding = encoding
        self.body = body
        self.error = error


def read_record(backend: ModuleType, fd: int, token: bytes) -> RawRecord:
    """Read the record in the result file ``fd`` without decoding it."""
    try:
        raw = backend.read_record(fd, token)
    except Exception as error:
        return RawRecord(error=error)
    if raw is None:
        return RawRecord()
    return RawRecord(raw[0], raw[1])


def classify_record(
    raw: RawRecord,
    *,
    pid: int,
    name: str,
    returncode: int,
    status_lost: bool,
    stderr: bytes | None,
) -> Outcome:
    """Decode a record and classify it with the child's exit code.

    ``status_lost`` means that the exit code is unknown (someone else
    reaped the child), so only the record counts. ``stderr`` is what
    communicate() captured; a failure before the function started quotes
    its last lines.
    """
    if returncode < 0:
        # A signal death is never hidden behind an unreadable record.
        return classify(None, pid, name, returncode)
    outcome = _decode_and_classify(raw, pid, name, returncode, status_lost)
    error = outcome.error
    if stderr and error and error["stage"] in (STAGE_NO_INIT, STAGE_START):
        lines = stderr.decode(errors="replace").splitlines()
        tail = "\n".join(lines[-_STDERR_TAIL_LINES:])
        error["message"] += f"\n\nLast lines of its stderr:\n{tail}"
    return outcome


def _classify_lost_status(
    record: tuple[Any, ...] | None, pid: int, name: str, returncode: int
) -> Outcome:
    """Classify a child whose exit status is unknown by its record alone."""
    if record is not None and record[0] == RECORD_RETURNED:
        return Outcome(value=record[1])
    if record == (RECORD_EXITED, 0):
        return Outcome(value=None)  # sys.exit(0), success as above
    if record is not None and record[0] in (
        RECORD_RAISED,
        RECORD_START_FAILED,
    ):
        return classify(record, pid, name, returncode)
    message = (
        "its exit status was lost, because something else reaped it "
        "(SIGCHLD set to SIG_IGN, or os.wait())"
    )
    return Outcome(error=_failure(STAGE_EXIT, message, pid, name, returncode))


def _decode_and_classify(
    raw: RawRecord, pid: int, name: str, returncode: int, status_lost: bool
) -> Outcome:
    try:
        if raw.error is not None:
            raise raw.error
        record = None
        if raw.body is not None:
            record = decode_body(raw.encoding, raw.body)
    except Exception as error:
        message = f"cannot read the result: {type(error).__name__}: {error}"
        return Outcome(
            error=_failure(STAGE_RESULT, message, pid, name, returncode),
            cause=error,
        )
    if record is not None and (type(record) is not tuple or not record):
        message = "the result file does not hold a pyfork record"
        return Outcome(
            error=_failure(STAGE_RESULT, message, pid, name, returncode)
        )
    if status_lost:
        return _classify_lost_status(record, pid, name, returncode)
    try:
        return classify(record, pid, name, returncode)
    except (IndexError, TypeError, ValueError):
        message = "the result file does not hold a pyfork record"
        return Outcome(
            error=_failure(STAGE_RESULT, message, pid, name, returncode)
        )
