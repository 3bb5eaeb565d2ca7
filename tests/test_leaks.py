"""Scenario tests for what pyfork leaves behind: files, processes, fds.

Every fork happens in a script run by the ``run_script`` fixture, on both
backends, with TMPDIR set to an empty directory of its own. Scripts print
JSON lines, which ``records()`` merges into one dictionary.
"""

from __future__ import annotations

import errno
import signal
import time

import pytest
from conftest import ScriptRunner
from script_helpers import records, script

from pyfork import EXIT_NO_INIT

TRANSPORTS = ["fd", "path"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_payload_pickling_fails(
    run_script: ScriptRunner, transport: str
) -> None:
    """An argument that cannot be pickled leaves no file and no child."""
    source = script(
        """
        @pyfork.register
        def work(value):
            return 1


        pyfork.init()
        spec = pyfork.Fork(work, transport=sys.argv[1])
        try:
            spec.start(lambda: None)
        except pyfork.PyforkError as error:
            emit(error_type=type(error).__name__, message=str(error))
        emit(has_children=has_children(), files=os.listdir(TMPDIR))
        """
    )
    run = run_script(source, transport)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["error_type"] == "PyforkError"
    assert "cannot pickle argument 0" in output["message"]
    assert output["has_children"] is False
    assert output["files"] == []
    assert run.leftover_files() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_payload_spawn_fails(run_script: ScriptRunner, transport: str) -> None:
    """A missing interpreter raises SpawnError and leaves no file."""
    source = script(
        """
        @pyfork.register
        def work():
            return 1


        pyfork.init()
        missing = os.path.join(HERE, "missing", "python")
        sys.executable = missing
        try:
            pyfork.Fork(work, transport=sys.argv[1]).start()
        except pyfork.SpawnError as error:
            emit(
                errno=error.errno,
                filename_matches=error.filename == missing,
                is_os_error=isinstance(error, OSError),
            )
        emit(has_children=has_children(), files=os.listdir(TMPDIR))
        """
    )
    run = run_script(source, transport)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["errno"] == errno.ENOENT
    assert output["filename_matches"] is True
    assert output["is_os_error"] is True
    assert output["has_children"] is False
    assert output["files"] == []
    assert run.leftover_files() == []


def test_payload_child_killed_unread(run_script: ScriptRunner) -> None:
    """The parent removes a named payload that a killed child never read."""
    source = script(
        """
        @pyfork.register
        def work():
            return 1


        pyfork.init()
        process = pyfork.Fork(work, transport="path").start()
        emit(before=os.listdir(TMPDIR))
        process.kill()
        emit(returncode=process.wait(), after=os.listdir(TMPDIR))
        """,
        before="""
        import os
        import time

        if "PYFORK_CHILD" in os.environ:
            time.sleep(120)  # killed here, before it reads the payload
        """,
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    before = output["before"]
    assert isinstance(before, list)
    assert len(before) == 1
    assert before[0].startswith("pyfork-")
    assert output["returncode"] == -signal.SIGKILL
    assert output["after"] == []
    assert run.leftover_files() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_payload_child_import_error(
    run_script: ScriptRunner, transport: str
) -> None:
    """A child that raises at import before init() leaves no payload."""
    source = script(
        """
        if pyfork.is_child():
            raise ImportError("no module for the child")


        @pyfork.register
        def work():
            return 1


        pyfork.init()
        process = pyfork.Fork(work, transport=sys.argv[1]).start()
        emit(returncode=process.wait(), files=os.listdir(TMPDIR))
        """
    )
    run = run_script(source, transport)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["returncode"] == EXIT_NO_INIT
    assert output["files"] == []
    assert run.leftover_files() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_payload_parent_exits_first(
    run_script: ScriptRunner, transport: str
) -> None:
    """A child whose parent exited at once still leaves TMPDIR empty."""
    source = script(
        """
        @pyfork.register
        def finish(path):
            with open(path, "w") as marker:
                marker.write(str(os.getpid()))


        pyfork.init()
        pyfork.Fork(finish, transport=sys.argv[1]).start(
            os.path.join(HERE, "child-done")
        )
        os._exit(0)
        """,
        before="""
        import os
        import time

        if "PYFORK_CHILD" in os.environ:
            time.sleep(0.2)  # let the parent exit before the payload is read
        """,
    )
    run = run_script(source, transport)
    assert run.returncode == 0, run.stderr
    marker = run_script.directory / "child-done"
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), run.stderr
    assert run.leftover_files() == []


@pytest.mark.parametrize(
    ("kind", "expected_errno"),
    [("missing", errno.ENOENT), ("regular_file", errno.ENOTDIR)],
)
def test_payload_unusable_tempdir(
    run_script: ScriptRunner, kind: str, expected_errno: int
) -> None:
    """An unusable tempfile.tempdir makes the path transport raise."""
    source = script(
        """
        import tempfile


        @pyfork.register
        def work():
            return 1


        pyfork.init()
        directory = os.path.join(HERE, "unusable")
        if sys.argv[1] == "regular_file":
            open(directory, "w").close()
        tempfile.tempdir = directory
        try:
            pyfork.Fork(work, transport="path").start()
        except pyfork.PyforkError as error:
            emit(
                error_type=type(error).__name__,
                message=str(error),
                cause_errno=getattr(error.__cause__, "errno", None),
            )
        emit(directory=directory, has_children=has_children())
        """
    )
    run = run_script(source, kind)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["error_type"] == "PyforkError"
    message = output["message"]
    assert isinstance(message, str)
    assert str(output["directory"]) in message
    assert f"errno {expected_errno}" in message
    assert output["cause_errno"] == expected_errno
    assert output["has_children"] is False
    assert run.leftover_files() == []


def test_reap_wait_leaves_no_zombie(run_script: ScriptRunner) -> None:
    """After wait() the child is gone from /proc and from waitpid()."""
    source = script(
        """
        @pyfork.register
        def work():
            return 1


        pyfork.init()
        process = pyfork.fork(work)
        emit(returncode=process.wait())
        emit(state=process_state(process.pid), reaped=is_reaped(process.pid))
        """
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["returncode"] == 0
    assert output["state"] is None
    assert output["reaped"] is True


def test_reap_dropped_process(run_script: ScriptRunner) -> None:
    """A later fork() reaps a dropped child that has exited since."""
    source = script(
        """
        @pyfork.register
        def wait_for_gate(gate):
            wait_for_file(gate)


        @pyfork.register
        def work():
            return "next"


        pyfork.init()
        gate = os.path.join(HERE, "gate")
        process = pyfork.fork(wait_for_gate, gate)
        pid = process.pid
        del process
        emit(state_after_drop=process_state(pid))
        open(gate, "w").close()
        wait_for_state(pid, "Z")
        emit(state_after_exit=process_state(pid))
        following = pyfork.fork(work)
        emit(state_after_fork=process_state(pid), reaped=is_reaped(pid))
        emit(next_result=following.result())
        """
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["state_after_drop"] not in (None, "Z")
    assert output["state_after_exit"] == "Z"
    assert output["state_after_fork"] is None
    assert output["reaped"] is True
    assert output["next_result"] == "next"


def test_reap_dropped_running(run_script: ScriptRunner) -> None:
    """A later fork() does not block on a dropped child that still runs."""
    source = script(
        """
        @pyfork.register
        def wait_for_gate(gate):
            wait_for_file(gate)


        @pyfork.register
        def work():
            return "next"


        pyfork.init()
        gate = os.path.join(HERE, "gate")
        process = pyfork.fork(wait_for_gate, gate)
        pid = process.pid
        del process
        emit(next_result=pyfork.fork(work).result())
        emit(state_after_fork=process_state(pid))
        open(gate, "w").close()
        _, status = os.waitpid(pid, 0)
        emit(exit_code=os.waitstatus_to_exitcode(status))
        """
    )
    # The subprocess timeout is the only time bound: a block fails it.
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["next_result"] == "next"
    assert output["state_after_fork"] not in (None, "Z")
    assert output["exit_code"] == 0


LIST_FDS = """\
import json
import os

fds = []
for name in os.listdir("/proc/self/fd"):
    try:
        os.fstat(int(name))
    except OSError:
        continue  # the descriptor of the listing, closed by now
    fds.append(int(name))
print(json.dumps(sorted(fds)))
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fds_child_inherits_only(
    run_script: ScriptRunner, transport: str
) -> None:
    """The child gets fds 0-2, pass_fds and one close-on-exec result fd."""
    source = script(
        f"""
        import fcntl
        import subprocess

        LIST_FDS = {LIST_FDS!r}


        @pyfork.register
        def list_fds():
            flags = {{}}
            for name in os.listdir("/proc/self/fd"):
                try:
                    value = fcntl.fcntl(int(name), fcntl.F_GETFD)
                except OSError:
                    continue  # the descriptor of the listing, closed by now
                flags[int(name)] = bool(value & fcntl.FD_CLOEXEC)
            grandchild = subprocess.run(
                [sys.executable, "-c", LIST_FDS],
                close_fds=False,
                stdout=subprocess.PIPE,
                check=True,
            )
            return sorted(flags.items()), json.loads(grandchild.stdout)


        pyfork.init()
        leaked_read, leaked_write = os.pipe()
        os.set_inheritable(leaked_read, True)
        os.set_inheritable(leaked_write, True)
        leaked_file = open(os.path.join(HERE, "leaked.txt"), "w")
        os.set_inheritable(leaked_file.fileno(), True)
        passed_read, passed_write = os.pipe()
        spec = pyfork.Fork(
            list_fds, pass_fds=[passed_write], transport=sys.argv[1]
        )
        flags, grandchild = spec.start().result()
        emit(passed=passed_write, flags=flags, grandchild=grandchild)
        """
    )
    run = run_script(source, transport)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    passed = output["passed"]
    assert isinstance(passed, int)
    flags = dict(output["flags"])  # type: ignore[call-overload]
    expected = {0, 1, 2, passed}
    assert expected <= set(flags)
    extra = set(flags) - expected
    assert len(extra) == 1, flags
    assert flags[extra.pop()] is True
    assert flags[passed] is False
    # close_fds=False: the grandchild gets every inheritable descriptor.
    assert output["grandchild"] == [0, 1, 2, passed]


def test_fds_pass_pipe(run_script: ScriptRunner) -> None:
    """A pipe in pass_fds lets the child write to a pipe the parent reads."""
    source = script(
        """
        @pyfork.register
        def write_to(fd):
            os.write(fd, b"hello through the pipe")
            return "written"


        pyfork.init()
        read_end, write_end = os.pipe()
        process = pyfork.Fork(write_to, pass_fds=[write_end]).start(write_end)
        os.close(write_end)
        data = b""
        while True:
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            data += chunk
        emit(data=data.decode(), result=process.result())
        """
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["data"] == "hello through the pipe"
    assert output["result"] == "written"
    assert run.leftover_files() == []
