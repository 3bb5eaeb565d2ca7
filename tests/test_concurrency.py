"""Forks from many threads at once, with blocked signals, and Ctrl-C.

Every test runs a real script with real threads and real signals. The
scripts print one JSON line, which the tests parse.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from conftest import ScriptRunner

STRESS_SCRIPT = """\
import json
import os
import subprocess
import sys
import threading

import pyfork


@pyfork.register
def echo(value):
    return value, os.getpid()


pyfork.init()

THREADS = int(sys.argv[1])
FORKS_PER_THREAD = int(sys.argv[2])


def child_pids():
    # Processes whose parent is this one, zombies included.
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue  # the process exited during the scan
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == os.getpid():
            pids.append(int(name))
    return pids


def has_unreaped_child():
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


def main():
    # Even threads send named payload files, odd threads anonymous ones.
    specs = (pyfork.Fork(echo, transport="path"), pyfork.Fork(echo))
    start = threading.Barrier(THREADS + 1)
    forks_done = threading.Event()
    failures = []
    results = []
    env_runs = 0
    env_marker_runs = 0

    def fork_repeatedly(index):
        spec = specs[index % 2]
        start.wait()
        for number in range(FORKS_PER_THREAD):
            argument = [index, number]
            try:
                process = spec.start(argument)
                value, pid = process.result(timeout=60)
            except Exception as error:
                failures.append(f"{argument}: {type(error).__name__}: {error}")
                continue
            if value != argument or pid != process.pid:
                failures.append(
                    f"{argument}: child {process.pid} returned "
                    f"{value!r} from pid {pid}"
                )
            if process.returncode != 0:
                failures.append(f"{argument}: exit code {process.returncode}")
            results.append(value)

    def run_env_repeatedly():
        nonlocal env_runs, env_marker_runs
        start.wait()
        while not forks_done.is_set():
            completed = subprocess.run(
                ["env"], capture_output=True, check=True
            )
            env_runs += 1
            if b"PYFORK_CHILD" in completed.stdout:
                env_marker_runs += 1

    threads = [
        threading.Thread(target=fork_repeatedly, args=(index,))
        for index in range(THREADS)
    ]
    env_thread = threading.Thread(target=run_env_repeatedly)
    for thread in [*threads, env_thread]:
        thread.start()
    for thread in threads:
        thread.join()
    forks_done.set()
    env_thread.join()

    print(json.dumps({
        "results": len(results),
        "distinct_results": len({tuple(value) for value in results}),
        "failures": failures,
        "env_runs": env_runs,
        "env_marker_runs": env_marker_runs,
        "marker_in_environ": "PYFORK_CHILD" in os.environ,
        "child_pids": child_pids(),
        "unreaped_child": has_unreaped_child(),
    }))


if __name__ == "__main__":
    main()
"""

BLOCKED_SIGTERM_SCRIPT = """\
import json
import os
import select
import signal
import threading
import time

import pyfork


@pyfork.register
def sleeper(ready_fd):
    os.write(ready_fd, b"ready")
    os.close(ready_fd)
    time.sleep(60)


pyfork.init()

BLOCKED = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}


def signal_masks(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["SigBlk"], 16), int(fields["SigIgn"], 16)


def fork_with_signals_blocked(report):
    signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    report["thread_blocked"] = sorted(int(number) for number in mask)

    read_fd, write_fd = os.pipe()
    spec = pyfork.Fork(sleeper, pass_fds=[write_fd])
    process = spec.start(write_fd)
    os.close(write_fd)
    readable, _, _ = select.select([read_fd], [], [], 30)
    report["ready"] = bool(readable) and os.read(read_fd, 16) == b"ready"
    os.close(read_fd)

    report["child_blocked"], report["child_ignored"] = signal_masks(
        process.pid
    )
    process.terminate()
    try:
        report["returncode"] = process.wait(timeout=30)
    except pyfork.TimeoutExpired:
        process.kill()
        process.wait()
        report["returncode"] = "SIGTERM did not stop the child in 30 s"


if __name__ == "__main__":
    report = {}
    thread = threading.Thread(target=fork_with_signals_blocked, args=(report,))
    thread.start()
    thread.join()
    print(json.dumps(report))
"""

CTRL_C_SCRIPT = """\
import json
import time

import pyfork


@pyfork.register
def sleeper():
    print("ready", flush=True)
    time.sleep(60)


pyfork.init()

if __name__ == "__main__":
    process = None
    try:
        process = pyfork.fork(sleeper)
        process.wait()
    except KeyboardInterrupt:
        print(json.dumps({
            "interrupted": True,
            "pid": None if process is None else process.pid,
            "returncode": None if process is None else process.poll(),
        }), flush=True)
"""

STRESS_THREADS = 16
FORKS_PER_THREAD = 20

# A child started by glibc's posix_spawn() shows signals 32 and 33, which
# glibc reserves for itself, as ignored (seen with glibc 2.36). So the
# check of ignored signals covers signals 1-31 only.
STANDARD_SIGNALS = range(1, 32)


def signal_bits(signals: list[int]) -> int:
    """Return the /proc/PID/status mask of ``signals``."""
    mask = 0
    for number in signals:
        mask |= 1 << (number - 1)
    return mask


def last_json_line(stdout: str) -> dict[str, Any]:
    """Return the JSON object on the last line of ``stdout``."""
    lines = stdout.splitlines()
    assert lines, "the script printed nothing"
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def read_until(stream: Any, text: bytes, timeout: float) -> bytes:
    """Read ``stream`` until ``text`` arrives. Return all that was read."""
    received = b""
    deadline = time.monotonic() + timeout
    while text not in received:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {text!r} within {timeout} s: {received!r}"
        readable, _, _ = select.select([stream], [], [], remaining)
        if readable:
            chunk = os.read(stream.fileno(), 4096)
            assert chunk, f"output ended before {text!r}: {received!r}"
            received += chunk
    return received


def process_gone(pid: int, timeout: float) -> bool:
    """Return whether ``pid`` disappears or is a zombie within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat_file:
                state = stat_file.read().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


def test_threads_fork_concurrently(run_script: ScriptRunner) -> None:
    """16 threads fork 20 children each. env never outputs the marker."""
    run = run_script(
        STRESS_SCRIPT, str(STRESS_THREADS), str(FORKS_PER_THREAD), timeout=300
    )

    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    report = last_json_line(run.stdout)
    assert report["failures"] == []
    assert report["results"] == STRESS_THREADS * FORKS_PER_THREAD
    assert report["distinct_results"] == STRESS_THREADS * FORKS_PER_THREAD
    assert report["env_runs"] > 0
    assert report["env_marker_runs"] == 0
    assert report["marker_in_environ"] is False
    assert report["child_pids"] == []
    assert report["unreaped_child"] is False
    assert run.leftover_files() == []


def test_blocked_sigterm_not_inherited(run_script: ScriptRunner) -> None:
    """A child forked from a thread that blocks SIGTERM can be terminated."""
    run = run_script(BLOCKED_SIGTERM_SCRIPT, timeout=120)

    assert run.returncode == 0, run.stderr
    report = last_json_line(run.stdout)
    blocked = [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1]
    assert set(blocked) <= set(report["thread_blocked"])
    assert report["ready"] is True
    assert report["child_blocked"] == 0
    assert report["returncode"] == -signal.SIGTERM
    # posix_spawn() resets SIGPIPE and SIGXFSZ to SIG_DFL, but CPython
    # sets both to SIG_IGN again during its own start-up, so a running
    # child always ignores them. NOTE: the reset cannot be observed here.
    # What the test checks is that the child ignores no other signal.
    standard = signal_bits(list(STANDARD_SIGNALS))
    expected = signal_bits([signal.SIGPIPE, signal.SIGXFSZ])
    assert report["child_ignored"] & standard == expected


@dataclass
class InterruptedRun:
    """The output of a parent script that got Ctrl-C while in wait()."""

    returncode: int
    stdout: str
    stderr: str
    parent_pid: int


def interrupt_while_waiting(run_script: ScriptRunner) -> InterruptedRun:
    """Run CTRL_C_SCRIPT and send SIGINT to its group once it is ready.

    The parent runs in a new session, so its group contains only the parent
    and the child, as the foreground group of a terminal would at Ctrl-C.
    """
    script = run_script.write(CTRL_C_SCRIPT)
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=run_script.environment(),
        cwd=run_script.directory,
        start_new_session=True,
    )
    try:
        received = read_until(parent.stdout, b"ready\n", timeout=30)
        # start_new_session makes the parent the leader of a new group.
        os.killpg(parent.pid, signal.SIGINT)
        stdout, stderr = parent.communicate(timeout=30)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    return InterruptedRun(
        parent.returncode,
        (received + stdout).decode(),
        stderr.decode(),
        parent.pid,
    )


def kill_group(group: int) -> None:
    """Send SIGKILL to what is left of a process group, if anything."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_ctrl_c_stops_both_quietly(run_script: ScriptRunner) -> None:
    """SIGINT to the group interrupts wait() and stops the child quietly."""
    run = interrupt_while_waiting(run_script)
    try:
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        assert "KeyboardInterrupt" not in run.stderr
        assert run.stderr == ""
        report = last_json_line(run.stdout)
        assert report["interrupted"] is True
        child_pid = report["pid"]
        assert isinstance(child_pid, int)
        # wait() gives the child a short grace period to exit after
        # Ctrl-C. Past it the parent reports None, and the child must
        # still stop on its own. test_ctrl_c_keeps_exit_status checks
        # the reported status itself.
        if report["returncode"] != -signal.SIGINT:
            assert process_gone(child_pid, timeout=10)
    finally:
        # The child stays in the group if it outlived the parent.
        kill_group(run.parent_pid)


CTRL_C_ROUNDS = 5


def test_ctrl_c_keeps_exit_status(run_script: ScriptRunner) -> None:
    """After Ctrl-C in wait(), poll() returns -SIGINT, not a lost status.

    The child and the parent get SIGINT at the same moment, so the child
    may exit before the parent leaves waitpid(). Each round is a new
    chance for that, and the status must survive it.
    """
    for _ in range(CTRL_C_ROUNDS):
        run = interrupt_while_waiting(run_script)
        kill_group(run.parent_pid)

        assert run.returncode == 0, run.stderr
        report = last_json_line(run.stdout)
        # None means the child took longer than the grace period to exit.
        assert report["returncode"] in (-signal.SIGINT, None)
