"""Scenario tests for ``python -m pyfork doctor`` and ``pyfork.doctor()``.

The command line runs in a real interpreter with the backend under test,
and ``pyfork.doctor()`` runs inside a script that describes itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from conftest import ScriptRunner

DOCTOR_USAGE = "usage: python -m pyfork doctor"
USAGE = "usage: python -m pyfork COMMAND"


def pyfork_command(
    runner: ScriptRunner, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pyfork`` with ``arguments`` in the runner's dir."""
    return subprocess.run(
        [sys.executable, "-m", "pyfork", *arguments],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        cwd=runner.directory,
        env=runner.environment(env),
        check=False,
    )


def doctor_json(runner: ScriptRunner, *program: str) -> Any:
    """Return the report of ``doctor --json`` on ``program``, as JSON."""
    completed = pyfork_command(runner, "doctor", "--json", *program)
    assert completed.stderr == ""
    return json.loads(completed.stdout)


# The command line.


def test_doctor_script(run_script: ScriptRunner, backend: str) -> None:
    """``doctor app.py`` reports a re-executable script."""
    script = run_script.write("print('never run')\n")
    completed = pyfork_command(run_script, "doctor", "app.py", "arg")
    lines = completed.stdout.splitlines()

    assert completed.returncode == 0, completed.stderr
    assert f"backend {backend}" in lines[0]
    assert "launch mode:      script" in lines
    assert f"argv:             {sys.executable} {script} arg" in lines
    assert f"starts in:        {run_script.directory}" in lines
    assert "environment:      + PYFORK_CHILD" in lines
    assert "re-executable:    yes" in lines
    assert "never run" not in completed.stdout


def test_doctor_module(run_script: ScriptRunner) -> None:
    """``doctor -m pkg`` reports a module launch from the current dir."""
    completed = pyfork_command(run_script, "doctor", "-m", "pkg", "arg")
    lines = completed.stdout.splitlines()

    assert completed.returncode == 0, completed.stderr
    assert "launch mode:      module" in lines
    assert f"argv:             {sys.executable} -m pkg arg" in lines
    assert f"starts in:        {run_script.directory}" in lines
    assert "re-executable:    yes" in lines


def test_doctor_json(run_script: ScriptRunner, backend: str) -> None:
    """``doctor --json`` prints the report with an absolute script path."""
    run_script.write("print('never run')\n")
    report = doctor_json(run_script, "app.py", "a", "b")
    script = str(run_script.directory / "app.py")

    assert report["mode"] == "script"
    assert report["backend"] == backend
    assert report["executable"] == sys.executable
    assert report["argv"] == [sys.executable, script, "a", "b"]
    assert report["start_directory"] == str(run_script.directory)
    assert "PYFORK_CHILD" in report["environment_added"]
    assert report["refused"] is None


def test_doctor_json_options(run_script: ScriptRunner) -> None:
    """Interpreter options are kept in the report, except -i."""
    run_script.write("print('never run')\n")
    report = doctor_json(run_script, "-O", "-i", "-X", "dev", "app.py")
    script = str(run_script.directory / "app.py")

    assert report["argv"] == [sys.executable, "-O", "-X", "dev", script]
    assert report["refused"] is None


def test_doctor_missing_script(run_script: ScriptRunner) -> None:
    """A script that does not exist is reported as not re-executable."""
    completed = pyfork_command(run_script, "doctor", "nosuch.py")

    assert completed.returncode == 1
    assert "nosuch.py does not exist" in completed.stdout


def test_doctor_json_command(run_script: ScriptRunner) -> None:
    """``doctor --json -c CODE`` reports a command launch."""
    report = doctor_json(run_script, "-c", "print(1)", "arg")

    assert report["mode"] == "command"
    assert report["argv"] == [sys.executable, "-c", "print(1)", "arg"]
    assert report["refused"] is None


@pytest.mark.parametrize(
    ("program", "name"),
    [
        pytest.param(["-m", "pytest"], "pytest", id="pytest"),
        pytest.param(["-m", "cProfile", "app.py"], "cProfile", id="cProfile"),
        pytest.param(["-"], "standard input", id="stdin"),
    ],
)
def test_doctor_rejected(
    run_script: ScriptRunner, program: list[str], name: str
) -> None:
    """A launch that pyfork rejects exits 1 and names the reason."""
    completed = pyfork_command(run_script, "doctor", *program)
    rejection = [
        line
        for line in completed.stdout.splitlines()
        if line.startswith("re-executable:")
    ]

    assert completed.returncode == 1, completed.stderr
    assert len(rejection) == 1, completed.stdout
    assert rejection[0].startswith("re-executable:    no: ")
    assert name in rejection[0]


def test_doctor_json_rejected(run_script: ScriptRunner) -> None:
    """``doctor --json -m pytest`` exits 1 with the reason in ``refused``."""
    completed = pyfork_command(run_script, "doctor", "--json", "-m", "pytest")
    report = json.loads(completed.stdout)

    assert completed.returncode == 1, completed.stderr
    assert "pytest" in report["refused"]
    assert "argv=" in report["refused"]


@pytest.mark.parametrize("arguments", [[], ["--json"]], ids=["bare", "json"])
def test_doctor_no_program(
    run_script: ScriptRunner, arguments: list[str]
) -> None:
    """``doctor`` without a program exits 2 with its usage on stderr."""
    completed = pyfork_command(run_script, "doctor", *arguments)

    assert completed.returncode == 2
    assert completed.stderr.startswith(DOCTOR_USAGE)
    assert completed.stdout == ""


def test_doctor_help(run_script: ScriptRunner) -> None:
    """``doctor --help`` prints its usage on stdout and exits 0."""
    completed = pyfork_command(run_script, "doctor", "--help")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(DOCTOR_USAGE)
    assert "--json" in completed.stdout


def test_command_missing(run_script: ScriptRunner) -> None:
    """``python -m pyfork`` alone prints the usage and exits 2."""
    completed = pyfork_command(run_script)
    output = completed.stdout + completed.stderr

    assert completed.returncode == 2
    assert USAGE in output
    assert "doctor" in output


def test_command_unknown(run_script: ScriptRunner) -> None:
    """An unknown command exits 2 and names the command on stderr."""
    completed = pyfork_command(run_script, "frobnicate")

    assert completed.returncode == 2
    assert "'frobnicate'" in completed.stderr
    assert USAGE in completed.stderr
    assert completed.stdout == ""


# pyfork.doctor() inside a program.

DESCRIBE_ITSELF = """\
import json

import pyfork

pyfork.init()
print("REPORT " + json.dumps(pyfork.doctor()))
"""


def report_of(completed: subprocess.CompletedProcess[str]) -> Any:
    """Return the JSON that DESCRIBE_ITSELF printed."""
    lines = [
        line.removeprefix("REPORT ")
        for line in completed.stdout.splitlines()
        if line.startswith("REPORT ")
    ]
    assert len(lines) == 1, (
        f"exit code {completed.returncode}\nstdout:\n{completed.stdout}\n"
        f"stderr:\n{completed.stderr}"
    )
    return json.loads(lines[0])


def run_python(
    runner: ScriptRunner, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``sys.executable`` with ``arguments`` in the runner's dir."""
    return subprocess.run(
        [sys.executable, *arguments],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        cwd=runner.directory,
        env=runner.environment(env),
        check=False,
    )


def test_doctor_function(run_script: ScriptRunner, backend: str) -> None:
    """pyfork.doctor() in a script describes that script."""
    script = run_script.write(DESCRIBE_ITSELF)
    report = report_of(run_python(run_script, "-B", "app.py", "arg"))

    assert report["mode"] == "script"
    assert report["backend"] == backend
    assert report["executable"] == sys.executable
    assert report["argv"] == [sys.executable, "-B", str(script), "arg"]
    assert report["start_directory"] == str(run_script.directory)
    assert report["environment_added"] == ["PYFORK_CHILD"]
    assert report["environment_removed"] == []
    assert report["refused"] is None


def test_doctor_function_inspect(run_script: ScriptRunner) -> None:
    """pyfork.doctor() under PYTHONINSPECT reports its removal."""
    run_script.write(DESCRIBE_ITSELF)
    completed = run_python(run_script, "app.py", env={"PYTHONINSPECT": "1"})
    report = report_of(completed)

    assert report["environment_removed"] == ["PYTHONINSPECT"]
    assert report["refused"] is None


def test_doctor_function_rejected(run_script: ScriptRunner) -> None:
    """pyfork.doctor() under ``-m cProfile`` reports the rejection."""
    run_script.write(DESCRIBE_ITSELF)
    completed = run_python(run_script, "-m", "cProfile", "app.py")
    report = report_of(completed)

    assert report["mode"] == "module"
    assert "cProfile" in report["refused"]
