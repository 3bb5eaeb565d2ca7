"""Report what a child of a program would run, and what pyfork refuses."""

from __future__ import annotations

import os
import sys

from . import __version__
from ._backend import BACKEND
from ._child import MARKER, STARTUP_CWD
from ._reexec import parse_orig_argv, plan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def doctor(orig_argv: list[str] | None = None) -> dict[str, Any]:
    """Describe how pyfork would start a child of a program.

    With ``orig_argv`` None the program is the running one; otherwise
    ``orig_argv`` stands for the ``sys.orig_argv`` of a program started
    with this interpreter, such as ``[sys.executable, "app.py"]``.
    Returns a dict with the executable, argv, start-up directory, the
    environment changes, the backend, and the reason the launch mode is
    refused (None when it is not).
    """
    launch = plan(orig_argv)
    problem = launch.problem
    if problem is None and orig_argv is not None:
        problem = _missing_program(orig_argv)
    removed = [name for name in ("PYTHONINSPECT",) if name in os.environ]
    return {
        "pyfork_version": __version__,
        "backend": BACKEND,
        "mode": launch.mode,
        "executable": launch.executable,
        "argv": launch.argv,
        "start_directory": launch.cwd or os.getcwd(),
        "environment_added": [MARKER],
        "environment_removed": removed,
        "refused": problem,
    }


def _missing_program(orig_argv: list[str]) -> str | None:
    """Return why a described script cannot start, or None."""
    mode = parse_orig_argv(orig_argv)
    if mode.kind != "script":
        return None
    script = os.path.join(STARTUP_CWD, mode.rest[0])
    if os.path.exists(script):
        return None
    return f"the script {script} does not exist"


def format_report(report: dict[str, Any]) -> str:
    """Return a report from ``doctor()`` as lines of text."""
    import shlex

    lines = [
        f"pyfork {report['pyfork_version']}, backend {report['backend']}",
        f"launch mode:      {report['mode']}",
        f"executable:       {report['executable']}",
        f"argv:             {shlex.join(report['argv'])}",
        f"starts in:        {report['start_directory']}",
        "environment:      + " + ", ".join(report["environment_added"]),
    ]
    if report["environment_removed"]:
        removed = ", ".join(report["environment_removed"])
        lines.append(f"                  - {removed}")
    if report["refused"] is None:
        lines.append("re-executable:    yes")
    else:
        lines.append(f"re-executable:    no: {report['refused']}")
    return "\n".join(lines)


DOCTOR_USAGE = """\
usage: python -m pyfork doctor [--json] (SCRIPT | -m MODULE | -c CODE) [ARGS]

Show the command, start-up directory and environment changes that a
child of the given program would get, and whether pyfork refuses to
re-execute it. The program is described as if it were started with this
interpreter, with the given options and arguments.

options:
  --json   print the report as JSON
"""


def main(arguments: list[str]) -> int:
    """Run ``python -m pyfork doctor``. Return the exit code.

    The exit code is 0 for a program pyfork can re-execute, 1 for one it
    refuses, and 2 for a usage error.
    """
    as_json = bool(arguments) and arguments[0] == "--json"
    program = arguments[1:] if as_json else arguments
    if program[:1] in (["-h"], ["--help"]):
        print(DOCTOR_USAGE, end="")
        return 0
    if not program:
        print(DOCTOR_USAGE, end="", file=sys.stderr)
        return 2
    report = doctor([sys.executable, *program])
    if as_json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report["refused"] is None else 1
