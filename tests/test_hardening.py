"""Scenario tests for a child and a parent in hostile surroundings.

Each test runs a real script on both backends. The functions leave
threads or processes behind or close every fd. The parents have fd 0 or
1 closed, a low fd limit, or options that fail once the payload file
could exist, and one unrelated program inherits a marker. Only the test
of ``classify_record`` runs in pytest's own process, and it starts no
child.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import ScriptRunner
from script_helpers import records, script

from pyfork import EXIT_START_FAILED

# Seconds a script may run. A child that hangs fails the test here.
SCRIPT_TIMEOUT = 20

WORK = """
@pyfork.register
def work():
    return "ok"
"""

# Writes JSON lines to stderr, for a parent whose fd 1 is closed.
REPORT = """
def report(**values):
    os.write(2, (json.dumps(values) + "\\n").encode())
"""

# Ends a child that hangs, three minutes after the script's timeout has
# failed the test, so that a regression leaves no process behind.
WATCHDOG = """
import threading


def start_watchdog():
    def end_hung_child():
        time.sleep(SCRIPT_TIMEOUT + 180)
        os._exit(99)

    threading.Thread(target=end_hung_child, daemon=True).start()
"""

# Starts a child and returns the value, or the error as text, so one
# failing case does not hide the others.
OUTCOME = """
def outcome(spec, *args):
    try:
        return spec.start(*args).result()
    except pyfork.PyforkError as error:
        return f"{type(error).__name__}: {error}"
"""


def test_open_executor_exits(run_script: ScriptRunner) -> None:
    """A function that leaves a ThreadPoolExecutor open still returns."""
    source = script(
        f"SCRIPT_TIMEOUT = {SCRIPT_TIMEOUT}\n",
        WATCHDOG,
        """
        import concurrent.futures

        pool = None


        @pyfork.register
        def use_pool():
            global pool
            start_watchdog()
            pool = concurrent.futures.ThreadPoolExecutor(2)
            return pool.submit(pow, 2, 10).result()


        pyfork.init()
        emit(value=pyfork.fork(use_pool).result())
        """,
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["value"] == 1024


def test_init_off_main_thread(run_script: ScriptRunner) -> None:
    """A child whose init() runs in another thread fails to start."""
    source = script(
        f"SCRIPT_TIMEOUT = {SCRIPT_TIMEOUT}\n",
        WATCHDOG,
        WORK,
        """
        if pyfork.is_child():
            start_watchdog()
        initializer = threading.Thread(target=pyfork.init)
        initializer.start()
        initializer.join()

        if __name__ == "__main__":
            # A child that gets here has this variable from its parent, and
            # stops before it forks again.
            if "APP_PARENT_PID" in os.environ:
                emit(main_ran_in_child=os.getpid())
                sys.exit(0)
            os.environ["APP_PARENT_PID"] = str(os.getpid())
            process = pyfork.fork(work)
            emit(returncode=process.wait())
        """,
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == EXIT_START_FAILED
    assert "main thread" in run.stderr
    assert "main_ran_in_child" not in output


def test_closerange_keeps_user_file(run_script: ScriptRunner) -> None:
    """A file opened after closerange() holds only what the function wrote."""
    source = script(
        """
        user_file = None


        @pyfork.register
        def reopen(path):
            global user_file
            os.closerange(3, 256)
            user_file = open(path, "w")
            user_file.write("user data\\n")
            user_file.flush()
            return user_file.fileno()


        pyfork.init()
        path = os.path.join(HERE, "data.txt")
        process = pyfork.fork(reopen, path)
        try:
            emit(value=process.result())
        except pyfork.ChildError as error:
            emit(stage=error.stage)
        with open(path, "rb") as file:
            emit(data=file.read().decode("latin-1"))
        """
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["data"] == "user data\n"
    assert output.get("stage") == "exit", output


def test_marker_gone_for_grandchild(run_script: ScriptRunner) -> None:
    """A program that code above init() starts does not get the marker."""
    source = script(
        WORK,
        """
        import subprocess

        if pyfork.is_child():
            command = [
                sys.executable,
                "-c",
                "import os; print(os.environ.get('PYFORK_CHILD'))",
            ]
            grandchild = subprocess.run(
                command, capture_output=True, text=True, check=True
            )
            emit(grandchild_marker=grandchild.stdout.strip())

        pyfork.init()
        emit(value=pyfork.fork(work).result())
        """,
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["value"] == "ok"
    assert output["grandchild_marker"] == "None"


def test_stale_marker_spares_files(run_script: ScriptRunner) -> None:
    """A leaked marker whose fds name the program's own files writes none."""
    app = run_script.write(
        script(
            WORK,
            """
            pyfork.init()
            print("app output")
            """,
        )
    )
    data = run_script.directory / "data.bin"
    data.write_bytes(b"the program's own data\n")
    output_path = run_script.directory / "out.txt"
    # Result fd 1 is out.txt and payload fd 9 is data.bin, opened for
    # reading and writing.
    marker = "1:" + "0" * 32 + ":1:fd:9"
    command = [
        "/bin/sh",
        "-c",
        'exec "$0" "$1" 9<>"$2"',
        sys.executable,
        str(app),
        str(data),
    ]
    with output_path.open("wb") as output_file:
        completed = subprocess.run(
            command,
            stdout=output_file,
            stderr=subprocess.PIPE,
            env=run_script.environment({"PYFORK_CHILD": marker}),
            cwd=run_script.directory,
            timeout=SCRIPT_TIMEOUT,
            check=False,
        )

    assert completed.returncode == EXIT_START_FAILED, completed.stderr
    assert output_path.read_bytes() == b""
    assert data.read_bytes() == b"the program's own data\n"


# Runs before pyfork is imported, in the parent only: a child that ran it
# would close the stdin that pyfork gave it.
CLOSE_STDIN = """\
import os

if "PYFORK_CHILD" not in os.environ:
    os.close(0)
"""

CLOSE_STDOUT = """\
import os

if "PYFORK_CHILD" not in os.environ:
    os.close(1)
"""


def test_closed_stdin_parent(run_script: ScriptRunner) -> None:
    """A parent with fd 0 closed gives no child its payload as stdin."""
    source = CLOSE_STDIN + script(
        WORK,
        OUTCOME,
        """
        @pyfork.register
        def read_stdin():
            try:
                data = os.read(0, 4096)
            except OSError:
                data = b""
            return data.decode("latin-1")


        pyfork.init()
        devnull = pyfork.DEVNULL
        emit(
            default_value=outcome(pyfork.Fork(work)),
            devnull_value=outcome(pyfork.Fork(work, stdin=devnull)),
            default_read=outcome(pyfork.Fork(read_stdin)),
            devnull_read=outcome(pyfork.Fork(read_stdin, stdin=devnull)),
        )
        """,
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["default_value"] == "ok"
    assert output["devnull_value"] == "ok"
    assert "PYFORK" not in output["default_read"]
    assert output["devnull_read"] == ""


def test_closed_stdout_parent(run_script: ScriptRunner) -> None:
    """A parent with fd 1 closed gets the child's output through a pipe."""
    source = CLOSE_STDOUT + script(
        WORK,
        REPORT,
        OUTCOME,
        """
        @pyfork.register
        def shout():
            print("hello from the child", flush=True)
            return "shouted"


        pyfork.init()
        process = pyfork.Fork(shout, stdout=pyfork.PIPE).start()
        piped, _ = process.communicate()
        try:
            piped_value = process.result()
        except pyfork.ChildError as error:
            piped_value = f"ChildError: {error}"
        report(
            piped_output=piped.decode("latin-1"),
            piped_value=piped_value,
            default_value=outcome(pyfork.Fork(work)),
        )
        """,
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stderr)

    assert run.returncode == 0, run.stderr
    assert output["piped_output"] == "hello from the child\n"
    assert output["piped_value"] == "shouted"
    assert output["default_value"] == "ok"


def test_failed_options_leave_nothing(run_script: ScriptRunner) -> None:
    """Options that fail at start() raise and leave no payload file."""
    source = script(
        WORK,
        """
        import io

        pyfork.init()


        def start(**options):
            pyfork.Fork(work, transport="path", **options).start()


        attempt("bytes_io", start, stdout=io.BytesIO())
        emit(bytes_io_files=os.listdir(TMPDIR))
        attempt("surrogate", start, env={"X": "\\ud800"})
        emit(surrogate_files=os.listdir(TMPDIR))
        attempt("nul", start, argv=[sys.executable, "a\\0b"])
        emit(nul_files=os.listdir(TMPDIR))
        """,
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["bytes_io"]["type"] == "PyforkError"
    assert "stdout" in output["bytes_io"]["message"]
    assert output["bytes_io_files"] == []
    assert output["surrogate"]["type"] == "ValueError"
    assert "env" in output["surrogate"]["message"]
    assert output["surrogate_files"] == []
    assert output["nul"]["type"] == "ValueError"
    assert output["nul_files"] == []


def test_reaped_handles_hold_no_fd(run_script: ScriptRunner) -> None:
    """Handles kept after wait() hold no fd and still return results."""
    source = script(
        """
        @pyfork.register
        def square(number):
            return number * number


        pyfork.init()
        # A first fork loads the backend, so the count below includes only
        # what the handles hold.
        pyfork.fork(square, 0).result()
        before = len(os.listdir("/proc/self/fd"))
        processes = [pyfork.fork(square, number) for number in range(30)]
        for process in processes:
            process.wait()
        after = len(os.listdir("/proc/self/fd"))
        emit(
            before=before,
            after=after,
            values=[process.result() for process in processes],
        )
        """
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["after"] == output["before"]
    assert output["values"] == [number * number for number in range(30)]


def test_result_after_interrupted_decode(run_script: ScriptRunner) -> None:
    """result() returns the value after Ctrl-C hit its first decode."""
    source = script(
        """
        decode_calls = 0


        class Flaky:
            def __init__(self, value):
                self.value = value

            def __setstate__(self, state):
                global decode_calls
                decode_calls += 1
                if decode_calls == 1:
                    raise KeyboardInterrupt
                self.__dict__.update(state)


        @pyfork.register
        def make_flaky():
            return Flaky(42)


        pyfork.init()
        process = pyfork.fork(make_flaky)
        try:
            process.result()
        except KeyboardInterrupt:
            emit(first="KeyboardInterrupt")
        emit(second=process.result().value)
        """
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["first"] == "KeyboardInterrupt"
    assert output["second"] == 42


def test_classify_signal_over_bad_record() -> None:
    """A signal death is reported as such, whatever the record contains."""
    from pyfork._outcome import RawRecord, classify_record
    from pyfork._protocol import PayloadError

    raw = RawRecord(error=PayloadError("result file is truncated"))
    outcome = classify_record(
        raw,
        pid=4321,
        name="work",
        returncode=-9,
        status_lost=False,
        stderr=None,
    )

    assert outcome.error is not None
    assert outcome.error["stage"] == "signal"


def test_pass_fd_at_limit(run_script: ScriptRunner) -> None:
    """pass_fds may name the highest fd that RLIMIT_NOFILE allows."""
    source = script(
        """
        import resource


        @pyfork.register
        def write_to(fd):
            os.write(fd, b"through fd 63")
            return "ok"


        pyfork.init()
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        read_end, write_end = os.pipe()
        os.dup2(write_end, 63)
        os.close(write_end)
        try:
            process = pyfork.Fork(write_to, pass_fds=[63]).start(63)
            emit(value=process.result())
        except pyfork.PyforkError as error:
            emit(value=f"{type(error).__name__}: {error}")
        os.close(63)
        emit(data=os.read(read_end, 100).decode())
        """
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["value"] == "ok"
    assert output["data"] == "through fd 63"


def test_result_leaves_stderr_pipe(run_script: ScriptRunner) -> None:
    """result() leaves a piped stderr unread and blocking."""
    source = script(
        WORK,
        """
        if os.environ.get("APP_FAIL_EARLY"):
            sys.stderr.write("diagnostic before init\\n")
            sys.exit(3)


        @pyfork.register
        def complain():
            sys.stderr.write("diagnostic from the function\\n")
            return "ok"


        pyfork.init()
        early_env = {**os.environ, "APP_FAIL_EARLY": "1"}
        cases = {
            "early": pyfork.Fork(work, stderr=pyfork.PIPE, env=early_env),
            "function": pyfork.Fork(complain, stderr=pyfork.PIPE),
        }
        for label, spec in cases.items():
            process = spec.start()
            try:
                outcome = process.result()
            except pyfork.ChildError as error:
                outcome = error.stage
            stream = process.stderr
            emit(
                **{
                    label: {
                        "outcome": outcome,
                        "blocking": os.get_blocking(stream.fileno()),
                        "stderr": stream.read().decode(),
                    }
                }
            )
            stream.close()
        """,
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["early"]["outcome"] == "no_init"
    assert output["early"]["blocking"] is True
    assert output["early"]["stderr"].startswith("diagnostic before init\n")
    assert output["function"]["outcome"] == "ok"
    assert output["function"]["blocking"] is True
    assert output["function"]["stderr"] == "diagnostic from the function\n"


def test_os_fork_copy_result(run_script: ScriptRunner) -> None:
    """A copy made by os.fork() in the function cannot replace the result."""
    source = script(
        """
        @pyfork.register
        def fork_copy():
            original = os.getpid()
            if os.fork() == 0:
                # The copy returns after the original has exited, so its
                # record, if written, would be the last one.
                deadline = time.monotonic() + 30
                while os.getppid() == original:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
                return "copy"
            return "original"


        pyfork.init()
        # The child and its copy inherit the write end, so the read ends
        # once both have exited.
        read_end, write_end = os.pipe()
        process = pyfork.Fork(fork_copy, pass_fds=[write_end]).start()
        os.close(write_end)
        os.read(read_end, 1)
        emit(returncode=process.wait(), value=process.result())
        """
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 0
    assert output["value"] == "original"


def test_ignored_sigchld_result(run_script: ScriptRunner) -> None:
    """result() returns the value when SIGCHLD is ignored in the parent."""
    source = script(
        WORK,
        """
        pyfork.init()
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        emit(value=pyfork.fork(work).result())
        """,
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["value"] == "ok"


def test_bad_option_errors(run_script: ScriptRunner) -> None:
    """A closed stdout fd and a missing process group raise by name."""
    source = script(
        WORK,
        """
        pyfork.init()
        attempt("closed_stdout", pyfork.Fork(work, stdout=99).start)
        attempt("missing_group", pyfork.Fork(work, process_group=999999).start)
        """,
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["closed_stdout"]["type"] == "PyforkError"
    assert "stdout" in output["closed_stdout"]["message"]
    assert output["closed_stdout"]["children"] is False
    assert output["missing_group"]["type"] == "SpawnError"
    assert "process_group" in output["missing_group"]["message"]


def test_traceback_starts_at_function(run_script: ScriptRunner) -> None:
    """The traceback a failing child prints has no pyfork frame."""
    source = script(
        """
        @pyfork.register
        def fail():
            raise ValueError("broken on purpose")


        pyfork.init()
        try:
            pyfork.fork(fail).result()
        except pyfork.ChildError as error:
            emit(stage=error.stage, remote=error.remote_traceback)
        """
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)
    lines = run.stderr.splitlines()
    start = lines.index("Traceback (most recent call last):")

    assert run.returncode == 0, run.stderr
    assert output["stage"] == "raised"
    assert lines[start + 1].endswith(", in fail"), run.stderr
    assert "_child.py" not in run.stderr
    assert "_child.py" not in output["remote"]


def test_traceback_of_builtin_function(run_script: ScriptRunner) -> None:
    """A registered builtin that raises prints no pyfork frame either."""
    source = script(
        """
        import operator

        pyfork.register("divide", operator.truediv)
        pyfork.init()
        try:
            pyfork.fork("divide", 1, 0).result()
        except pyfork.ChildError as error:
            emit(stage=error.stage, remote=error.remote_traceback)
        """
    )
    run = run_script(source, timeout=SCRIPT_TIMEOUT)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["stage"] == "raised"
    assert "ZeroDivisionError: division by zero" in run.stderr
    assert "_child.py" not in run.stderr
    assert "_child.py" not in output["remote"]
