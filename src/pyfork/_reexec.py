"""Work out the command that starts the current program again."""

from __future__ import annotations

import os
import sys

from ._errors import PyforkError

# CPython options that take an argument, in the same or the next token.
_OPTIONS_WITH_ARGUMENT = "WX"
_LONG_OPTIONS_WITH_ARGUMENT = ("--check-hash-based-pycs",)

_command: tuple[str, list[str]] | None = None


class _LaunchMode:
    """Where the interpreter found the program, and the rewritten argv."""

    def __init__(self, kind: str, options: list[str], rest: list[str]):
        self.kind = kind  # "script", "module", "command", "stdin", "prompt"
        self.options = options  # interpreter options, without -i
        self.rest = rest  # the script, module or command, then its args


def _strip_inspect(cluster: str) -> str | None:
    """Return a cluster of flag letters without ``i``, or None if empty."""
    letters = cluster[1:].replace("i", "")
    return "-" + letters if letters else None


def parse_orig_argv(orig_argv: list[str]) -> _LaunchMode:
    """Split ``sys.orig_argv`` into interpreter options and the program.

    ``-i`` is dropped from the options: the child must not open a prompt.
    """
    options: list[str] = []
    args = orig_argv[1:]
    while args:
        arg = args.pop(0)
        if arg == "-":
            return _LaunchMode("stdin", options, [arg, *args])
        if arg == "--":
            return _LaunchMode("script" if args else "prompt", options, args)
        if not arg.startswith("-"):
            return _LaunchMode("script", options, [arg, *args])
        if arg.startswith("--"):
            options.append(arg)
            if arg in _LONG_OPTIONS_WITH_ARGUMENT and args:
                options.append(args.pop(0))
            continue
        mode = _parse_cluster(arg, args, options)
        if mode is not None:
            return mode
    return _LaunchMode("prompt", options, [])


def _parse_cluster(
    cluster: str, args: list[str], options: list[str]
) -> _LaunchMode | None:
    """Parse one token of short options, such as ``-OOu`` or ``-Wignore``.

    Appends the options to ``options`` and takes an option's argument from
    ``args`` when the token ends first. Returns the launch mode when the
    token holds ``-c`` or ``-m``, else None.
    """
    for j, letter in enumerate(cluster[1:], start=1):
        if letter not in "cm" + _OPTIONS_WITH_ARGUMENT:
            continue
        flags = _strip_inspect(cluster[:j])
        if flags is not None:
            options.append(flags)
        attached = cluster[j + 1 :]
        if letter in "cm":
            kind = "command" if letter == "c" else "module"
            program = ["-" + letter, *([attached] if attached else []), *args]
            return _LaunchMode(kind, options, program)
        options.append("-" + cluster[j:])
        if not attached and args:
            options.append(args.pop(0))
        return None
    flags = _strip_inspect(cluster)
    if flags is not None:
        options.append(flags)
    return None


def _absolute_script(script: str) -> str:
    """Return the absolute path of the script, wherever the cwd is now.

    ``__main__.__file__`` is absolute for a script, and the spec's origin
    is ``DIR/__main__.py`` for a directory or zip application. Both were
    resolved against the start-up directory.
    """
    if os.path.isabs(script):
        return script
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None:
        candidate = getattr(main, "__file__", None)
    else:
        origin = getattr(spec, "origin", None)
        candidate = os.path.dirname(origin) if origin else None
    name = os.path.basename(os.path.normpath(script))
    if (
        isinstance(candidate, str)
        and os.path.isabs(candidate)
        and os.path.basename(candidate) == name
    ):
        return candidate
    # NOTE: this resolves against the current directory, which is wrong
    # when the program changed directory before __main__ was set up.
    return os.path.abspath(script)


def _build_command() -> tuple[str, list[str]]:
    executable = sys.executable
    if not executable:
        message = (
            "cannot re-execute this program: sys.executable is empty, so "
            "the interpreter is unknown"
        )
        raise PyforkError(message)
    if getattr(sys, "frozen", False):
        return executable, [executable, *sys.orig_argv[1:]]

    mode = parse_orig_argv(sys.orig_argv)
    if mode.kind == "prompt":
        message = (
            "cannot re-execute the interactive prompt: run the code that "
            "calls pyfork.fork() from a script file or with python -m"
        )
        raise PyforkError(message)
    if mode.kind == "stdin":
        message = (
            "cannot re-execute a program read from standard input: save "
            "it to a file and run that"
        )
        raise PyforkError(message)
    rest = list(mode.rest)
    if mode.kind == "script":
        rest[0] = _absolute_script(rest[0])
    return executable, [sys.orig_argv[0], *mode.options, *rest]


def child_command() -> tuple[str, list[str]]:
    """Return the executable and argv that start this program again.

    Raises PyforkError for a launch mode that cannot be re-executed.
    """
    global _command
    if _command is None:
        _command = _build_command()
    executable, argv = _command
    return executable, list(argv)
