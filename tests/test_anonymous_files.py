"""Scenario tests of the anonymous files without memfd and over a size limit.

A launcher compiled here installs a seccomp filter that makes
memfd_create() fail with ENOSYS, as on a kernel before 3.17 or in a
sandbox that filters it, and then runs the script. Both backends must then
create their anonymous files in the temporary directory and unlink them
at once. The file size limit (RLIMIT_FSIZE) makes writing a payload fail
while creating it works.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ScriptRunner

# Seconds a script may run.
SCRIPT_TIMEOUT = 60

LAUNCHER_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Run PROGRAM with memfd_create() failing with ENOSYS, in it and in every
 * process it starts. */
int main(int argc, char **argv)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_memfd_create, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {
        .len = sizeof filter / sizeof filter[0],
        .filter = filter,
    };
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROGRAM [ARG...]\n", argv[0]);
        return 2;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) {
        perror("nomemfd: seccomp");
        return 125;
    }
    execv(argv[1], argv + 1);
    perror("nomemfd: execv");
    return 126;
}
"""

# Exit code of the launcher when the kernel rejects the filter.
NO_SECCOMP = 125

# Reports whether memfd_create() fails here, then starts children with a
# marshal payload, a pickle payload and a payload large enough to be
# pickled straight into its file.
NO_MEMFD_SCRIPT = """
import errno
import json
import os
import pyfork


class Box:
    def __init__(self, value):
        self.value = value


@pyfork.register
def measure(value):
    if isinstance(value, Box):
        value = value.value
    return len(value)


pyfork.init()

if __name__ == "__main__":
    try:
        os.close(os.memfd_create("probe"))
        memfd = "works"
    except OSError as error:
        memfd = errno.errorcode[error.errno]
    results = [
        pyfork.fork(measure, b"x" * 100).result(),
        pyfork.fork(measure, Box(b"x" * 100)).result(),
        pyfork.fork(measure, Box(b"x" * 2_000_000)).result(),
    ]
    print(json.dumps({"memfd": memfd, "results": results}))
"""

# Starts the first children of the process from several threads at once,
# which all find memfd missing together.
RACE_SCRIPT = """
import json
import threading
import pyfork


@pyfork.register
def double(n):
    return 2 * n


pyfork.init()

if __name__ == "__main__":
    barrier = threading.Barrier(4)
    results = {}
    errors = []

    def start(n):
        barrier.wait()
        try:
            results[n] = pyfork.fork(double, n).result()
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=start, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"results": sorted(results.items()), "errors": errors}))
"""

# Writes a 4 KB payload with the file size limit at 1 KB, then again with
# the limit lifted. CPython ignores SIGXFSZ, so the write fails with EFBIG.
FILE_SIZE_SCRIPT = """
import json
import resource
import pyfork


@pyfork.register
def measure(data):
    return len(data)


pyfork.init()

if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
    try:
        pyfork.fork(measure, "x" * 4096)
        error = None
    except pyfork.PyforkError as caught:
        error = f"{type(caught).__name__}: {caught}"
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    after = pyfork.fork(measure, "y" * 4096).result()
    print(json.dumps({"error": error, "after": after}))
"""


@pytest.fixture(scope="session")
def no_memfd_launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled launcher that runs a program without memfd_create()."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("a C compiler is needed to build the seccomp launcher")
    directory = tmp_path_factory.mktemp("launcher")
    source = directory / "nomemfd.c"
    source.write_text(LAUNCHER_SOURCE, encoding="ascii")
    launcher = directory / "nomemfd"
    subprocess.run(
        [compiler, "-std=c11", "-Wall", "-o", str(launcher), str(source)],
        check=True,
    )
    return launcher


def _run_without_memfd(
    run_script: ScriptRunner, launcher: Path, source: str
) -> subprocess.CompletedProcess[str]:
    script = run_script.write(source)
    completed = subprocess.run(
        [str(launcher), sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        cwd=run_script.directory,
        env=run_script.environment(),
        check=False,
    )
    if completed.returncode == NO_SECCOMP:
        pytest.skip(f"the kernel rejected the filter: {completed.stderr}")
    return completed


def _leftover_files(run_script: ScriptRunner) -> list[str]:
    return sorted(path.name for path in run_script.tmpdir.iterdir())


def test_fork_without_memfd(
    run_script: ScriptRunner, no_memfd_launcher: Path
) -> None:
    """Without memfd, every payload kind reaches the child through an
    unlinked file in TMPDIR, and no file is left there."""
    run = _run_without_memfd(run_script, no_memfd_launcher, NO_MEMFD_SCRIPT)

    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["memfd"] == "ENOSYS"
    assert report["results"] == [100, 100, 2_000_000]
    assert _leftover_files(run_script) == []


def test_first_forks_race_without_memfd(
    run_script: ScriptRunner, no_memfd_launcher: Path
) -> None:
    """Threads that start the first children together, each finding memfd
    missing, all succeed."""
    run = _run_without_memfd(run_script, no_memfd_launcher, RACE_SCRIPT)

    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["errors"] == []
    assert report["results"] == [[n, 2 * n] for n in range(4)]
    assert _leftover_files(run_script) == []


def test_payload_over_file_size_limit(run_script: ScriptRunner) -> None:
    """A payload that the file size limit stops is a PyforkError that names
    the payload file in memory, and the next fork works."""
    run = run_script(FILE_SIZE_SCRIPT, timeout=SCRIPT_TIMEOUT)

    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["error"] == (
        "PyforkError: cannot create the payload file in memory: "
        "File too large (errno 27)"
    )
    assert report["after"] == 4096
    assert run.leftover_files() == []
