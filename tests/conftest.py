"""Fixtures that run real scripts with pyfork in a real interpreter.

pyfork re-executes the program that forks, so every fork happens in a
script that a test starts with ``sys.executable``. pytest's own process
never forks through pyfork.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

BACKENDS = ("c", "python")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test; every behaviour test runs on both."""
    name: str = request.param
    if name == "c":
        # The compiled core is part of every supported install, so a
        # missing core is a failure, not a skip.
        import pyfork._core  # noqa: F401
    return name


@dataclass
class ScriptRun:
    """The outcome of a script run by the ``run_script`` fixture."""

    returncode: int
    stdout: str
    stderr: str
    tmpdir: Path

    def leftover_files(self) -> list[str]:
        """Return the names of the files left in the run's TMPDIR."""
        return sorted(path.name for path in self.tmpdir.iterdir())


class ScriptRunner:
    """Write a script into a temporary directory and run it."""

    def __init__(self, directory: Path, backend: str) -> None:
        self.directory = directory
        self.backend = backend
        self.tmpdir = directory / "tmp"
        self.tmpdir.mkdir()

    def environment(
        self, extra: dict[str, str] | None = None
    ) -> dict[str, str]:
        """Return the environment of a run: this one, minus any marker."""
        env = dict(os.environ)
        env.pop("PYFORK_CHILD", None)
        env["PYFORK_BACKEND"] = self.backend
        env["TMPDIR"] = str(self.tmpdir)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if extra:
            env.update(extra)
        return env

    def write(self, source: str, name: str = "app.py") -> Path:
        """Write a dedented script and return its path."""
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        return path

    def __call__(
        self,
        source: str,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
        interpreter_options: tuple[str, ...] = (),
    ) -> ScriptRun:
        """Run ``source`` as ``app.py`` with ``sys.executable``."""
        script = self.write(source)
        completed = subprocess.run(
            [sys.executable, *interpreter_options, str(script), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or self.directory,
            env=self.environment(env),
            check=False,
        )
        return ScriptRun(
            completed.returncode,
            completed.stdout,
            completed.stderr,
            self.tmpdir,
        )


@pytest.fixture
def run_script(tmp_path: Path, backend: str) -> ScriptRunner:
    """Run a script that uses pyfork, on the backend under test."""
    return ScriptRunner(tmp_path, backend)


def open_fds() -> set[int]:
    """Return the fds open in pytest's own process, without the one that
    lists them."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue  # the fd of the listing, closed by now
        fds.add(int(name))
    return fds


@pytest.fixture(scope="session")
def repository() -> Path:
    """The root of the source tree."""
    return Path(__file__).resolve().parent.parent
