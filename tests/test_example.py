"""The examples in examples/ run and print what the README shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import ScriptRunner


def test_example_prints_two_pids(
    run_script: ScriptRunner, repository: Path
) -> None:
    """example.py prints the parent's pid, then the child's, which differ."""
    script = repository / "examples" / "example.py"
    completed = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=run_script.environment(),
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    match = re.fullmatch(
        r"main\(\) pid: (\d+)\nchild\(1\) pid: (\d+)\n", completed.stdout
    )
    assert match is not None, completed.stdout
    assert match.group(1) != match.group(2)
    assert run_script.tmpdir.exists()
    assert list(run_script.tmpdir.iterdir()) == []
