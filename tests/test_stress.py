"""Stress tests: thousands of forks, many threads, and low resource limits.

Every test runs a real script that forks through pyfork, on both
backends, and checks afterwards that the script's process leaked
nothing: the same open fds as before its first fork, no zombie and no
unreaped child, no pyfork file in TMPDIR, and RSS growth within a
bound.

Sizes in CI, per backend: 2,000 sequential forks and 16 threads x 100
concurrent forks. The whole module took 96-121 s on 2 cores (Debian 12,
CPython 3.11.7) in runs that shared the machine with other work.
``PYFORK_STRESS_SCALE=N`` multiplies the fork counts by N.
``PYFORK_STRESS_LONG=1`` adds one long-lived parent that forks 10,000
times in a loop, 4 to 4.5 minutes per backend. ``pytest -m "not
stress"`` skips this module.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ScriptRun, ScriptRunner

pytestmark = pytest.mark.stress


def _read_scale() -> float:
    text = os.environ.get("PYFORK_STRESS_SCALE", "1")
    try:
        scale = float(text)
    except ValueError:
        scale = 0.0
    if not scale > 0:
        message = (
            f"PYFORK_STRESS_SCALE must be a positive number, not {text!r}"
        )
        raise pytest.UsageError(message)
    return scale


SCALE = _read_scale()
SEQUENTIAL_FORKS = max(1, round(2000 * SCALE))
THREADS = 16
FORKS_PER_THREAD = max(1, round(100 * SCALE))
LONG_FORKS = 10_000

# Forks before the RSS baseline, which load the modules that pyfork
# imports on first use (pickle, inspect, tempfile) and warm the allocator.
WARM_UP_FORKS = 20
# Bounds on RSS growth from the end of the warm-up to the end of a run,
# in KiB. Measured at CI sizes on Debian 12, CPython 3.11.7, 2 cores:
# 128-132 KiB sequential and 564-800 KiB with 16 threads, where glibc
# gives each thread a malloc arena of its own. 94 KiB of the sequential
# growth is CPython's free list of 3-tuples, which sys._debugmallocstats()
# shows growing by one tuple per fork up to its cap of 2,000. The bounds
# are 5 to 8 times the measured growth.
SEQUENTIAL_RSS_BOUND_KIB = 1024
THREADED_RSS_BOUND_KIB = 4096
# Growth over the second half of the long run, 5,000 forks after the free
# list is full. Measured: 8 KiB on each backend. A leak of 64 bytes per
# fork (312 KiB) would exceed it.
LONG_RSS_BOUND_KIB = 256

# Seconds a whole script may take at CI sizes, with room for slow machines.
SCRIPT_TIMEOUT = 600 * max(1.0, SCALE)

# The start of every script. It runs in every child too, because a child is
# a new run of the same script, so the parent's code comes after init().
SCRIPT_HEAD = """
import os
import sys

import pyfork


@pyfork.register
def echo(value):
    return value


pyfork.init()

# Children never get past init(), so they skip these imports.
import json
import threading
import time


def open_fds():
    # listdir() opens the directory, so its fd is in the listing but is
    # closed by the time readlink() runs.
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            pass
    return fds


def children():
    # Every process whose parent is this one, with its state letter.
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat_file:
                stat = stat_file.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # The command name in brackets may contain spaces and brackets.
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == me:
            found.append([int(name), fields[0]])
    return found
"""

STRESS_BODY = """
def rss_kib():
    with open("/proc/self/status") as status_file:
        for line in status_file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS line in /proc/self/status")


SPECS = [pyfork.Fork(echo), pyfork.Fork(echo, transport="path")]


def fork_and_check(i):
    # Alternate the transports, and send every fourth argument through
    # pickle rather than marshal.
    value = bytearray(b"%d" % i) if i % 4 == 3 else i
    spec = SPECS[i % 2]
    if i % 3 == 0:
        with spec.start(value) as process:
            pass
        if process.returncode != 0:
            raise AssertionError(f"fork {i}: exit code {process.returncode}")
        returned = process.result()
    else:
        returned = spec.start(value).result()
    if type(returned) is not type(value) or returned != value:
        raise AssertionError(f"fork {i}: sent {value!r}, got {returned!r}")


def run_sequential(count, checkpoints):
    for i in range(count):
        fork_and_check(i)
        if (i + 1) % max(1, count // checkpoints) == 0:
            RSS.append([i + 1, rss_kib()])


def run_threads(threads, count):
    errors = []
    barrier = threading.Barrier(threads)

    def work(thread_number):
        barrier.wait()
        for i in range(count):
            try:
                fork_and_check(thread_number * count + i)
            except Exception as error:
                errors.append(f"thread {thread_number}: {error!r}")
                return

    workers = [
        threading.Thread(target=work, args=(n,)) for n in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    RSS.append([threads * count, rss_kib()])
    return errors


if __name__ == "__main__":
    mode = sys.argv[1]
    FDS_BEFORE = open_fds()
    RSS = []
    errors = []
    started = time.monotonic()
    for i in range(WARM_UP_FORKS):
        fork_and_check(i)
    RSS.append([0, rss_kib()])
    if mode == "sequential":
        run_sequential(int(sys.argv[2]), 10)
    elif mode == "threads":
        errors = run_threads(int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "long":
        run_sequential(int(sys.argv[2]), 50)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    report = {
        "seconds": time.monotonic() - started,
        "errors": errors,
        "fds_before": FDS_BEFORE,
        "fds_after": open_fds(),
        "children": children(),
        "rss_kib": RSS,
    }
    print(json.dumps(report))
"""


def _stress_script() -> str:
    constants = f"WARM_UP_FORKS = {WARM_UP_FORKS}\n"
    return textwrap.dedent(SCRIPT_HEAD) + constants + STRESS_BODY


def _report(run: ScriptRun) -> dict[str, Any]:
    """Return the script's JSON report, or fail with its output."""
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines, f"the script printed nothing; stderr:\n{run.stderr}"
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def _check_no_leaks(run: ScriptRun, report: dict[str, Any]) -> None:
    """Assert that the script's process ended as it started."""
    assert report["errors"] == []
    assert report["fds_after"] == report["fds_before"]
    zombies = [pid for pid, state in report["children"] if state == "Z"]
    assert zombies == []
    assert report["children"] == []
    assert run.leftover_files() == []


def _rss_growth_kib(report: dict[str, Any]) -> int:
    """Return RSS growth from the warm-up baseline to the end, in KiB."""
    samples = report["rss_kib"]
    return int(samples[-1][1] - samples[0][1])


def test_sequential_forks_leak_nothing(run_script: ScriptRunner) -> None:
    """Sequential forks leave no fd, child, file or memory behind."""
    run = run_script(
        _stress_script(),
        "sequential",
        str(SEQUENTIAL_FORKS),
        timeout=SCRIPT_TIMEOUT,
    )
    report = _report(run)

    _check_no_leaks(run, report)
    growth = _rss_growth_kib(report)
    assert growth <= SEQUENTIAL_RSS_BOUND_KIB, report["rss_kib"]


def test_threaded_forks_leak_nothing(run_script: ScriptRunner) -> None:
    """Forks from 16 threads at once leave nothing behind."""
    run = run_script(
        _stress_script(),
        "threads",
        str(THREADS),
        str(FORKS_PER_THREAD),
        timeout=SCRIPT_TIMEOUT,
    )
    report = _report(run)

    _check_no_leaks(run, report)
    growth = _rss_growth_kib(report)
    assert growth <= THREADED_RSS_BOUND_KIB, report["rss_kib"]


@pytest.mark.skipif(
    os.environ.get("PYFORK_STRESS_LONG") != "1",
    reason="set PYFORK_STRESS_LONG=1 to run 10,000 forks in one parent",
)
def test_long_lived_parent_flat(run_script: ScriptRunner) -> None:
    """A parent that forks 10,000 times keeps flat fds and memory."""
    run = run_script(
        _stress_script(),
        "long",
        str(LONG_FORKS),
        timeout=SCRIPT_TIMEOUT * 10,
    )
    report = _report(run)

    _check_no_leaks(run, report)
    # The baseline is the checkpoint halfway through the run.
    samples = report["rss_kib"]
    growth = samples[-1][1] - samples[len(samples) // 2][1]
    assert growth <= LONG_RSS_BOUND_KIB, samples


# Resource limits

# attempt() runs one fork() and records what it raised and the errno: of
# a SpawnError, or of the OSError that caused another PyforkError.
LIMIT_HELPERS = """
import errno
import resource

TRANSPORTS = ("fd", "path")


def attempt(transport):
    try:
        spec = pyfork.Fork(echo, transport=transport)
        returned = spec.start(transport).result()
    except Exception as error:
        cause = error if isinstance(error, OSError) else error.__cause__
        return {
            "transport": transport,
            "raised": type(error).__name__,
            "errno": getattr(cause, "errno", None),
            "message": str(error),
        }
    return {"transport": transport, "raised": None, "returned": returned}


def results_after_limit_raised():
    return [
        pyfork.Fork(echo, transport=transport).start(transport).result()
        for transport in TRANSPORTS
    ]


def fill_fds():
    # Open /dev/null until the fd limit is reached. Return the new fds.
    opened = []
    while True:
        try:
            opened.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as error:
            if error.errno != errno.EMFILE:
                raise
            return opened


def close_all(fds):
    for fd in fds:
        os.close(fd)
"""

NPROC_BODY = """
if __name__ == "__main__":
    fds_before = open_fds()
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    # 0 is below the count of this user's processes, this one included.
    resource.setrlimit(resource.RLIMIT_NPROC, (0, hard))
    failures = [attempt(transport) for transport in TRANSPORTS]
    fds_limited = open_fds()
    files_limited = os.listdir(os.environ["TMPDIR"])
    resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
    report = {
        "uid": os.getuid(),
        "failures": failures,
        "fds_before": fds_before,
        "fds_limited": fds_limited,
        "files_limited": files_limited,
        "results_after": results_after_limit_raised(),
        "fds_after": open_fds(),
        "children": children(),
    }
    print(json.dumps(report))
"""

NOFILE_BODY = """
if __name__ == "__main__":
    fds_before = open_fds()
    # pyfork imports some modules on the first fork, which needs fds.
    results_before = results_after_limit_raised()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))
    outcomes = []
    fillers = fill_fds()
    for free in FREE_FD_COUNTS:
        for transport in TRANSPORTS:
            close_all(fillers[:free])
            del fillers[:free]
            outcome = attempt(transport)
            outcome["free"] = free
            # A fork that leaks nothing leaves the same fds free.
            refill = fill_fds()
            outcome["free_after"] = len(refill)
            fillers.extend(refill)
            outcomes.append(outcome)
    close_all(fillers)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    report = {
        "results_before": results_before,
        "outcomes": outcomes,
        "fds_before": fds_before,
        "results_after": results_after_limit_raised(),
        "fds_after": open_fds(),
        "children": children(),
    }
    print(json.dumps(report))
"""

FIRST_FORK_BODY = """
if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))
    fillers = fill_fds()
    outcome = attempt("fd")
    close_all(fillers)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    report = {
        "outcome": outcome,
        "results_after": results_after_limit_raised(),
        "children": children(),
    }
    print(json.dumps(report))
"""

# The soft RLIMIT_NOFILE of the NOFILE script, above the fds that the
# interpreter opens at start-up.
FD_LIMIT = 64
# With 0 or 1 free fds the result or payload file cannot be created. With
# 2 free fds both files exist, and the python backend's spawn() needs one
# more fd to list /proc/self/fd. With 3 or more every fork succeeds.
FREE_FD_COUNTS = (0, 1, 2, 3)


def _limit_script(body: str, **constants: object) -> str:
    lines = [f"{name} = {value!r}\n" for name, value in constants.items()]
    parts = [textwrap.dedent(SCRIPT_HEAD), *lines, LIMIT_HELPERS, body]
    return "".join(parts)


@dataclass
class Unprivileged:
    """How to run a script as a user that RLIMIT_NPROC applies to."""

    command: list[str]  # the prefix that switches user, or empty
    python: str  # the interpreter that the user can run
    env: dict[str, str]  # additions to the environment
    uid: int
    gid: int


@pytest.fixture
def unprivileged() -> Iterator[Unprivileged]:
    """Arrange to run a script as user nobody, or skip the test.

    RLIMIT_NPROC does not apply to root. As root, the script runs as
    nobody through setpriv (util-linux) with one capability,
    CAP_DAC_READ_SEARCH, so that it can read the interpreter and the
    sources wherever they are installed (CI installs into a directory of
    mode 0700). It cannot write anything it does not own. pyfork checks
    the interpreter with access(), which ignores capabilities, so the
    script runs a copy of the interpreter in a directory that anyone can
    search, with pyfork and cffi on PYTHONPATH.
    """
    if os.geteuid() != 0:
        yield Unprivileged([], sys.executable, {}, os.getuid(), os.getgid())
        return
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip(
            "RLIMIT_NPROC does not apply to root, and setpriv (util-linux),"
            " which would run the script as an unprivileged user, is not"
            " installed"
        )
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip(
            "RLIMIT_NPROC does not apply to root, and there is no user"
            " 'nobody' to run the script as"
        )
    command = [
        setpriv,
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        "--inh-caps=-all,+dac_read_search",
        "--ambient-caps=-all,+dac_read_search",
        "--bounding-set=-all,+dac_read_search",
    ]
    import _cffi_backend

    import pyfork

    paths = [
        str(Path(pyfork.__file__).resolve().parent.parent),
        str(Path(_cffi_backend.__file__).resolve().parent),
    ]
    env = {"PYTHONPATH": os.pathsep.join(paths)}
    directory = Path(tempfile.mkdtemp(prefix="pyfork-stress-"))
    try:
        directory.chmod(0o755)
        venv = directory / "venv"
        subprocess.run(
            [sys.executable, "-m", "venv", "--copies", "--without-pip", venv],
            check=True,
        )
        python = str(venv / "bin" / "python")
        probe = subprocess.run(
            [*command, python, "-c", "import pyfork"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=False,
        )
        if probe.returncode != 0:
            pytest.skip(
                "RLIMIT_NPROC does not apply to root, and user nobody"
                f" cannot import pyfork: {probe.stderr.strip()}"
            )
        yield Unprivileged(command, python, env, nobody.pw_uid, nobody.pw_gid)
    finally:
        shutil.rmtree(directory)


def test_nproc_limit_spawn_error(
    run_script: ScriptRunner, unprivileged: Unprivileged
) -> None:
    """Under RLIMIT_NPROC fork() raises SpawnError with EAGAIN, then works."""
    script = run_script.write(_limit_script(NPROC_BODY))
    os.chown(run_script.tmpdir, unprivileged.uid, unprivileged.gid)
    completed = subprocess.run(
        [*unprivileged.command, unprivileged.python, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=run_script.directory,
        env=run_script.environment(unprivileged.env),
        check=False,
    )
    run = ScriptRun(
        completed.returncode,
        completed.stdout,
        completed.stderr,
        run_script.tmpdir,
    )
    report = _report(run)

    assert report["uid"] != 0
    transports = [failure["transport"] for failure in report["failures"]]
    assert transports == ["fd", "path"]
    for failure in report["failures"]:
        assert failure["raised"] == "SpawnError", failure
        assert failure["errno"] == errno.EAGAIN, failure
    assert report["fds_limited"] == report["fds_before"]
    assert report["files_limited"] == []
    assert report["results_after"] == ["fd", "path"]
    assert report["fds_after"] == report["fds_before"]
    assert report["children"] == []
    assert run.leftover_files() == []


def test_nofile_limit_leaks_nothing(run_script: ScriptRunner) -> None:
    """With no fd to spare fork() raises SpawnError, leaks none, recovers."""
    run = run_script(
        _limit_script(
            NOFILE_BODY, FD_LIMIT=FD_LIMIT, FREE_FD_COUNTS=FREE_FD_COUNTS
        ),
        timeout=120,
    )
    report = _report(run)

    outcomes = report["outcomes"]
    for outcome in outcomes:
        assert outcome["free_after"] == outcome["free"], outcome
    for outcome in outcomes:
        if outcome["raised"] is None:
            assert outcome["returned"] == outcome["transport"], outcome
        else:
            assert outcome["errno"] == errno.EMFILE, outcome
    short = [outcome for outcome in outcomes if outcome["free"] < 2]
    assert [outcome["raised"] for outcome in short] == ["SpawnError"] * 4
    ample = [outcome for outcome in outcomes if outcome["free"] >= 3]
    assert [outcome["raised"] for outcome in ample] == [None, None]
    assert report["results_after"] == ["fd", "path"]
    assert report["fds_after"] == report["fds_before"]
    assert report["children"] == []
    assert run.leftover_files() == []


def test_nofile_limit_first_fork(run_script: ScriptRunner) -> None:
    """The first fork() of a process, with no fd free, raises SpawnError."""
    run = run_script(
        _limit_script(FIRST_FORK_BODY, FD_LIMIT=FD_LIMIT), timeout=120
    )
    report = _report(run)

    outcome = report["outcome"]
    assert report["results_after"] == ["fd", "path"]
    assert report["children"] == []
    assert outcome["errno"] == errno.EMFILE, outcome
    assert outcome["raised"] == "SpawnError", outcome
