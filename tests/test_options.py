"""Scenario tests for the options of pyfork.Fork.

Every fork happens in a script that the test starts, on both backends.
The parent prints its observations as JSON lines that start with ``{``.
Other lines, such as what a child writes to an inherited stdout, stay in
the captured output for the checks that look for them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from conftest import ScriptRunner
from script_helpers import script

from pyfork import EXIT_NO_INIT

# Scripts of this file define these functions after the prelude.
OPTIONS_HELPERS = """
def outcome_of(start):
    try:
        start()
    except Exception as error:
        return {
            "type": type(error).__name__,
            "message": str(error),
            "children": has_children(),
        }
    return {"type": None, "children": has_children()}


@pyfork.register
def echo():
    data = sys.stdin.buffer.read()
    sys.stdout.buffer.write(data.upper() + b" to stdout\\n")
    sys.stdout.flush()
    sys.stderr.buffer.write(b"to stderr\\n")
    sys.stderr.flush()
    return data.decode()


@pyfork.register
def touch(path):
    with open(path, "w"):
        pass
"""


class Run:
    """A finished script: exit code, output and the JSON it printed."""

    def __init__(self, completed: subprocess.CompletedProcess[str]) -> None:
        self.returncode = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr
        self.values: dict[str, Any] = {}
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                self.values.update(json.loads(line))

    def __getitem__(self, key: str) -> Any:
        assert key in self.values, (
            f"{key!r} was not printed, exit code {self.returncode}\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )
        return self.values[key]


def run(
    runner: ScriptRunner,
    body: str,
    *,
    input: str | None = None,
    timeout: float = 60,
) -> Run:
    """Run the prelude, OPTIONS_HELPERS and ``body``, ``input`` on stdin."""
    runner.write(script(OPTIONS_HELPERS, body))
    completed = subprocess.run(
        [sys.executable, "app.py"],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        cwd=runner.directory,
        env=runner.environment(),
        check=False,
    )
    return Run(completed)


# stdin, stdout and stderr.


def test_stdio_inherited(run_script: ScriptRunner) -> None:
    """By default the child reads and writes the parent's stdio."""
    body = """
    pyfork.init()
    process = pyfork.fork(echo)
    emit(
        result=process.result(),
        streams=[process.stdin, process.stdout, process.stderr],
    )
    """
    result = run(run_script, body, input="from the test")

    assert result["result"] == "from the test"
    assert result["streams"] == [None, None, None]
    assert "FROM THE TEST to stdout" in result.stdout
    assert "to stderr" in result.stderr
    assert result.returncode == 0, result.stderr


def test_stdio_fds(run_script: ScriptRunner) -> None:
    """Fds given as stdin, stdout and stderr become the child's 0-2."""
    body = """
    pyfork.init()
    with open(os.path.join(HERE, "in.txt"), "w") as file:
        file.write("from a file")
    stdin = os.open(os.path.join(HERE, "in.txt"), os.O_RDONLY)
    flags = os.O_WRONLY | os.O_CREAT
    stdout = os.open(os.path.join(HERE, "out.txt"), flags)
    stderr = os.open(os.path.join(HERE, "err.txt"), flags)
    spec = pyfork.Fork(echo, stdin=stdin, stdout=stdout, stderr=stderr)
    emit(result=spec.start().result())
    for fd in (stdin, stdout, stderr):
        os.close(fd)
    """
    result = run(run_script, body)
    out = (run_script.directory / "out.txt").read_text()
    err = (run_script.directory / "err.txt").read_text()

    assert result["result"] == "from a file"
    assert out == "FROM A FILE to stdout\n"
    assert err == "to stderr\n"
    assert "to stdout" not in result.stdout
    assert "to stderr" not in result.stderr


def test_stdio_swapped_fds(run_script: ScriptRunner) -> None:
    """stdout=2 and stderr=1 swap the child's streams."""
    body = """
    pyfork.init()
    spec = pyfork.Fork(echo, stdin=pyfork.DEVNULL, stdout=2, stderr=1)
    emit(result=spec.start().result())
    """
    result = run(run_script, body)

    assert result["result"] == ""
    assert "to stdout" in result.stderr
    assert "to stderr" in result.stdout
    assert "to stdout" not in result.stdout
    assert "to stderr" not in result.stderr


def test_stdio_file_objects(run_script: ScriptRunner) -> None:
    """File objects given as stdin, stdout and stderr are used by fileno."""
    body = """
    pyfork.init()
    with open(os.path.join(HERE, "in.txt"), "w") as file:
        file.write("from a file object")
    with (
        open(os.path.join(HERE, "in.txt"), "rb") as stdin,
        open(os.path.join(HERE, "out.txt"), "wb") as stdout,
        open(os.path.join(HERE, "err.txt"), "wb") as stderr,
    ):
        spec = pyfork.Fork(echo, stdin=stdin, stdout=stdout, stderr=stderr)
        emit(result=spec.start().result())
    """
    result = run(run_script, body)
    out = (run_script.directory / "out.txt").read_text()
    err = (run_script.directory / "err.txt").read_text()

    assert result["result"] == "from a file object"
    assert out == "FROM A FILE OBJECT to stdout\n"
    assert err == "to stderr\n"


def test_stdio_devnull(run_script: ScriptRunner) -> None:
    """pyfork.DEVNULL gives the child an empty stdin and drops its output."""
    body = """
    pyfork.init()
    spec = pyfork.Fork(
        echo,
        stdin=pyfork.DEVNULL,
        stdout=pyfork.DEVNULL,
        stderr=pyfork.DEVNULL,
    )
    emit(result=spec.start().result())
    """
    result = run(run_script, body, input="not for the child")

    assert result["result"] == ""
    assert "to stdout" not in result.stdout
    assert "to stderr" not in result.stderr


def test_stdio_pipes(run_script: ScriptRunner) -> None:
    """pyfork.PIPE exposes binary streams on the Process."""
    body = """
    import io

    pyfork.init()
    spec = pyfork.Fork(
        echo, stdin=pyfork.PIPE, stdout=pyfork.PIPE, stderr=pyfork.PIPE
    )
    process = spec.start()
    emit(
        types=[
            type(process.stdin).__name__,
            type(process.stdout).__name__,
            type(process.stderr).__name__,
        ],
        binary=[
            not isinstance(stream, io.TextIOBase)
            for stream in (process.stdin, process.stdout, process.stderr)
        ],
    )
    process.stdin.write(b"through a pipe")
    process.stdin.close()
    emit(
        out=process.stdout.read().decode(),
        err=process.stderr.read().decode(),
        result=process.result(),
    )
    process.stdout.close()
    process.stderr.close()
    """
    result = run(run_script, body)

    assert result["types"] == [
        "BufferedWriter",
        "BufferedReader",
        "BufferedReader",
    ]
    assert result["binary"] == [True, True, True]
    assert result["out"] == "THROUGH A PIPE to stdout\n"
    assert result["err"] == "to stderr\n"
    assert result["result"] == "through a pipe"


def test_stderr_to_piped_stdout(run_script: ScriptRunner) -> None:
    """stderr=pyfork.STDOUT sends stderr into the stdout pipe."""
    body = """
    pyfork.init()
    spec = pyfork.Fork(
        echo, stdin=pyfork.DEVNULL, stdout=pyfork.PIPE, stderr=pyfork.STDOUT
    )
    process = spec.start()
    out, err = process.communicate()
    emit(out=out.decode(), err=err, stderr_stream=process.stderr)
    """
    result = run(run_script, body)

    assert result["out"] == " to stdout\nto stderr\n"
    assert result["err"] is None
    assert result["stderr_stream"] is None


def test_stderr_to_inherited_stdout(run_script: ScriptRunner) -> None:
    """stderr=pyfork.STDOUT alone sends stderr to the parent's stdout."""
    body = """
    pyfork.init()
    spec = pyfork.Fork(echo, stdin=pyfork.DEVNULL, stderr=pyfork.STDOUT)
    emit(result=spec.start().result())
    """
    result = run(run_script, body)

    assert result["result"] == ""
    assert "to stderr" in result.stdout
    assert "to stderr" not in result.stderr


# communicate().


def test_communicate_large(run_script: ScriptRunner) -> None:
    """communicate() moves 10 MB each way at once without a deadlock."""
    body = """
    import hashlib

    SIZE = 10 * 1024 * 1024
    OUT = bytes(range(256)) * (SIZE // 256)
    ERR = bytes(reversed(range(256))) * (SIZE // 256)


    @pyfork.register
    def churn():
        # Fill stdout and stderr before reading stdin: a parent that
        # writes all its input first would block forever.
        sys.stdout.buffer.write(OUT)
        sys.stdout.flush()
        sys.stderr.buffer.write(ERR)
        sys.stderr.flush()
        data = sys.stdin.buffer.read()
        return [len(data), hashlib.sha256(data).hexdigest()]


    pyfork.init()
    data = os.urandom(SIZE)
    spec = pyfork.Fork(
        churn, stdin=pyfork.PIPE, stdout=pyfork.PIPE, stderr=pyfork.PIPE
    )
    process = spec.start()
    out, err = process.communicate(data, timeout=50)
    emit(
        out_length=len(out),
        out_matches=out == OUT,
        err_length=len(err),
        err_matches=err == ERR,
        result=process.result(),
        expected=[len(data), hashlib.sha256(data).hexdigest()],
        returncode=process.returncode,
    )
    """
    result = run(run_script, body)

    assert result["out_length"] == 10 * 1024 * 1024
    assert result["out_matches"] is True
    assert result["err_length"] == 10 * 1024 * 1024
    assert result["err_matches"] is True
    assert result["result"] == result["expected"]
    assert result["returncode"] == 0


def test_communicate_timeout(run_script: ScriptRunner) -> None:
    """A timed-out communicate() raises, and a later call completes."""
    body = """
    GO = os.path.join(HERE, "go")


    @pyfork.register
    def slow():
        sys.stdout.write("early\\n")
        sys.stdout.flush()
        wait_for_file(GO)
        sys.stdout.write("late\\n")


    pyfork.init()
    process = pyfork.Fork(slow, stdout=pyfork.PIPE).start()
    try:
        process.communicate(timeout=0.2)
    except pyfork.TimeoutExpired as error:
        emit(timeout_error=type(error).__name__)
    emit(running=process.poll() is None)
    open(GO, "w").close()
    out, err = process.communicate()
    emit(out=out.decode(), err=err, returncode=process.returncode)
    """
    result = run(run_script, body)

    assert result["timeout_error"] == "TimeoutExpired"
    assert result["running"] is True
    assert result["out"] == "early\nlate\n"
    assert result["err"] is None
    assert result["returncode"] == 0


def test_no_init_stderr_tail(run_script: ScriptRunner) -> None:
    """ChildError quotes the end of a stderr that communicate() captured."""
    body = """
    @pyfork.register
    def never_runs():
        pass


    if pyfork.is_child():
        for number in range(1, 16):
            sys.stderr.write(f"line-{number:02}\\n")
        sys.exit(3)

    pyfork.init()
    process = pyfork.Fork(never_runs, stderr=pyfork.PIPE).start()
    process.communicate()
    try:
        process.result()
    except pyfork.ChildError as error:
        emit(
            stage=error.stage,
            returncode=error.returncode,
            message=str(error),
        )
    """
    result = run(run_script, body)
    message = result["message"]

    assert result["stage"] == "no_init"
    assert result["returncode"] == EXIT_NO_INIT
    assert "line-15" in message
    assert "line-09" in message
    assert "line-01" not in message


# env, cwd and pass_fds.


def test_env_replaces_environment(run_script: ScriptRunner) -> None:
    """env= replaces the child's environment, and no marker is left."""
    body = """
    @pyfork.register
    def environment():
        return dict(os.environ)


    pyfork.init()
    env = {
        "ONLY": "one = two, ünï ☃",
        # Without this, CPython in the C locale adds LC_CTYPE itself.
        "PYTHONCOERCECLOCALE": "0",
    }
    emit(environment=pyfork.Fork(environment, env=env).start().result())
    emit(parent_path="PATH" in os.environ)
    """
    result = run(run_script, body)
    environment = result["environment"]

    assert set(environment) == {"ONLY", "PYTHONCOERCECLOCALE"}
    assert environment["ONLY"] == "one = two, ünï ☃"
    assert "PYFORK_CHILD" not in environment
    assert "PATH" not in environment
    assert result["parent_path"] is True


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_cwd(run_script: ScriptRunner, kind: str) -> None:
    """cwd= sets where the function runs, and the parent stays put."""
    body = f"""
    @pyfork.register
    def where():
        return os.getcwd()


    pyfork.init()
    os.mkdir(os.path.join(HERE, "sub"))
    target = "sub" if {kind!r} == "relative" else os.path.join(HERE, "sub")
    emit(child=pyfork.Fork(where, cwd=target).start().result())
    emit(parent=os.getcwd())
    """
    result = run(run_script, body)

    assert result["child"] == str(run_script.directory / "sub")
    assert result["parent"] == str(run_script.directory)


def test_cwd_missing(run_script: ScriptRunner) -> None:
    """A cwd that does not exist raises PyforkError with nothing spawned."""
    body = """
    pyfork.init()
    marker = os.path.join(HERE, "marker")
    spec = pyfork.Fork(touch, cwd="missing")
    emit(outcome=outcome_of(lambda: spec.start(marker).wait()))
    """
    result = run(run_script, body)
    outcome = result["outcome"]

    assert outcome["type"] == "PyforkError"
    assert "'missing'" in outcome["message"]
    assert outcome["children"] is False
    assert not (run_script.directory / "marker").exists()


def test_pass_fds(run_script: ScriptRunner) -> None:
    """The child keeps pass_fds at the same numbers and loses other fds."""
    body = """
    @pyfork.register
    def use_fds(passed_fd, passed_inode, other_fd, other_inode):
        os.write(passed_fd, b"written by the child")

        def inode(fd):
            try:
                return os.fstat(fd).st_ino
            except OSError:
                return None

        return [
            inode(passed_fd) == passed_inode,
            inode(other_fd) == other_inode,
        ]


    pyfork.init()
    read_end, write_end = os.pipe()
    other_read, other_write = os.pipe()
    spec = pyfork.Fork(use_fds, pass_fds=[write_end])
    process = spec.start(
        write_end,
        os.fstat(write_end).st_ino,
        other_write,
        os.fstat(other_write).st_ino,
    )
    emit(result=process.result())
    os.close(write_end)
    emit(data=os.read(read_end, 100).decode())
    """
    result = run(run_script, body)

    assert result["result"] == [True, False]
    assert result["data"] == "written by the child"


def test_pass_fds_not_open(run_script: ScriptRunner) -> None:
    """A descriptor in pass_fds that is not open raises PyforkError."""
    body = """
    pyfork.init()
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)
    marker = os.path.join(HERE, "marker")
    spec = pyfork.Fork(touch, pass_fds=[closed])
    emit(outcome=outcome_of(lambda: spec.start(marker).wait()))
    """
    result = run(run_script, body)
    outcome = result["outcome"]

    assert outcome["type"] == "PyforkError"
    assert "pass_fds" in outcome["message"]
    assert outcome["children"] is False
    assert not (run_script.directory / "marker").exists()


# Sessions and process groups.

IDS = """
@pyfork.register
def ids():
    return {
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "pgid": os.getpgid(0),
    }


pyfork.init()
"""


def test_start_new_session(run_script: ScriptRunner) -> None:
    """start_new_session=True makes the child lead a new session."""
    body = (
        IDS
        + """
emit(child=pyfork.Fork(ids, start_new_session=True).start().result())
emit(parent=ids())
"""
    )
    result = run(run_script, body)
    child, parent = result["child"], result["parent"]

    assert child["sid"] == child["pid"]
    assert child["pgid"] == child["pid"]
    assert child["sid"] != parent["sid"]


def test_process_group_zero(run_script: ScriptRunner) -> None:
    """process_group=0 makes the child lead a new group, same session."""
    body = (
        IDS
        + """
emit(child=pyfork.Fork(ids, process_group=0).start().result())
emit(parent=ids())
"""
    )
    result = run(run_script, body)
    child, parent = result["child"], result["parent"]

    assert child["pgid"] == child["pid"]
    assert child["pgid"] != parent["pgid"]
    assert child["sid"] == parent["sid"]


# Invalid values, rejected by Fork() before anything starts.


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        pytest.param('stdin="in.txt"', "stdin", id="stdin-str"),
        pytest.param("stdout=-5", "stdout", id="stdout-negative"),
        pytest.param("stdout=1.5", "stdout", id="stdout-float"),
        pytest.param("stderr=True", "stderr", id="stderr-bool"),
        pytest.param("stdin=pyfork.STDOUT", "stdin", id="stdin-STDOUT"),
        pytest.param("stdout=pyfork.STDOUT", "stdout", id="stdout-STDOUT"),
        pytest.param('env={"A=B": "1"}', "environment", id="env-equals"),
        pytest.param('env={"": "1"}', "environment", id="env-empty-key"),
        pytest.param('env={"A": "x\\0y"}', "environment", id="env-nul"),
        pytest.param('env={1: "x"}', "env", id="env-int-key"),
        pytest.param('env={"A": 1}', "env", id="env-int-value"),
        pytest.param('env=["A=1"]', "env", id="env-list"),
        pytest.param("cwd=5", "cwd", id="cwd-int"),
        pytest.param('argv="python app.py"', "argv", id="argv-str"),
        pytest.param("argv=[]", "argv", id="argv-empty"),
        pytest.param("argv=[sys.executable, 5]", "argv", id="argv-int"),
        pytest.param("executable=5", "executable", id="executable-int"),
        pytest.param("pass_fds=[-1]", "pass_fds", id="pass_fds-negative"),
        pytest.param('pass_fds=["3"]', "pass_fds", id="pass_fds-str"),
        pytest.param("pass_fds=3", "pass_fds", id="pass_fds-int"),
        pytest.param("process_group=-1", "process_group", id="pgid-negative"),
        pytest.param('process_group="0"', "process_group", id="pgid-str"),
        pytest.param("process_group=True", "process_group", id="pgid-bool"),
        pytest.param('transport="socket"', "transport", id="transport"),
    ],
)
def test_invalid_option(
    run_script: ScriptRunner, options: str, phrase: str
) -> None:
    """Fork() raises ValueError or TypeError naming the invalid option."""
    body = f"""
    pyfork.init()
    emit(outcome=outcome_of(lambda: pyfork.Fork(touch, {options})))
    """
    result = run(run_script, body)
    outcome = result["outcome"]

    assert outcome["type"] in ("ValueError", "TypeError"), outcome
    assert phrase in outcome["message"]
    assert outcome["children"] is False


def test_invalid_function(run_script: ScriptRunner) -> None:
    """Fork() of something that is neither a name nor callable raises."""
    body = """
    pyfork.init()
    emit(outcome=outcome_of(lambda: pyfork.Fork(3.5)))
    """
    result = run(run_script, body)
    outcome = result["outcome"]

    assert outcome["type"] == "TypeError"
    assert "float" in outcome["message"]
