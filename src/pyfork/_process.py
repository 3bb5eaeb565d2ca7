"""The handle of a started child: waiting, polling and signals."""

from __future__ import annotations

import _thread
import os
import select
import time

from ._backend import backend
from ._errors import TimeoutExpired
from ._outcome import Outcome, RawRecord, classify_record, read_record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import IO, Any

# Seconds that wait() gives a child to exit after Ctrl-C, as subprocess
# does, before it re-raises KeyboardInterrupt.
_SIGINT_GRACE = 0.25

# Result records up to this size are read when the child is reaped, so a
# handle that is kept after wait() keeps no fd open.
_SMALL_RECORD = 64 * 1024

# Children whose handle was dropped before they were reaped, with their
# unread payload paths. Process.__del__ appends without a lock, since it
# can run inside a garbage collection in any thread; fork() reaps them
# without blocking.
_orphans: list[tuple[int, str | None, tuple[int, int] | None]] = []
_orphans_lock = _thread.allocate_lock()


def _remove_unread_payload(
    path: str | None, identity: tuple[int, int] | None
) -> None:
    """Remove a named payload file that the child never read.

    The file is removed only while it is the one the parent created, so a
    new file at the same path is left alone.
    """
    if path is None or identity is None:
        return
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == identity:
            os.unlink(path)
    except FileNotFoundError:
        pass  # the child read and removed it


def abandon(
    pid: int, path: str | None, identity: tuple[int, int] | None
) -> None:
    """Leave a started child without a Process to the orphan reaper, which
    reaps it and removes its unread named payload once it has exited."""
    _orphans.append((pid, path, identity))


def reap_orphans() -> None:
    """Reap dropped children that have exited, without blocking."""
    if not _orphans or not _orphans_lock.acquire(False):
        return  # none, or another thread is reaping them
    try:
        batch = _orphans.copy()
        del _orphans[: len(batch)]
        for pid, path, identity in batch:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid  # reaped elsewhere
            if done == 0:
                _orphans.append((pid, path, identity))
            else:
                _remove_unread_payload(path, identity)
    finally:
        _orphans_lock.release()


def _exit_code(info: os.waitid_result) -> int:
    """Return the exit code in a waitid() result, or -N for signal N."""
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status  # CLD_KILLED or CLD_DUMPED


class _Transfer:
    """Threads that feed a child's stdin and drain its stdout and stderr."""

    def __init__(self, process: Process, data: bytes | None) -> None:
        import threading

        self._results: dict[str, bytes] = {}
        self._threads = []
        if process.stdin is not None:
            self._threads.append(
                threading.Thread(
                    target=self._feed, args=(process.stdin, data), daemon=True
                )
            )
        for name in ("stdout", "stderr"):
            stream = getattr(process, name)
            if stream is not None:
                self._threads.append(
                    threading.Thread(
                        target=self._drain, args=(name, stream), daemon=True
                    )
                )
        self._piped = {
            name: getattr(process, name) is not None
            for name in ("stdout", "stderr")
        }
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _feed(stream: IO[bytes], data: bytes | None) -> None:
        try:
            if data:
                stream.write(data)
            stream.close()
        except BrokenPipeError:
            pass  # the child exited or closed stdin without reading it all

    def _drain(self, name: str, stream: IO[bytes]) -> None:
        self._results[name] = stream.read()
        stream.close()

    def join(self, deadline: float | None) -> bool:
        """Wait for the threads. Return False if the deadline passed."""
        for thread in self._threads:
            timeout = None
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
            thread.join(timeout)
            if thread.is_alive():
                return False
        return True

    def output(self) -> tuple[bytes | None, bytes | None]:
        return (
            self._results.get("stdout", b"")
            if self._piped["stdout"]
            else None,
            self._results.get("stderr", b"")
            if self._piped["stderr"]
            else None,
        )


class Process:
    """A child started by ``pyfork.fork()`` or ``Fork.start()``.

    Attributes:
        pid: the child's process id.
        name: the registered name of the function it runs.
        returncode: None while the child runs, then its exit code, or
            ``-N`` when signal N killed it.
        stdin, stdout, stderr: binary file objects for the streams
            started with ``pyfork.PIPE``, else None.
    """

    def __init__(
        self,
        pid: int,
        name: str,
        *,
        token: bytes,
        result_fd: int,
        payload_path: str | None = None,
        payload_identity: tuple[int, int] | None = None,
        streams: tuple[IO[bytes] | None, ...] = (None, None, None),
    ) -> None:
        self.pid = pid
        self.name = name
        self.returncode: int | None = None
        self._reaped = False
        self._status_lost = False
        self._record: RawRecord | None = None
        self.stdin, self.stdout, self.stderr = streams
        self._captured: tuple[bytes | None, bytes | None] | None = None
        self._transfer: _Transfer | None = None
        self._token = token
        self._result_fd: int | None = result_fd
        self._outcome: Outcome | None = None
        self._payload_path = payload_path
        self._payload_identity = payload_identity
        self._wait_lock = _thread.allocate_lock()
        # Reentrant: result() owns it while a wait may collect the record.
        self._result_lock = _thread.RLock()

    def __repr__(self) -> str:
        return (
            f"<pyfork.Process pid={self.pid} name={self.name!r} "
            f"returncode={self.returncode}>"
        )

    def _reap(self, block: bool) -> int | None:
        """Wait for the child once and reap it. Requires ``_wait_lock``.

        waitid() with WNOWAIT reads the exit status and leaves the child a
        zombie, so an exception such as KeyboardInterrupt that interrupts
        this method between the steps loses nothing: a later call reaps.
        """
        if self._reaped:
            return self.returncode
        if self.returncode is None:
            flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
            try:
                info = os.waitid(os.P_PID, self.pid, flags)
            except ChildProcessError:
                # Someone else reaped the child (SIGCHLD set to SIG_IGN, or
                # os.wait()), so its status is lost. 255 is not success.
                info = None
                self.returncode = 255
                self._status_lost = True
            if info is None and self.returncode is None:
                return None
            if info is not None:
                self.returncode = _exit_code(info)
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass  # reaped already: see above
        self._reaped = True
        _remove_unread_payload(self._payload_path, self._payload_identity)
        self._collect_record(_SMALL_RECORD)
        return self.returncode

    def poll(self) -> int | None:
        """Return the exit code if the child has exited, else None."""
        if not self._reaped and self._wait_lock.acquire(False):
            try:
                self._reap(block=False)
            finally:
                self._wait_lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit and return its exit code.

        Raises TimeoutExpired when ``timeout`` seconds pass first. The
        child keeps running then.
        """
        if self._reaped:
            assert self.returncode is not None
            return self.returncode
        try:
            return self._wait(timeout)
        except KeyboardInterrupt:
            # Ctrl-C reached the child too: reap it if it exits promptly,
            # so it does not linger as a zombie, then let the parent stop.
            if timeout is None or timeout > _SIGINT_GRACE:
                try:
                    self._wait(_SIGINT_GRACE)
                except TimeoutExpired:
                    pass
            raise

    def _wait(self, timeout: float | None) -> int:
        if timeout is None:
            with self._wait_lock:
                returncode = self._reap(block=True)
            assert returncode is not None
            return returncode

        deadline = time.monotonic() + timeout
        pidfd = self._open_pidfd()
        try:
            delay = 0.0005
            while True:
                returncode = self.poll()
                if returncode is not None:
                    return returncode
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutExpired(self.pid, self.name, timeout)
                delay = min(delay * 2, remaining, 0.05)
                if pidfd is None:
                    time.sleep(delay)
                else:
                    # Readable once the child exits; another thread may
                    # be waiting too, so poll() decides.
                    select.select([pidfd], [], [], delay)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _open_pidfd(self) -> int | None:
        """Return a pidfd of the child, or None where there is none.

        pidfd_open() needs Linux 5.3; an older kernel makes wait(timeout)
        sleep between polls instead.
        """
        if self._reaped or not hasattr(os, "pidfd_open"):
            return None
        try:
            return os.pidfd_open(self.pid)
        except OSError:
            return None

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the child and return the function's return value.

        Raises ChildError when the function raised, called ``sys.exit()``
        with a non-zero code, or never ran, and when the child died by a
        signal. Raises TimeoutExpired when ``timeout`` seconds pass first.
        Later calls return the same value or raise an equal ChildError.
        """
        self.wait(timeout)
        assert self.returncode is not None
        with self._result_lock:
            if self._outcome is None:
                self._collect_record(None)
                assert self._record is not None
                self._outcome = classify_record(
                    self._record,
                    pid=self.pid,
                    name=self.name,
                    returncode=self.returncode,
                    status_lost=self._status_lost,
                    stderr=None
                    if self._captured is None
                    else self._captured[1],
                )
        return self._outcome.unwrap()

    def _collect_record(self, limit: int | None) -> None:
        """Read the result record and close the result file.

        Leaves a record larger than ``limit`` bytes for result() to read.
        """
        with self._result_lock:
            fd = self._result_fd
            if fd is None:
                return
            try:
                if limit is not None and os.fstat(fd).st_size > limit:
                    return
            except OSError:
                pass  # read_record() reports it
            self._record = read_record(backend, fd, self._token)
            self._result_fd = None
            os.close(fd)

    def communicate(
        self, input: bytes | None = None, timeout: float | None = None
    ) -> tuple[bytes | None, bytes | None]:
        """Send ``input`` to stdin, read stdout and stderr to the end, wait.

        Returns the (stdout, stderr) bytes read from the piped streams,
        None for a stream that is not piped. Threads move the data, so a
        child that fills one pipe while the parent writes another cannot
        deadlock. Raises TimeoutExpired when ``timeout`` seconds pass
        first; calling it again continues where it stopped.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._captured is None:
            if self._transfer is None:
                self._transfer = _Transfer(self, input)
            if not self._transfer.join(deadline):
                assert timeout is not None
                raise TimeoutExpired(self.pid, self.name, timeout)
            self._captured = self._transfer.output()
        remaining = None
        if deadline is not None:
            remaining = max(0.0, deadline - time.monotonic())
        self.wait(remaining)
        return self._captured

    def send_signal(self, signal: int) -> None:
        """Send ``signal`` to the child, unless it has been reaped."""
        # Until it is reaped the pid cannot belong to another process.
        self.poll()
        if self.returncode is None:
            os.kill(self.pid, signal)

    def terminate(self) -> None:
        """Send SIGTERM to the child."""
        import signal

        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to the child."""
        import signal

        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.wait()

    def __del__(self) -> None:
        if self._result_fd is not None:
            os.close(self._result_fd)
            self._result_fd = None
        self.poll()
        if not self._reaped:
            abandon(self.pid, self._payload_path, self._payload_identity)
