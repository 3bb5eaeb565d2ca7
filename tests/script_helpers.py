"""A shared prelude for the scripts that the tests run, and its output.

Every test script is ``script(*bodies)``: ``PRELUDE``, then the bodies,
with optional code before the prelude. The prelude runs in the parent and
again in every child, because a child is a new run of the same script.
It defines:

- ``HERE``: the script's directory, for files that are not payloads;
- ``TMPDIR``: the run's temporary directory, where payloads go, or None
  in a child that ``env=`` started without ``TMPDIR``;
- ``emit(**values)``: write the values to stdout as one JSON line;
- ``has_children()``: whether this process has a child, exited or not;
- ``wait_for_file(path)``: block until ``path`` exists, for 30 s at most;
- ``process_state(pid)``: the state letter of ``/proc/PID/stat``, such as
  ``"Z"`` for a zombie, or None when the process is gone;
- ``wait_for_state(pid, state)``: poll until the process is in ``state``,
  for 30 s at most, and return without raising when it is not;
- ``is_reaped(pid)``: whether ``waitpid()`` raises ChildProcessError for
  ``pid``;
- ``attempt(label, function, *args, **kwargs)``: call the function, then
  emit under ``label`` what it raised and whether a child exists.

Code above ``pyfork.init()`` runs in every child too, so scripts emit
from functions or below ``init()``.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

PRELUDE = """\
import json
import os
import signal
import sys
import time

import pyfork

HERE = os.path.dirname(os.path.abspath(__file__))
TMPDIR = os.environ.get("TMPDIR")


def emit(**values):
    # On Linux one write() of under 4096 bytes to a pipe is atomic, so
    # lines from concurrent children do not mix. print() makes two writes
    # when PYTHONUNBUFFERED is set.
    sys.stdout.flush()
    os.write(1, (json.dumps(values) + "\\n").encode())


def has_children():
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


def wait_for_file(path):
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within 30 seconds")
        time.sleep(0.005)


def process_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except FileNotFoundError:
        return None
    return text.rpartition(")")[2].split()[0]


def wait_for_state(pid, state):
    deadline = time.monotonic() + 30
    while process_state(pid) != state and time.monotonic() < deadline:
        time.sleep(0.01)


def is_reaped(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def attempt(label, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except Exception as error:
        cause = error.__cause__
        outcome = {
            "type": type(error).__name__,
            "bases": [kind.__name__ for kind in type(error).__mro__],
            "message": str(error),
            "errno": getattr(error, "errno", None),
            "filename": getattr(error, "filename", None),
            "cause": None if cause is None else type(cause).__name__,
        }
    else:
        outcome = {"type": None}
    outcome["children"] = has_children()
    emit(**{label: outcome})

"""


def script(*bodies: str, before: str = "") -> str:
    """Return ``before``, the prelude, then each body, dedented on its own.

    Code in ``before`` runs ahead of the prelude's imports, in the parent
    and in every child.
    """
    parts = [textwrap.dedent(before), PRELUDE]
    parts.extend(textwrap.dedent(body) for body in bodies)
    return "".join(parts)


def records(stdout: str, *, only_json: bool = False) -> dict[str, Any]:
    """Merge the JSON objects that a script printed, one per line.

    Lines that do not start with ``{`` are skipped, unless ``only_json``
    is true: then every line must be JSON. A key that two lines share
    fails the test, so no output is lost silently.
    """
    merged: dict[str, Any] = {}
    for line in stdout.splitlines():
        if not only_json and not line.startswith("{"):
            continue
        values = json.loads(line)
        repeated = merged.keys() & values.keys()
        assert not repeated, f"keys {repeated} printed twice:\n{stdout}"
        merged.update(values)
    return merged


def line_number(source: str, text: str) -> int:
    """Return the 1-based number of the one line that contains ``text``."""
    numbers = [
        number
        for number, line in enumerate(source.splitlines(), start=1)
        if text in line
    ]
    assert len(numbers) == 1, f"{text!r} is on lines {numbers}"
    return numbers[0]
