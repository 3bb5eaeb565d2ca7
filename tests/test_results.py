"""Scenario tests for Process.result(), ChildError and the fork guards.

Every fork happens in a script run by the ``run_script`` fixture, on both
backends. Scripts print JSON lines, which ``records()`` merges into one
dictionary for the test to check.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import ScriptRunner
from script_helpers import line_number, records, script

from pyfork import EXIT_NO_INIT, EXIT_START_FAILED

# Describes the ChildError that result() raises, for scripts to emit.
RESULT_ERROR = '''
def describe_error(process, error):
    """Return the attributes of a ChildError as a JSON-ready dict."""
    cause = error.__cause__
    return {
        "type": type(error).__name__,
        "message": str(error),
        "stage": error.stage,
        "pid_matches": error.pid == process.pid,
        "name": error.name,
        "returncode": error.returncode,
        "process_returncode": process.returncode,
        "remote_type": error.remote_type,
        "remote_message": error.remote_message,
        "remote_traceback": error.remote_traceback,
        "cause_type": None if cause is None else type(cause).__qualname__,
        "cause_args": None if cause is None else [str(a) for a in cause.args],
    }


def result_error(process):
    """Return the ChildError that result() raises, described."""
    try:
        value = process.result()
    except pyfork.ChildError as error:
        return describe_error(process, error)
    return {"type": "no error", "value": repr(value)}
'''


def test_result_builtin_types(run_script: ScriptRunner) -> None:
    """result() returns builtin values with their types, twice."""
    source = script(
        """
        VALUE = {
            "int": -2**70, "float": 2.5, "str": "h\\u00e9llo", "none": None,
            "list": [1, [2, 3]], "tuple": (1, "two"), "bytes": b"\\x00\\xff",
            "set": {1, 2}, "bool": True, "complex": 1j,
        }


        @pyfork.register
        def build():
            return VALUE


        pyfork.init()
        process = pyfork.fork(build)
        first = process.result()
        second = process.result()
        emit(
            equal=first == VALUE,
            types={key: type(item).__name__ for key, item in first.items()},
            second_equal=second == first,
            returncode=process.returncode,
        )
        """
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["equal"] is True
    assert output["types"] == {
        "int": "int",
        "float": "float",
        "str": "str",
        "none": "NoneType",
        "list": "list",
        "tuple": "tuple",
        "bytes": "bytes",
        "set": "set",
        "bool": "bool",
        "complex": "complex",
    }
    assert output["second_equal"] is True
    assert output["returncode"] == 0


def test_result_class_instance(run_script: ScriptRunner) -> None:
    """result() returns an instance of a class defined above init()."""
    source = script(
        """
        class Point:
            def __init__(self, x, y):
                self.x = x
                self.y = y


        @pyfork.register
        def make_point(x, y):
            return Point(x, y)


        pyfork.init()
        process = pyfork.fork(make_point, 3, 4)
        point = process.result()
        again = process.result()
        emit(
            type=type(point).__qualname__,
            is_point=isinstance(point, Point),
            fields=[point.x, point.y],
            again_fields=[again.x, again.y],
        )
        """
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["type"] == "Point"
    assert output["is_point"] is True
    assert output["fields"] == [3, 4]
    assert output["again_fields"] == [3, 4]


def test_result_none(run_script: ScriptRunner) -> None:
    """result() returns None for a function without a return statement."""
    source = script(
        """
        @pyfork.register
        def nothing():
            pass


        pyfork.init()
        process = pyfork.fork(nothing)
        emit(first=repr(process.result()), second=repr(process.result()))
        """
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["first"] == "None"
    assert output["second"] == "None"


def test_raised_exception(run_script: ScriptRunner) -> None:
    """A raising function gives a ChildError with the remote details."""
    source = script(
        RESULT_ERROR,
        """
        @pyfork.register
        def fail(text):
            raise ValueError(text)  # the raising line


        pyfork.init()
        process = pyfork.fork(fail, "bad input")
        emit(error=result_error(process))
        emit(again=result_error(process))
        """,
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    error = output["error"]
    assert isinstance(error, dict)
    assert error["type"] == "ChildError"
    assert error["stage"] == "raised"
    assert error["pid_matches"] is True
    assert error["name"] == "fail"
    assert error["returncode"] == 1
    assert error["process_returncode"] == 1
    assert error["remote_type"] == "ValueError"
    assert error["remote_message"] == "bad input"
    assert "ValueError: bad input" in error["message"]
    line = line_number(source, "# the raising line")
    expected_frame = f'app.py", line {line}, in fail'
    assert expected_frame in error["remote_traceback"]
    assert error["remote_traceback"].endswith("ValueError: bad input\n")
    assert error["cause_type"] == "ValueError"
    assert error["cause_args"] == ["bad input"]
    assert output["again"] == error
    # The child printed the traceback on its own stderr, as a program would.
    assert "ValueError: bad input" in run.stderr


def test_raised_unpicklable_exception(run_script: ScriptRunner) -> None:
    """An exception that cannot be rebuilt still gives a prompt ChildError."""
    source = script(
        RESULT_ERROR,
        """
        class PairError(Exception):
            def __init__(self, first, second):
                super().__init__(f"{first} and {second}")


        @pyfork.register
        def fail():
            raise PairError("left", "right")


        pyfork.init()
        process = pyfork.fork(fail)
        emit(error=result_error(process))
        """,
    )
    # The subprocess timeout is the only bound: a hang fails the test.
    run = run_script(source, timeout=60)
    assert run.returncode == 0, run.stderr
    error = records(run.stdout, only_json=True)["error"]
    assert isinstance(error, dict)
    assert error["type"] == "ChildError"
    assert error["stage"] == "raised"
    assert error["remote_type"] == "__main__.PairError"
    assert error["remote_message"] == "left and right"
    assert error["cause_type"] in (None, "PairError")


def test_exit_nonzero_code(run_script: ScriptRunner) -> None:
    """sys.exit(3) in the function gives stage "exit" and returncode 3."""
    source = script(
        RESULT_ERROR,
        """
        @pyfork.register
        def leave():
            sys.exit(3)


        pyfork.init()
        process = pyfork.fork(leave)
        emit(error=result_error(process))
        """,
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    error = records(run.stdout, only_json=True)["error"]
    assert isinstance(error, dict)
    assert error["type"] == "ChildError"
    assert error["stage"] == "exit"
    assert error["returncode"] == 3
    assert error["process_returncode"] == 3
    assert "sys.exit(3)" in error["message"]
    assert error["remote_type"] is None
    assert error["cause_type"] is None


def test_exit_zero_code(run_script: ScriptRunner) -> None:
    """sys.exit(0) in the function makes result() return None."""
    source = script(
        """
        @pyfork.register
        def leave():
            sys.exit(0)


        pyfork.init()
        process = pyfork.fork(leave)
        emit(value=repr(process.result()), returncode=process.returncode)
        """
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["value"] == "None"
    assert output["returncode"] == 0


def test_exit_os_exit_zero(run_script: ScriptRunner) -> None:
    """os._exit(0) in the function is a failure: it never returned."""
    source = script(
        RESULT_ERROR,
        """
        @pyfork.register
        def vanish():
            os._exit(0)


        pyfork.init()
        process = pyfork.fork(vanish)
        emit(error=result_error(process))
        """,
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    error = records(run.stdout, only_json=True)["error"]
    assert isinstance(error, dict)
    assert error["type"] == "ChildError"
    assert error["stage"] == "exit"
    assert error["returncode"] == 0
    assert "without returning" in error["message"]


def test_signal_sigkill(run_script: ScriptRunner) -> None:
    """A child killed by SIGKILL gives stage "signal" and returncode -9."""
    source = script(
        RESULT_ERROR,
        """
        @pyfork.register
        def die():
            os.kill(os.getpid(), signal.SIGKILL)


        pyfork.init()
        process = pyfork.fork(die)
        emit(error=result_error(process))
        """,
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    error = records(run.stdout, only_json=True)["error"]
    assert isinstance(error, dict)
    assert error["type"] == "ChildError"
    assert error["stage"] == "signal"
    assert error["returncode"] == -signal.SIGKILL
    assert error["process_returncode"] == -signal.SIGKILL
    assert "SIGKILL" in error["message"]


# Before ``import pyfork`` the marker is still in the environment; after
# it, pyfork has taken it and is_child() tells whether this is a child.
CHILD_IMPORT_ERROR_BEFORE = """
import os

if "PYFORK_CHILD" in os.environ:
    raise ImportError("no module for the child")
"""
CHILD_IMPORT_ERROR_AFTER = """
if pyfork.is_child():
    raise ImportError("no module for the child")
"""


@pytest.mark.parametrize(
    ("placement", "expected_returncode"),
    [("after_import", EXIT_NO_INIT), ("before_import", 1)],
)
def test_no_init_import_error(
    run_script: ScriptRunner, placement: str, expected_returncode: int
) -> None:
    """A child that fails at import before init() gives stage "no_init"."""
    body = textwrap.dedent(
        """
        @pyfork.register
        def work():
            return 1


        pyfork.init()
        process = pyfork.fork(work)
        emit(error=result_error(process))
        """
    )
    if placement == "after_import":
        source = script(RESULT_ERROR, CHILD_IMPORT_ERROR_AFTER + body)
    else:
        source = script(RESULT_ERROR, body, before=CHILD_IMPORT_ERROR_BEFORE)
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    error = records(run.stdout, only_json=True)["error"]
    assert isinstance(error, dict)
    assert error["type"] == "ChildError"
    assert error["stage"] == "no_init"
    assert error["returncode"] == expected_returncode
    assert error["name"] == "work"
    assert "before it reached pyfork.init()" in error["message"]
    assert "ImportError: no module for the child" in run.stderr


def test_start_registered_below_init(run_script: ScriptRunner) -> None:
    """A name registered only below init() gives stage "start"."""
    source = script(
        RESULT_ERROR,
        """
        pyfork.init()


        @pyfork.register
        def late():
            return 1


        process = pyfork.fork(late)
        emit(error=result_error(process))
        """,
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    error = records(run.stdout, only_json=True)["error"]
    assert isinstance(error, dict)
    assert error["type"] == "ChildError"
    assert error["stage"] == "start"
    assert error["returncode"] == EXIT_START_FAILED
    assert "no function is registered as 'late'" in error["message"]
    assert "no function is registered as 'late'" in run.stderr


def test_raised_unpicklable_return(run_script: ScriptRunner) -> None:
    """A return value that cannot be pickled gives a pickling error."""
    source = script(
        RESULT_ERROR,
        """
        UNPICKLABLE = lambda: None  # pickle finds no global named "<lambda>"


        @pyfork.register
        def give_lambda():
            return UNPICKLABLE


        pyfork.init()
        process = pyfork.fork(give_lambda)
        emit(error=result_error(process))
        """,
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    error = records(run.stdout, only_json=True)["error"]
    assert isinstance(error, dict)
    assert error["type"] == "ChildError"
    assert error["stage"] == "raised"
    assert error["returncode"] == 1
    assert error["remote_type"].endswith("PicklingError")
    assert error["cause_type"] == "PicklingError"


LARGE_RESULT = """
SIZE = 200 * 1024 * 1024


@pyfork.register
def large():
    return b"x" * SIZE


@pyfork.register
def small():
    return "small"


pyfork.init()
mode = sys.argv[1]
process = pyfork.fork(large)
if mode == "result":
    value = process.result()
    emit(size=len(value), intact=value.count(b"x") == SIZE)
    emit(returncode=process.returncode)
elif mode == "wait":
    emit(returncode=process.wait())
    value = process.result()
    emit(size=len(value), intact=value.count(b"x") == SIZE)
else:
    del process
    emit(next_result=pyfork.fork(small).result())
"""


@pytest.mark.parametrize("mode", ["result", "wait", "drop"])
def test_result_large_value(run_script: ScriptRunner, mode: str) -> None:
    """A 200 MB return value arrives, or is dropped, without a deadlock."""
    # The subprocess timeout is the only time bound: a deadlock fails it.
    run = run_script(script(LARGE_RESULT), mode, timeout=120)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    if mode == "drop":
        assert output["next_result"] == "small"
    else:
        assert output["returncode"] == 0
        assert output["size"] == 200 * 1024 * 1024
        assert output["intact"] is True
    assert run.leftover_files() == []


def test_result_timeout_then_kill(run_script: ScriptRunner) -> None:
    """result(timeout) raises TimeoutExpired and leaves the child running."""
    source = script(
        RESULT_ERROR,
        """
        @pyfork.register
        def sleep():
            time.sleep(120)


        pyfork.init()
        process = pyfork.fork(sleep)
        try:
            process.result(timeout=0.2)
        except pyfork.TimeoutExpired as error:
            emit(
                timeout_type=type(error).__name__,
                is_timeout_error=isinstance(error, TimeoutError),
                timeout_pid_matches=error.pid == process.pid,
                timeout_message=str(error),
            )
        emit(running=process.poll() is None)
        process.kill()
        emit(error=result_error(process))
        """,
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["timeout_type"] == "TimeoutExpired"
    assert output["is_timeout_error"] is True
    assert output["timeout_pid_matches"] is True
    assert "did not exit within 0.2 seconds" in output["timeout_message"]
    assert output["running"] is True
    error = output["error"]
    assert isinstance(error, dict)
    assert error["stage"] == "signal"
    assert error["returncode"] == -signal.SIGKILL


def test_guard_fork_before_init(run_script: ScriptRunner) -> None:
    """fork() in a child above init() raises PyforkError in the child."""
    source = script(
        RESULT_ERROR,
        """
        @pyfork.register
        def work():
            return 1


        if pyfork.is_child():
            pyfork.fork(work)

        pyfork.init()
        process = pyfork.fork(work)
        emit(returncode=process.wait(), error=result_error(process))
        """,
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["returncode"] == EXIT_NO_INIT
    error = output["error"]
    assert isinstance(error, dict)
    assert error["stage"] == "no_init"
    expected = (
        "pyfork.PyforkError: fork() was called in a child that has not "
        "reached pyfork.init()"
    )
    assert expected in run.stderr


def test_guard_program_without_init(run_script: ScriptRunner) -> None:
    """A child whose program never calls init() exits with EXIT_NO_INIT."""
    source = script(
        RESULT_ERROR,
        """
        @pyfork.register
        def work():
            return 1


        if not pyfork.is_child():
            pyfork.init()
            process = pyfork.fork(work)
            emit(returncode=process.wait(), error=result_error(process))
        """,
    )
    run = run_script(source)
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["returncode"] == EXIT_NO_INIT
    error = output["error"]
    assert isinstance(error, dict)
    assert error["stage"] == "no_init"
    assert "the program exited without calling pyfork.init()" in run.stderr


def test_nesting_depth_limit(run_script: ScriptRunner) -> None:
    """A function that forks itself stops at PYFORK_MAX_DEPTH."""
    source = script(
        """
        @pyfork.register
        def nest(level):
            try:
                process = pyfork.fork(nest, level + 1)
            except pyfork.PyforkError as error:
                return [level, type(error).__name__, str(error)]
            return process.result()


        pyfork.init()
        emit(deepest=pyfork.fork(nest, 1).result())
        """
    )
    run = run_script(source, env={"PYFORK_MAX_DEPTH": "3"})
    assert run.returncode == 0, run.stderr
    level, error_type, message = records(run.stdout, only_json=True)["deepest"]
    assert level == 3
    assert error_type == "PyforkError"
    assert "nested 4 levels deep, over the limit of 3" in message


def test_nesting_invalid_max_depth(run_script: ScriptRunner) -> None:
    """PYFORK_MAX_DEPTH=abc makes fork() raise PyforkError, with no child."""
    source = script(
        """
        @pyfork.register
        def work():
            return 1


        pyfork.init()
        try:
            pyfork.fork(work)
        except pyfork.PyforkError as error:
            emit(error_type=type(error).__name__, message=str(error))
        emit(has_children=has_children())
        """
    )
    run = run_script(source, env={"PYFORK_MAX_DEPTH": "abc"})
    assert run.returncode == 0, run.stderr
    output = records(run.stdout, only_json=True)
    assert output["error_type"] == "PyforkError"
    expected = "PYFORK_MAX_DEPTH must be a positive integer, not 'abc'"
    assert expected in output["message"]
    assert output["has_children"] is False


def test_inspect_flag_child(run_script: ScriptRunner) -> None:
    """Under python -i the child runs the function and opens no prompt."""
    source = script(
        """
        @pyfork.register
        def answer():
            return 42


        @pyfork.register
        def leave():
            sys.exit(5)


        pyfork.init()
        emit(
            value=pyfork.fork(answer).result(),
            returncode=pyfork.fork(leave).wait(),
        )
        """
    )
    path = run_script.write(source)
    # With an empty stdin the parent's own prompt reads EOF and exits.
    completed = subprocess.run(
        [sys.executable, "-i", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=run_script.directory,
        env=run_script.environment(),
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    output = records(completed.stdout, only_json=True)
    assert output["value"] == 42
    assert output["returncode"] == 5
    prompts = (completed.stdout + completed.stderr).count(">>>")
    assert prompts == 1, completed.stderr
