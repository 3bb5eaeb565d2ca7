"""Scenario tests for pyfork.Process: waiting, polling, signals, reaping.

Children that must stay alive sleep for 60 seconds and the script kills
them, so no check depends on timing. A child that must be ready before a
signal creates a file that the parent waits for.
"""

from __future__ import annotations

import signal

import pytest
from conftest import ScriptRunner
from script_helpers import records, script

TRANSPORTS = ["fd", "path"]

# Functions that most scripts below fork.
CHILDREN = """
@pyfork.register
def sleeper(ready):
    # The rename makes the file appear with its content, never empty.
    partial = f"{ready}.{os.getpid()}"
    with open(partial, "w") as file:
        file.write(str(os.getpid()))
    os.rename(partial, ready)
    time.sleep(60)


@pyfork.register
def exit_with(code):
    sys.exit(code)


pyfork.register("napper", sleeper)
READY = os.path.join(HERE, "ready")
"""


def test_process_attributes(run_script: ScriptRunner) -> None:
    """pid, name and returncode describe the child while it runs."""
    source = script(
        CHILDREN,
        """
        pyfork.init()
        process = pyfork.fork("sleeper", READY)
        try:
            wait_for_file(READY)
            with open(READY) as file:
                child_pid = int(file.read())
            emit(
                pid=process.pid,
                child_pid=child_pid,
                name=process.name,
                running_returncode=process.returncode,
                running_poll=process.poll(),
                running_repr=repr(process),
            )
        finally:
            process.kill()
        emit(returncode=process.wait(), after_poll=process.poll())
        """,
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["pid"] == output["child_pid"]
    assert output["name"] == "sleeper"
    assert output["running_returncode"] is None
    assert output["running_poll"] is None
    assert f"pid={output['pid']}" in output["running_repr"]
    assert "'sleeper'" in output["running_repr"]
    assert output["returncode"] == -signal.SIGKILL
    assert output["after_poll"] == -signal.SIGKILL


def test_process_name_of_alias(run_script: ScriptRunner) -> None:
    """name is the name forked by, or the first one for a function."""
    source = script(
        CHILDREN,
        """
        pyfork.init()
        by_alias = pyfork.fork("napper", READY)
        by_alias.kill()
        by_object = pyfork.fork(sleeper, READY)
        by_object.kill()
        emit(
            alias_name=by_alias.name,
            object_name=by_object.name,
            alias_returncode=by_alias.wait(),
            object_returncode=by_object.wait(),
        )
        """,
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["alias_name"] == "napper"
    assert output["object_name"] == "sleeper"
    assert output["alias_returncode"] == -signal.SIGKILL
    assert output["object_returncode"] == -signal.SIGKILL


def test_process_wait_timeout(run_script: ScriptRunner) -> None:
    """wait(timeout) raises TimeoutExpired and leaves the child running."""
    source = script(
        CHILDREN,
        """
        pyfork.init()
        process = pyfork.fork(sleeper, READY)
        try:
            attempt("outcome", process.wait, timeout=0.2)
            emit(
                returncode_after_timeout=process.returncode,
                poll_after_timeout=process.poll(),
                alive=os.path.exists(f"/proc/{process.pid}"),
            )
            try:
                process.wait(timeout=0.2)
            except pyfork.TimeoutExpired as error:
                emit(
                    error_pid=error.pid == process.pid,
                    error_name=error.name,
                    error_timeout=error.timeout,
                )
        finally:
            process.kill()
        emit(returncode=process.wait())
        """,
    )
    run = run_script(source)
    output = records(run.stdout)
    outcome = output["outcome"]

    assert run.returncode == 0, run.stderr
    assert outcome["type"] == "TimeoutExpired"
    assert "TimeoutError" in outcome["bases"]
    assert "PyforkError" in outcome["bases"]
    assert "'sleeper'" in outcome["message"]
    assert output["returncode_after_timeout"] is None
    assert output["poll_after_timeout"] is None
    assert output["alive"] is True
    assert output["error_pid"] is True
    assert output["error_name"] == "sleeper"
    assert output["error_timeout"] == 0.2
    assert output["returncode"] == -signal.SIGKILL


@pytest.mark.parametrize(
    ("call", "returncode"),
    [
        (["kill"], -signal.SIGKILL),
        (["terminate"], -signal.SIGTERM),
        (["send_signal", "SIGUSR1"], -signal.SIGUSR1),
        (["send_signal", "SIGKILL"], -signal.SIGKILL),
    ],
)
def test_process_signal(
    run_script: ScriptRunner, call: list[str], returncode: int
) -> None:
    """A signal with the default action gives returncode minus its number."""
    source = script(
        CHILDREN,
        """
        pyfork.init()
        process = pyfork.fork(sleeper, READY)
        try:
            method = getattr(process, sys.argv[1])
            method(*(getattr(signal, name) for name in sys.argv[2:]))
            emit(returncode=process.wait())
        finally:
            process.kill()
        """,
    )
    run = run_script(source, *call)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == returncode


def test_process_signal_handled(run_script: ScriptRunner) -> None:
    """A signal reaches the function's handler, which sets the exit code."""
    source = script(
        """
        def on_usr1(signum, frame):
            sys.exit(7)


        @pyfork.register
        def handler(ready):
            signal.signal(signal.SIGUSR1, on_usr1)
            open(ready, "w").close()
            time.sleep(60)


        pyfork.init()
        ready = os.path.join(HERE, "ready")
        process = pyfork.fork(handler, ready)
        try:
            wait_for_file(ready)
            process.send_signal(signal.SIGUSR1)
            emit(returncode=process.wait())
        finally:
            process.kill()
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 7


def test_process_signal_after_exit(run_script: ScriptRunner) -> None:
    """Signals to a reaped child do nothing and keep its returncode."""
    source = script(
        CHILDREN,
        """
        pyfork.init()
        process = pyfork.fork(exit_with, 4)
        process.wait()
        attempt("kill", process.kill)
        attempt("terminate", process.terminate)
        attempt("send_signal", process.send_signal, signal.SIGUSR1)
        emit(returncode=process.returncode, poll=process.poll())
        """,
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    for label in ("kill", "terminate", "send_signal"):
        assert output[label]["type"] is None, output[label]
    assert output["returncode"] == 4
    assert output["poll"] == 4


def test_process_wait_repeated(run_script: ScriptRunner) -> None:
    """wait() and poll() keep returning the exit code once it is known."""
    source = script(
        CHILDREN,
        """
        pyfork.init()
        process = pyfork.fork(exit_with, 5)
        emit(
            timed=process.wait(timeout=30),
            again=process.wait(),
            zero_timeout=process.wait(timeout=0),
            poll=process.poll(),
            attribute=process.returncode,
        )
        """,
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["timed"] == 5
    assert output["again"] == 5
    assert output["zero_timeout"] == 5
    assert output["poll"] == 5
    assert output["attribute"] == 5


def test_process_context_manager(run_script: ScriptRunner) -> None:
    """Leaving a ``with`` block waits for the child, even on an error."""
    source = script(
        """
        @pyfork.register
        def touch(path):
            time.sleep(0.1)
            open(path, "w").close()


        pyfork.init()
        done = os.path.join(HERE, "done")
        with pyfork.fork(touch, done) as process:
            entered = process
        emit(
            same_object=entered is process,
            returncode=process.returncode,
            done=os.path.exists(done),
        )

        failed = os.path.join(HERE, "failed")
        try:
            with pyfork.fork(touch, failed) as failing:
                raise RuntimeError("body failed")
        except RuntimeError as error:
            emit(propagated=str(error))
        emit(
            failing_returncode=failing.returncode,
            failed=os.path.exists(failed),
        )
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["same_object"] is True
    assert output["returncode"] == 0
    assert output["done"] is True
    assert output["propagated"] == "body failed"
    assert output["failing_returncode"] == 0
    assert output["failed"] is True


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_process_wait_reaps(run_script: ScriptRunner, transport: str) -> None:
    """After wait() no zombie and no payload file remain."""
    source = script(
        CHILDREN,
        """
        pyfork.init()
        process = pyfork.Fork(exit_with, transport=sys.argv[1]).start(0)
        returncode = process.wait()
        emit(
            returncode=returncode,
            reaped=is_reaped(process.pid),
            proc_entry=os.path.exists(f"/proc/{process.pid}"),
            tmpdir=os.listdir(TMPDIR),
        )
        """,
    )
    run = run_script(source, transport)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 0
    assert output["reaped"] is True
    assert output["proc_entry"] is False
    assert output["tmpdir"] == []
    assert run.leftover_files() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_process_killed_at_start(
    run_script: ScriptRunner, transport: str
) -> None:
    """A child killed before it reads its payload leaves no file behind."""
    source = script(
        CHILDREN,
        """
        pyfork.init()
        process = pyfork.Fork(exit_with, transport=sys.argv[1]).start(0)
        process.kill()
        emit(returncode=process.wait(), tmpdir=os.listdir(TMPDIR))
        """,
    )
    run = run_script(source, transport)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    # The child may have finished before the signal arrived.
    assert output["returncode"] in (0, -signal.SIGKILL)
    assert output["tmpdir"] == []
    assert run.leftover_files() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_process_dropped_handle(
    run_script: ScriptRunner, transport: str
) -> None:
    """A child whose handle was dropped is reaped by the next fork()."""
    source = script(
        CHILDREN,
        """
        @pyfork.register
        def waiter(go):
            wait_for_file(go)


        pyfork.init()
        go = os.path.join(HERE, "go")
        process = pyfork.Fork(waiter, transport=sys.argv[1]).start(go)
        pid = process.pid
        del process
        open(go, "w").close()
        # Wait until the child is a zombie, without reaping it.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        emit(next_returncode=pyfork.fork(exit_with, 0).wait())
        emit(reaped=is_reaped(pid), children=has_children())
        """,
    )
    run = run_script(source, transport)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["next_returncode"] == 0
    assert output["reaped"] is True
    assert output["children"] is False
    assert run.leftover_files() == []
