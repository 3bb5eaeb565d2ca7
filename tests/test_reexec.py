"""_reexec.parse_orig_argv() on argv lists, with no process started."""

from __future__ import annotations

import pytest

from pyfork._reexec import parse_orig_argv

PYTHON = "python3"


@pytest.mark.parametrize(
    ("argv", "options", "rest"),
    [
        pytest.param(["app.py"], [], ["app.py"], id="plain"),
        pytest.param(
            ["app.py", "-i", "-c", "x"],
            [],
            ["app.py", "-i", "-c", "x"],
            id="script-args-kept",
        ),
        pytest.param(["-O", "app.py"], ["-O"], ["app.py"], id="O"),
        pytest.param(["-OO", "app.py"], ["-OO"], ["app.py"], id="OO"),
        pytest.param(["-B", "app.py"], ["-B"], ["app.py"], id="B"),
        pytest.param(["-u", "app.py"], ["-u"], ["app.py"], id="u"),
        pytest.param(["-I", "app.py"], ["-I"], ["app.py"], id="I"),
        pytest.param(["-P", "app.py"], ["-P"], ["app.py"], id="P"),
        pytest.param(
            ["-E", "-s", "app.py"], ["-E", "-s"], ["app.py"], id="Es"
        ),
        pytest.param(["-Bu", "app.py"], ["-Bu"], ["app.py"], id="Bu-cluster"),
        pytest.param(
            ["-W", "error", "app.py"],
            ["-W", "error"],
            ["app.py"],
            id="W-separate",
        ),
        pytest.param(
            ["-Werror", "app.py"], ["-Werror"], ["app.py"], id="W-attached"
        ),
        pytest.param(
            ["-X", "dev", "app.py"], ["-X", "dev"], ["app.py"], id="X-separate"
        ),
        pytest.param(
            ["-Xutf8", "app.py"], ["-Xutf8"], ["app.py"], id="X-attached"
        ),
        pytest.param(
            ["-uWerror", "app.py"],
            ["-u", "-Werror"],
            ["app.py"],
            id="uW-cluster",
        ),
        pytest.param(
            ["-BX", "dev", "app.py"],
            ["-B", "-X", "dev"],
            ["app.py"],
            id="BX-cluster-separate",
        ),
        pytest.param(
            ["--check-hash-based-pycs", "always", "app.py"],
            ["--check-hash-based-pycs", "always"],
            ["app.py"],
            id="check-hash-based-pycs",
        ),
        pytest.param(
            ["-W", "app.py", "script.py"],
            ["-W", "app.py"],
            ["script.py"],
            id="W-takes-next-token",
        ),
    ],
)
def test_options_kept(
    argv: list[str], options: list[str], rest: list[str]
) -> None:
    """Interpreter options other than -i are kept, with their arguments."""
    mode = parse_orig_argv([PYTHON, *argv])

    assert mode.kind == "script"
    assert mode.options == options
    assert mode.rest == rest


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        pytest.param(["-i", "app.py"], [], id="alone"),
        pytest.param(["-i", "-u", "app.py"], ["-u"], id="before-flag"),
        pytest.param(["-iu", "app.py"], ["-u"], id="cluster-first"),
        pytest.param(["-ui", "app.py"], ["-u"], id="cluster-last"),
        pytest.param(["-OiB", "app.py"], ["-OB"], id="cluster-middle"),
        pytest.param(["-ii", "app.py"], [], id="twice"),
        pytest.param(
            ["-iW", "ignore", "app.py"], ["-W", "ignore"], id="before-W"
        ),
        pytest.param(
            ["-iWerror", "app.py"], ["-Werror"], id="before-W-attached"
        ),
        pytest.param(
            ["-W", "ignore", "app.py"], ["-W", "ignore"], id="W-argument"
        ),
        pytest.param(["-Wignore", "app.py"], ["-Wignore"], id="W-attached"),
        pytest.param(["-Wi", "app.py"], ["-Wi"], id="W-shorthand"),
        pytest.param(
            ["-Xint_max_str_digits=0", "app.py"],
            ["-Xint_max_str_digits=0"],
            id="X-attached",
        ),
        pytest.param(
            ["-X", "importtime", "app.py"],
            ["-X", "importtime"],
            id="X-argument",
        ),
    ],
)
def test_inspect_dropped(argv: list[str], options: list[str]) -> None:
    """-i is dropped from flags, but an option's argument keeps its 'i'."""
    mode = parse_orig_argv([PYTHON, *argv])

    assert mode.kind == "script"
    assert mode.options == options
    assert mode.rest == ["app.py"]


@pytest.mark.parametrize(
    ("argv", "kind", "options", "rest"),
    [
        pytest.param(
            ["-m", "pkg.mod", "a", "-i"],
            "module",
            [],
            ["-m", "pkg.mod", "a", "-i"],
            id="m-separate",
        ),
        pytest.param(["-mpkg"], "module", [], ["-m", "pkg"], id="m-attached"),
        pytest.param(
            ["-um", "pkg"], "module", ["-u"], ["-m", "pkg"], id="m-cluster"
        ),
        pytest.param(
            ["-im", "pkg"], "module", [], ["-m", "pkg"], id="m-after-i"
        ),
        pytest.param(
            ["-O", "-m", "pkg", "-O"],
            "module",
            ["-O"],
            ["-m", "pkg", "-O"],
            id="m-args-kept",
        ),
        pytest.param(
            ["-c", "code", "a", "b"],
            "command",
            [],
            ["-c", "code", "a", "b"],
            id="c-separate",
        ),
        pytest.param(
            ["-cCODE", "a"],
            "command",
            [],
            ["-c", "CODE", "a"],
            id="c-attached",
        ),
        pytest.param(
            ["-ic", "code"], "command", [], ["-c", "code"], id="c-after-i"
        ),
        pytest.param(
            ["-Bc", "code"], "command", ["-B"], ["-c", "code"], id="c-cluster"
        ),
        pytest.param(
            ["-c", "print(1)", "-i"],
            "command",
            [],
            ["-c", "print(1)", "-i"],
            id="c-args-kept",
        ),
        pytest.param(["-"], "stdin", [], ["-"], id="stdin"),
        pytest.param(
            ["-u", "-", "a"], "stdin", ["-u"], ["-", "a"], id="stdin-args"
        ),
        pytest.param([], "prompt", [], [], id="nothing"),
        pytest.param(["-i"], "prompt", [], [], id="only-i"),
        pytest.param(
            ["-u", "-B"], "prompt", ["-u", "-B"], [], id="only-flags"
        ),
        pytest.param(
            ["--", "app.py", "a"],
            "script",
            [],
            ["app.py", "a"],
            id="double-dash",
        ),
        pytest.param(
            ["-O", "--", "-weird.py"],
            "script",
            ["-O"],
            ["-weird.py"],
            id="double-dash-dash-name",
        ),
        pytest.param(["--"], "prompt", [], [], id="double-dash-alone"),
    ],
)
def test_launch_mode(
    argv: list[str], kind: str, options: list[str], rest: list[str]
) -> None:
    """Each way of naming the program gives its launch mode and argv."""
    mode = parse_orig_argv([PYTHON, *argv])

    assert mode.kind == kind
    assert mode.options == options
    assert mode.rest == rest


def test_input_not_changed() -> None:
    """parse_orig_argv() leaves the list it was given unchanged."""
    argv = [PYTHON, "-i", "-W", "error", "app.py", "a"]
    copy = list(argv)

    parse_orig_argv(argv)

    assert argv == copy
