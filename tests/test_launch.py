"""Scenario tests for each way of starting a program that forks.

Each test starts a parent the way a user would: a script, ``-m``, ``-c``,
a zip application, a console script in a virtual environment, or with
interpreter flags. The parent forks a function that describes its own
start-up, then prints one ``RESULT`` line of JSON with its own description
and the child's. Launch modes that pyfork cannot re-execute must raise
PyforkError before anything is spawned.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ScriptRunner

import pyfork

# The directory that contains the pyfork package under test, for scripts
# whose interpreter ignores PYTHONPATH and the user's site directory.
PYFORK_PARENT = os.path.dirname(os.path.dirname(pyfork.__file__))

# describe() returns what a process observes of its own start-up.
DESCRIBE = """\
import json
import os
import sys

import pyfork


def describe():
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    flag_names = type(sys.flags).__match_args__
    return {
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "prefix": sys.prefix,
        "executable": sys.executable,
        "flags": {name: getattr(sys.flags, name) for name in flag_names},
        "warnoptions": sys.warnoptions,
        "xoptions": sys._xoptions,
        "write_through": sys.stdout.write_through,
        "main_name": main.__name__,
        "main_spec": None if spec is None else spec.name,
        "value": globals().get("VALUE"),
        "is_child": pyfork.is_child(),
        "pid": os.getpid(),
    }
"""

# The parent forks report(), after changing to CHDIR_BEFORE_FORK and
# prepending PREPEND_TO_SYS_PATH to sys.path when they are set, and prints
# both descriptions.
FORK_AND_PRINT = """\


@pyfork.register
def report():
    return describe()


pyfork.init()

if __name__ == "__main__":
    if os.environ.get("CHDIR_BEFORE_FORK"):
        os.chdir(os.environ["CHDIR_BEFORE_FORK"])
    if os.environ.get("PREPEND_TO_SYS_PATH"):
        sys.path.insert(0, os.environ["PREPEND_TO_SYS_PATH"])
    child = pyfork.fork(report).result()
    print("RESULT " + json.dumps({"parent": report(), "child": child}))
"""

APP = DESCRIBE + FORK_AND_PRINT

# A program that tries to fork touch(), which would create MARKER, and
# prints what fork() raised and whether any child process exists.
ATTEMPT = """\
import json
import os
import sys

import pyfork


@pyfork.register
def touch():
    with open(MARKER, "w"):
        pass


pyfork.init()


def has_children():
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


def attempt(start):
    try:
        start()
    except pyfork.PyforkError as error:
        outcome = {
            "type": type(error).__name__,
            "message": str(error),
            "errno": getattr(error, "errno", None),
            "filename": getattr(error, "filename", None),
        }
    else:
        outcome = {"type": None}
    outcome["children"] = has_children()
    print("RESULT " + json.dumps(outcome))
"""

ATTEMPT_FORK = """
attempt(lambda: pyfork.fork(touch).wait())
"""


def attempt_source(marker: Path, *bodies: str) -> str:
    """Return ATTEMPT with MARKER set, followed by the bodies."""
    source = f"MARKER = {str(marker)!r}\n" + ATTEMPT
    return source + "".join(textwrap.dedent(body) for body in bodies)


def launch(
    runner: ScriptRunner,
    argv: list[str | bytes | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    environment: dict[str, str] | None = None,
    stdin: Any = subprocess.DEVNULL,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and capture its output.

    The environment is the runner's plus ``env``, or ``environment``
    exactly when given.
    """
    if environment is None:
        environment = runner.environment(env)
    return subprocess.run(
        argv,
        stdin=None if input is not None else stdin,
        input=input,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        cwd=cwd or runner.directory,
        env=environment,
        check=False,
    )


def parse_result(completed: subprocess.CompletedProcess[str]) -> Any:
    """Return the JSON of the one ``RESULT`` line that a program printed."""
    lines = [
        line.removeprefix("RESULT ")
        for line in completed.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    assert len(lines) == 1, (
        f"expected one RESULT line, exit code {completed.returncode}\n"
        f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    )
    return json.loads(lines[0])


def run_and_parse(
    runner: ScriptRunner, argv: list[str | bytes | Path], **options: Any
) -> Any:
    """Launch ``argv`` and return its RESULT, which must come with exit 0."""
    completed = launch(runner, argv, **options)
    result = parse_result(completed)
    assert completed.returncode == 0, completed.stderr
    return result


def write_package(directory: Path, main_module: str) -> None:
    """Write package ``pkg`` whose ``main_module`` forks with a relative
    import of VALUE from ``pkg.helper``."""
    package = directory / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text('VALUE = "from pkg.helper"\n')
    source = "from .helper import VALUE\n" + APP
    (package / f"{main_module}.py").write_text(source, encoding="utf-8")


# Programs started directly.


def test_script_relative(run_script: ScriptRunner) -> None:
    """A child of ``python app.py`` gets the parent's argv and cwd."""
    run_script.write(APP)
    result = run_and_parse(run_script, [sys.executable, "app.py", "a", "b"])
    parent, child = result["parent"], result["child"]

    assert child["argv"] == ["app.py", "a", "b"]
    assert child["argv"] == parent["argv"]
    assert child["cwd"] == parent["cwd"]
    assert child["executable"] == parent["executable"]
    assert child["main_name"] == "__main__"
    assert child["is_child"] is True
    assert parent["is_child"] is False
    assert child["pid"] != parent["pid"]


def test_script_subdirectory_chdir(run_script: ScriptRunner) -> None:
    """``python ./sub/app.py`` forks after os.chdir() with argv unchanged."""
    run_script.write(APP, "sub/app.py")
    elsewhere = run_script.directory / "elsewhere"
    elsewhere.mkdir()
    argv = [sys.executable, "./sub/app.py", "x"]
    result = run_and_parse(
        run_script, argv, env={"CHDIR_BEFORE_FORK": str(elsewhere)}
    )
    child = result["child"]

    assert child["argv"] == ["./sub/app.py", "x"]
    assert child["cwd"] == str(elsewhere)
    assert child["main_name"] == "__main__"


def test_script_relative_argument(run_script: ScriptRunner) -> None:
    """Code above init() opens a relative path from argv after os.chdir()."""
    prefix = "import sys\nVALUE = open(sys.argv[1]).read()\n"
    run_script.write(prefix + APP)
    (run_script.directory / "data.txt").write_text("read at start-up")
    elsewhere = run_script.directory / "elsewhere"
    elsewhere.mkdir()
    argv = [sys.executable, "app.py", "data.txt"]
    result = run_and_parse(
        run_script, argv, env={"CHDIR_BEFORE_FORK": str(elsewhere)}
    )
    child = result["child"]

    assert child["value"] == "read at start-up"
    assert child["cwd"] == str(elsewhere)


def test_script_absolute_path(run_script: ScriptRunner) -> None:
    """A script given by its absolute path runs from another directory."""
    script = run_script.write(APP, "code/app.py")
    elsewhere = run_script.directory / "elsewhere"
    elsewhere.mkdir()
    argv = [sys.executable, str(script), "y"]
    result = run_and_parse(run_script, argv, cwd=elsewhere)
    child = result["child"]

    assert child["argv"] == [str(script), "y"]
    assert child["cwd"] == str(elsewhere)


def test_script_symlink(run_script: ScriptRunner) -> None:
    """A symlink to a script imports the modules next to the real file."""
    run_script.write("from helper import VALUE\n" + APP, "real/app.py")
    run_script.write('VALUE = "next to the real script"\n', "real/helper.py")
    (run_script.directory / "link.py").symlink_to("real/app.py")
    result = run_and_parse(run_script, [sys.executable, "link.py"])
    child = result["child"]

    assert child["argv"] == ["link.py"]
    assert child["value"] == "next to the real script"
    assert child["main_name"] == "__main__"


def test_script_unusual_directory(run_script: ScriptRunner) -> None:
    """Spaces and non-ASCII characters in the script's directory work."""
    run_script.write(APP, "dir with spaces/ñandú ☃/app.py")
    directory = run_script.directory / "dir with spaces" / "ñandú ☃"
    argv = [sys.executable, "app.py", "z"]
    result = run_and_parse(run_script, argv, cwd=directory)
    child = result["child"]

    assert child["argv"] == ["app.py", "z"]
    assert child["cwd"] == str(directory)


def test_script_non_ascii_arguments(run_script: ScriptRunner) -> None:
    """Non-ASCII, empty and undecodable arguments reach the child intact."""
    run_script.write(APP)
    arguments = ["héllo wörld", "☃ 🐍", "", "--opt=ü", "-c", "-m"]
    undecodable = b"caf\xe9"
    argv = [sys.executable, "app.py", *arguments, undecodable]
    result = run_and_parse(run_script, argv)
    child = result["child"]

    assert child["argv"] == ["app.py", *arguments, os.fsdecode(undecodable)]
    assert child["argv"] == result["parent"]["argv"]


# Modules, commands and applications.


@pytest.mark.parametrize("before_fork", ["nothing", "chdir", "sys_path"])
@pytest.mark.parametrize(
    ("module", "main_module"),
    [("pkg", "__main__"), ("pkg.mod", "mod")],
    ids=["package", "submodule"],
)
def test_module(
    run_script: ScriptRunner, module: str, main_module: str, before_fork: str
) -> None:
    """``python -m`` runs a module with relative imports in the child."""
    write_package(run_script.directory, main_module)
    elsewhere = run_script.directory / "elsewhere"
    elsewhere.mkdir()
    env = {
        "nothing": {},
        "chdir": {"CHDIR_BEFORE_FORK": str(elsewhere)},
        "sys_path": {"PREPEND_TO_SYS_PATH": "vendor"},
    }[before_fork]
    argv = [sys.executable, "-m", module, "arg"]
    result = run_and_parse(run_script, argv, env=env)
    parent, child = result["parent"], result["child"]
    expected_cwd = (
        elsewhere if before_fork == "chdir" else run_script.directory
    )

    assert child["value"] == "from pkg.helper"
    assert child["main_spec"] == f"pkg.{main_module}"
    assert child["main_name"] == "__main__"
    assert child["argv"] == parent["argv"]
    assert child["argv"][1:] == ["arg"]
    assert child["cwd"] == str(expected_cwd)


@pytest.mark.parametrize("chdir", [False, True], ids=["here", "chdir"])
def test_command(run_script: ScriptRunner, chdir: bool) -> None:
    """``python -c`` code that registers and forks runs in the child."""
    run_script.write('VALUE = "from the start-up directory"\n', "helper.py")
    elsewhere = run_script.directory / "elsewhere"
    elsewhere.mkdir()
    env = {"CHDIR_BEFORE_FORK": str(elsewhere)} if chdir else None
    code = "from helper import VALUE\n" + APP
    argv = [sys.executable, "-c", code, "a", "b"]
    result = run_and_parse(run_script, argv, env=env)
    child = result["child"]
    expected_cwd = elsewhere if chdir else run_script.directory

    assert child["argv"] == ["-c", "a", "b"]
    assert child["value"] == "from the start-up directory"
    assert child["main_name"] == "__main__"
    assert child["is_child"] is True
    assert child["cwd"] == str(expected_cwd)


def test_zipapp(run_script: ScriptRunner) -> None:
    """A zip application built with ``python -m zipapp`` forks."""
    run_script.write(APP, "source/__main__.py")
    build = launch(
        run_script,
        [sys.executable, "-m", "zipapp", "source", "-o", "app.pyz"],
    )
    assert build.returncode == 0, build.stderr
    elsewhere = run_script.directory / "elsewhere"
    elsewhere.mkdir()
    argv = [sys.executable, "app.pyz", "a"]
    result = run_and_parse(
        run_script, argv, env={"CHDIR_BEFORE_FORK": str(elsewhere)}
    )
    child = result["child"]

    assert child["argv"] == ["app.pyz", "a"]
    assert child["cwd"] == str(elsewhere)
    assert child["main_name"] == "__main__"


def test_directory_main(run_script: ScriptRunner) -> None:
    """A directory with ``__main__.py`` run by a relative path forks."""
    run_script.write(APP, "appdir/__main__.py")
    elsewhere = run_script.directory / "elsewhere"
    elsewhere.mkdir()
    argv = [sys.executable, "appdir", "a"]
    result = run_and_parse(
        run_script, argv, env={"CHDIR_BEFORE_FORK": str(elsewhere)}
    )
    child = result["child"]

    assert child["argv"] == ["appdir", "a"]
    assert child["cwd"] == str(elsewhere)
    assert child["main_name"] == "__main__"


# Virtual environments.

CLI_MODULE = (
    DESCRIBE
    + """

VALUE = "from mypkg.cli"


@pyfork.register
def report():
    return describe()


pyfork.init()


def main():
    child = pyfork.fork(report).result()
    print("RESULT " + json.dumps({"parent": report(), "child": child}))
    return 0
"""
)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv without pip that imports pyfork through a .pth file.

    It contains package ``mypkg`` and a console script ``mycli`` written as
    pip writes one, so no network access is needed.
    """
    import _cffi_backend

    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    python = root / "bin" / "python"
    site_packages = subprocess.run(
        [
            str(python),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    paths = [PYFORK_PARENT, os.path.dirname(_cffi_backend.__file__)]
    site = Path(site_packages)
    (site / "pyfork_under_test.pth").write_text("\n".join(paths) + "\n")
    (site / "mypkg").mkdir()
    (site / "mypkg" / "__init__.py").write_text("")
    (site / "mypkg" / "cli.py").write_text(CLI_MODULE)
    console_script = root / "bin" / "mycli"
    console_script.write_text(
        f"#!{python}\n"
        "import sys\n"
        "from mypkg.cli import main\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main())\n"
    )
    console_script.chmod(0o755)
    return root


def test_console_script(run_script: ScriptRunner, venv: Path) -> None:
    """A console script in a venv forks a child in the same venv."""
    result = run_and_parse(run_script, [venv / "bin" / "mycli", "a"])
    parent, child = result["parent"], result["child"]

    assert parent["prefix"] == str(venv)
    assert child["prefix"] == parent["prefix"]
    assert child["executable"] == str(venv / "bin" / "python")
    assert child["argv"] == [str(venv / "bin" / "mycli"), "a"]
    assert child["value"] == "from mypkg.cli"
    assert child["is_child"] is True


def test_venv_interpreter(run_script: ScriptRunner, venv: Path) -> None:
    """``<venv>/bin/python app.py`` forks a child in the same venv."""
    run_script.write(APP)
    python = venv / "bin" / "python"
    result = run_and_parse(run_script, [python, "app.py"])
    parent, child = result["parent"], result["child"]

    assert parent["prefix"] == str(venv)
    assert child["prefix"] == parent["prefix"]
    assert child["executable"] == str(python)


# Interpreter flags.


@pytest.mark.parametrize(
    ("options", "key", "field", "value"),
    [
        pytest.param(["-O"], "flags", "optimize", 1, id="O"),
        pytest.param(["-OO"], "flags", "optimize", 2, id="OO"),
        pytest.param(["-B"], "flags", "dont_write_bytecode", 1, id="B"),
        pytest.param(["-u"], "write_through", None, True, id="u"),
        pytest.param(["-I"], "flags", "isolated", 1, id="I"),
        pytest.param(
            ["-P"],
            "flags",
            "safe_path",
            True,
            id="P",
            marks=pytest.mark.skipif(
                sys.version_info < (3, 11), reason="-P is new in Python 3.11"
            ),
        ),
        pytest.param(["-W", "error"], "warnoptions", None, ["error"], id="W"),
        pytest.param(["-X", "dev"], "flags", "dev_mode", True, id="Xdev"),
        pytest.param(["-X", "utf8"], "flags", "utf8_mode", 1, id="Xutf8"),
    ],
)
def test_interpreter_flags(
    run_script: ScriptRunner,
    options: list[str],
    key: str,
    field: str | None,
    value: Any,
) -> None:
    """The child runs with the parent's interpreter flags and options."""
    # -I ignores PYTHONPATH, so the script finds pyfork itself.
    prefix = f"import sys\nsys.path.insert(0, {PYFORK_PARENT!r})\n"
    run_script.write(prefix + APP)
    env = run_script.environment()
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # it would set -B too
    argv = [sys.executable, *options, "app.py"]
    result = run_and_parse(run_script, argv, environment=env)
    parent, child = result["parent"], result["child"]
    observed = parent[key] if field is None else parent[key][field]

    assert observed == value
    assert child["flags"] == parent["flags"]
    assert child["warnoptions"] == parent["warnoptions"]
    assert child["xoptions"] == parent["xoptions"]
    assert child["write_through"] == parent["write_through"]


INSPECT_APP = (
    DESCRIBE
    + """

@pyfork.register
def report():
    return describe()


@pyfork.register
def exit_five():
    sys.exit(5)


pyfork.init()

try:
    pyfork.fork(exit_five).result()
except pyfork.ChildError as error:
    outcome = {"stage": error.stage, "returncode": error.returncode}
outcome["child"] = pyfork.fork(report).result()
outcome["parent"] = report()
print("RESULT " + json.dumps(outcome))
"""
)


@pytest.mark.parametrize("way", ["-i", "PYTHONINSPECT"])
def test_inspect_mode(run_script: ScriptRunner, way: str) -> None:
    """Under -i or PYTHONINSPECT the child exits with its own code."""
    run_script.write(INSPECT_APP)
    options = ["-i"] if way == "-i" else []
    env = {"PYTHONINSPECT": "1"} if way == "PYTHONINSPECT" else None
    argv = [sys.executable, *options, "app.py"]
    completed = launch(run_script, argv, env=env)
    result = parse_result(completed)
    output = completed.stdout + completed.stderr

    assert completed.returncode == 0, completed.stderr
    assert result["stage"] == "exit"
    assert result["returncode"] == 5
    assert result["parent"]["flags"]["inspect"] == 1
    assert result["child"]["flags"]["inspect"] == 0
    assert output.count(">>>") <= 1, output


def test_code_above_init_reruns(run_script: ScriptRunner) -> None:
    """Code above init() runs again in the child, code below it does not."""
    log = run_script.directory / "log"
    source = DESCRIBE + textwrap.dedent(
        f"""
        LOG = {str(log)!r}
        with open(LOG, "a") as file:
            file.write(f"above {{os.getpid()}}\\n")


        @pyfork.register
        def report():
            return describe()


        pyfork.init()

        with open(LOG, "a") as file:
            file.write(f"below {{os.getpid()}}\\n")
        child = pyfork.fork(report).result()
        print("RESULT " + json.dumps({{"parent": report(), "child": child}}))
        """
    )
    run_script.write(source)
    argv = [sys.executable, "app.py", "x", "--y"]
    result = run_and_parse(run_script, argv)
    parent, child = result["parent"], result["child"]
    lines = log.read_text().splitlines()

    assert f"above {parent['pid']}" in lines
    assert f"above {child['pid']}" in lines
    assert f"below {parent['pid']}" in lines
    assert f"below {child['pid']}" not in lines
    assert len(lines) == 3
    assert child["argv"] == ["app.py", "x", "--y"]


# Launch modes that pyfork rejects.


def check_rejected(
    result: dict[str, Any], marker: Path, *phrases: str
) -> None:
    """Assert that fork() raised PyforkError naming each phrase."""
    message = result.get("message", "")
    assert result["type"] == "PyforkError", result
    for phrase in (*phrases, "argv=", "executable="):
        assert phrase in message, f"{phrase!r} not in {message!r}"
    assert result["children"] is False
    assert not marker.exists()


@pytest.mark.parametrize("way", ["dash", "pipe"])
def test_stdin_program_rejected(run_script: ScriptRunner, way: str) -> None:
    """A program read from stdin cannot be re-executed."""
    marker = run_script.directory / "marker"
    source = attempt_source(marker, ATTEMPT_FORK)
    if way == "dash":
        script = run_script.write(source)
        with script.open("rb") as stdin:
            result = run_and_parse(
                run_script, [sys.executable, "-"], stdin=stdin
            )
    else:
        result = run_and_parse(run_script, [sys.executable], input=source)

    check_rejected(result, marker, "standard input")


def run_on_terminal(
    argv: list[str], typed: str, env: dict[str, str], cwd: Path
) -> str:
    """Run ``argv`` on a new pseudo-terminal, type ``typed``, return output.

    The output ends when the program exits, or after 30 seconds.
    """
    primary, secondary = os.openpty()
    try:
        process = subprocess.Popen(
            argv,
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        os.close(secondary)
    output = bytearray()
    try:
        os.write(primary, typed.encode())
        deadline = time.monotonic() + 30
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([primary], [], [], remaining)
            if not ready:
                break
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: every process closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(primary)
        if process.poll() is None:
            process.kill()
        process.wait()
    return output.decode(errors="replace").replace("\r\n", "\n")


def test_prompt_rejected(run_script: ScriptRunner) -> None:
    """Code typed at the interactive prompt cannot fork."""
    marker = run_script.directory / "marker"
    source = attempt_source(marker, ATTEMPT_FORK)
    typed = f"exec({source!r})\nexit()\n"
    env = run_script.environment({"TERM": "dumb"})
    env.pop("PYTHONSTARTUP", None)
    output = run_on_terminal(
        [sys.executable, "-i"], typed, env, run_script.directory
    )
    result = parse_result(
        subprocess.CompletedProcess([], 0, stdout=output, stderr="")
    )

    check_rejected(result, marker, "interactive prompt")


def test_ipython_rejected(run_script: ScriptRunner) -> None:
    """A program running under IPython cannot be re-executed."""
    marker = run_script.directory / "marker"
    body = """
    import builtins

    builtins.__IPYTHON__ = True
    """
    run_script.write(attempt_source(marker, body, ATTEMPT_FORK))
    result = run_and_parse(run_script, [sys.executable, "app.py"])

    check_rejected(result, marker, "IPython")


@pytest.mark.parametrize(
    ("wrapper", "name"),
    [
        pytest.param(["-m", "trace", "--listfuncs"], "trace", id="trace"),
        pytest.param(["-m", "cProfile"], "cProfile", id="cProfile"),
        pytest.param(["-m", "profile"], "profile", id="profile"),
        pytest.param(["-m", "coverage", "run"], "coverage", id="coverage"),
    ],
)
def test_wrapper_rejected(
    run_script: ScriptRunner, wrapper: list[str], name: str
) -> None:
    """A program run by a profiler or tracer cannot be re-executed."""
    if name == "coverage":
        pytest.importorskip("coverage", reason="coverage is not installed")
    marker = run_script.directory / "marker"
    run_script.write(attempt_source(marker, ATTEMPT_FORK))
    argv = [sys.executable, *wrapper, "app.py"]
    result = run_and_parse(run_script, argv)

    check_rejected(result, marker, name)


def test_pytest_rejected(run_script: ScriptRunner) -> None:
    """A test that forks under ``python -m pytest`` gets PyforkError."""
    marker = run_script.directory / "marker"
    body = """

    def test_fork():
        attempt(lambda: pyfork.fork(touch).wait())
    """
    run_script.write(attempt_source(marker, body), "inner/test_inner.py")
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        "test_inner.py",
    ]
    result = run_and_parse(
        run_script, argv, cwd=run_script.directory / "inner"
    )

    check_rejected(result, marker, "pytest")


@pytest.mark.parametrize(
    ("kind", "error", "errno_name"),
    [
        ("empty", "PyforkError", None),
        ("missing", "SpawnError", "ENOENT"),
        ("not_executable", "SpawnError", "EACCES"),
    ],
)
def test_bad_executable(
    run_script: ScriptRunner,
    kind: str,
    error: str,
    errno_name: str | None,
) -> None:
    """An empty, missing or non-executable sys.executable raises."""
    import errno

    marker = run_script.directory / "marker"
    paths = {
        "empty": "",
        "missing": str(run_script.directory / "no-such-python"),
        "not_executable": str(run_script.directory / "plain-file"),
    }
    (run_script.directory / "plain-file").write_text("not a program\n")
    body = f"""
    sys.executable = {paths[kind]!r}
    attempt(lambda: pyfork.fork(touch).wait())
    """
    run_script.write(attempt_source(marker, body))
    result = run_and_parse(run_script, [sys.executable, "app.py"])

    assert result["type"] == error
    assert result["children"] is False
    assert not marker.exists()
    if errno_name is None:
        assert "sys.executable is empty" in result["message"]
    else:
        assert result["errno"] == getattr(errno, errno_name)
        assert result["filename"] == paths[kind]


def test_module_start_directory_removed(run_script: ScriptRunner) -> None:
    """``python -m`` whose start-up directory is gone cannot fork."""
    write_package(run_script.directory / "packages", "__main__")
    marker = run_script.directory / "marker"
    start = run_script.directory / "start"
    start.mkdir()
    body = f"""
    os.chdir({str(run_script.directory)!r})
    os.rmdir({str(start)!r})
    attempt(lambda: pyfork.fork(touch).wait())
    """
    source = attempt_source(marker, body)
    (run_script.directory / "packages" / "pkg" / "__main__.py").write_text(
        source, encoding="utf-8"
    )
    env = {"PYTHONPATH": str(run_script.directory / "packages")}
    argv = [sys.executable, "-m", "pkg", "arg"]
    result = run_and_parse(run_script, argv, cwd=start, env=env)

    check_rejected(result, marker, "python -m pkg", str(start))


def test_frozen_plan(run_script: ScriptRunner) -> None:
    """A frozen app's child runs sys.executable with the original args."""
    body = """
    import pyfork._reexec

    sys.frozen = True
    launch = pyfork._reexec.plan()
    print("RESULT " + json.dumps({
        "mode": launch.mode,
        "executable": launch.executable,
        "argv": launch.argv,
        "cwd": launch.cwd,
        "problem": launch.problem,
    }))
    """
    run_script.write(attempt_source(run_script.directory / "marker", body))
    argv = [sys.executable, "app.py", "-O", "--x", "a"]
    result = run_and_parse(run_script, argv)

    assert result["mode"] == "frozen"
    assert result["executable"] == sys.executable
    assert result["argv"] == [sys.executable, "app.py", "-O", "--x", "a"]
    assert result["cwd"] == str(run_script.directory)
    assert result["problem"] is None


def test_escape_hatch_under_cprofile(run_script: ScriptRunner) -> None:
    """Fork(argv=..., executable=...) forks even under ``-m cProfile``."""
    source = APP.replace(
        "child = pyfork.fork(report).result()",
        "child = pyfork.Fork(\n"
        "        report,\n"
        "        argv=[sys.executable, os.path.abspath(sys.argv[0])],\n"
        "        executable=sys.executable,\n"
        "    ).start().result()",
    )
    assert source != APP
    run_script.write(source)
    argv = [sys.executable, "-m", "cProfile", "app.py", "a"]
    result = run_and_parse(run_script, argv)
    child = result["child"]

    assert child["is_child"] is True
    assert child["argv"] == ["app.py", "a"]
    assert child["main_name"] == "__main__"
