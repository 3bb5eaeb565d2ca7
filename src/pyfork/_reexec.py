"""Work out the command that starts the current program again."""

from __future__ import annotations

import errno
import os
import sys

from ._child import STARTUP_CWD as _STARTUP_CWD
from ._child import STARTUP_PATH0 as _STARTUP_PATH0
from ._errors import PyforkError, SpawnError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

# CPython options that take an argument, in the same or the next token.
_OPTIONS_WITH_ARGUMENT = "WX"
_LONG_OPTIONS_WITH_ARGUMENT = ("--check-hash-based-pycs",)

_command: LaunchPlan | None = None


class _LaunchMode:
    """The launch mode of the program, and the child's rewritten argv."""

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
    token contains ``-c`` or ``-m``, else None.
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
    return os.path.join(_STARTUP_CWD, script)


class LaunchPlan:
    """The start of a child: its command and directory, or the refusal.

    Attributes:
        mode: ``"script"``, ``"module"``, ``"command"``, ``"frozen"`` or
            ``"custom"`` when ``argv`` was given, or the refused mode.
        executable: the file that posix_spawn starts.
        argv: the child's argument vector.
        cwd: the directory the child starts in, before it changes to the
            function's directory; None to start where the parent is.
        problem: why this program cannot be re-executed, or None.
    """

    def __init__(
        self,
        mode: str,
        executable: str,
        argv: list[str],
        cwd: str | None = None,
        problem: str | None = None,
    ) -> None:
        self.mode = mode
        self.executable = executable
        self.argv = argv
        self.cwd = cwd
        self.problem = problem

    def check(self) -> None:
        """Raise PyforkError when the plan cannot be carried out."""
        if self.problem is not None:
            raise PyforkError(self.problem)


_WAY_OUT = "pass the command to run with Fork(..., argv=[...], executable=...)"

# Programs whose replay would start them again instead of the user's
# program: test runners, debuggers, profilers and tracers.
_WRAPPER_MODULES = {
    "pytest": "the pytest test runner",
    "py.test": "the pytest test runner",
    "unittest": "the unittest test runner",
    "nose2": "the nose2 test runner",
    "pdb": "the pdb debugger",
    "debugpy": "the debugpy debugger",
    "pydevd": "the pydevd debugger",
    "cProfile": "the cProfile profiler",
    "profile": "the profile profiler",
    "trace": "the trace module",
    "coverage": "coverage's runner",
    "pyinstrument": "the pyinstrument profiler",
    "memray": "the memray profiler",
    "viztracer": "the viztracer tracer",
    "ipykernel_launcher": "a Jupyter kernel",
    "ipykernel": "a Jupyter kernel",
    "IPython": "IPython",
}
_WRAPPER_SCRIPTS = {
    "pytest": "the pytest test runner",
    "py.test": "the pytest test runner",
    "nose2": "the nose2 test runner",
    "debugpy": "the debugpy debugger",
    "coverage": "coverage's runner",
    "pyinstrument": "the pyinstrument profiler",
    "memray": "the memray profiler",
    "viztracer": "the viztracer tracer",
    "ipython": "IPython",
    "jupyter": "Jupyter",
}


def _wrapper_name(mode: _LaunchMode) -> str | None:
    """Return the wrapper that the command line starts, or None."""
    if mode.kind == "module" and len(mode.rest) > 1:
        top = mode.rest[1].split(".")[0]
        return _WRAPPER_MODULES.get(mode.rest[1]) or _WRAPPER_MODULES.get(top)
    if mode.kind == "script":
        name = os.path.basename(mode.rest[0])
        for suffix in (".py", "3"):
            name = name.removesuffix(suffix)
        return _WRAPPER_SCRIPTS.get(name)
    return None


def _refusal(mode: _LaunchMode, interactive: bool) -> str | None:
    """Return why this launch mode cannot be re-executed, or None."""
    if interactive:
        return (
            "cannot re-execute an IPython or Jupyter session: move the code "
            "that forks into a script file, or " + _WAY_OUT
        )
    if mode.kind == "prompt":
        if not sys.stdin or not sys.stdin.isatty():
            mode.kind = "stdin"
        else:
            return (
                "cannot re-execute the interactive prompt: run the code "
                "that forks from a script file, or " + _WAY_OUT
            )
    if mode.kind == "stdin":
        return (
            "cannot re-execute a program read from standard input: save "
            "it to a file and run that, or " + _WAY_OUT
        )
    wrapper = _wrapper_name(mode)
    if wrapper is not None:
        return (
            f"cannot re-execute a program started by {wrapper}: the child "
            "would start it again, not your program. Run your program "
            "directly, or " + _WAY_OUT
        )
    return None


def _module_start_dir() -> str | None:
    """Return the directory that ``-m`` searched first, or None.

    For ``-m``, CPython puts the start-up directory at ``sys.path[0]``
    unless safe_path (``-P``, ``-I``) is set. pyfork records it at import.
    """
    # sys.flags.safe_path exists from Python 3.11 on.
    if getattr(sys.flags, "safe_path", False) or not _STARTUP_PATH0:
        return None
    return _STARTUP_PATH0


def _executable(path: str) -> bool:
    """Return whether this process may execute ``path``.

    The check uses the effective ids, as execve() does, where the
    platform supports that; the plain check uses the real ids.
    """
    effective = os.access in os.supports_effective_ids
    return os.access(path, os.X_OK, effective_ids=effective)


def _check_executable(executable: str, given: bool) -> None:
    """Raise SpawnError for an executable that is missing or not runnable.

    ``given`` means that it came from ``Fork(executable=...)``, not from
    ``sys.executable``, for the message.
    """
    if not executable:
        if given:
            message = "Fork(executable=...) must not be empty"
        else:
            message = (
                "cannot re-execute this program: sys.executable is empty, "
                "so the interpreter is unknown; " + _WAY_OUT
            )
        raise PyforkError(message)
    if not os.path.exists(executable):
        err = errno.ENOENT
    elif not os.path.isfile(executable) or not _executable(executable):
        err = errno.EACCES
    else:
        return
    raise SpawnError(err, os.strerror(err), executable)


def plan(
    orig_argv: list[str] | None = None,
    executable: str | None = None,
    argv: list[str] | None = None,
) -> LaunchPlan:
    """Work out how a child of this program starts.

    ``orig_argv`` stands for ``sys.orig_argv`` (the doctor command passes
    a hypothetical one). ``executable`` and ``argv`` override the result,
    as ``Fork(executable=..., argv=...)`` do. Does not raise for a
    refused mode: the plan's ``problem`` gives the reason.
    """
    exe = executable if executable is not None else sys.executable
    if argv is not None:
        return LaunchPlan("custom", exe or argv[0], list(argv))
    if getattr(sys, "frozen", False):
        arguments = sys.orig_argv[1:] if orig_argv is None else orig_argv[1:]
        return LaunchPlan("frozen", exe, [exe, *arguments], _STARTUP_CWD)

    current = orig_argv is None
    mode = parse_orig_argv(sys.orig_argv if orig_argv is None else orig_argv)
    import builtins

    interactive = current and hasattr(builtins, "__IPYTHON__")
    problem = _refusal(mode, interactive)
    rest = list(mode.rest)
    start_dir: str | None = _STARTUP_CWD
    if mode.kind == "script" and problem is None:
        rest[0] = (
            _absolute_script(rest[0])
            if current
            else os.path.join(_STARTUP_CWD, rest[0])
        )
    elif mode.kind == "module":
        module_dir = _module_start_dir() if current else _STARTUP_CWD
        if module_dir is not None:
            start_dir = module_dir
            if problem is None and not os.path.isdir(module_dir):
                problem = (
                    f"cannot re-execute 'python -m {rest[1]}': its start-up "
                    f"directory {module_dir!r} no longer exists, and -m "
                    "finds the module there; " + _WAY_OUT
                )
    # argv[0] is the executable itself: CPython derives sys.prefix from
    # it, so a bare "python" could find another interpreter on PATH.
    return LaunchPlan(
        mode.kind, exe, [exe, *mode.options, *rest], start_dir, problem
    )


def child_command(
    executable: str | None = None, argv: list[str] | None = None
) -> LaunchPlan:
    """Return the plan that starts this program again, after checks.

    Raises PyforkError for a launch mode that cannot be re-executed, and
    SpawnError for a missing or non-executable interpreter.
    """
    global _command
    if executable is None and argv is None:
        if _command is None:
            launch = plan()
            launch.check()
            _check_executable(launch.executable, given=False)
            # Checked once: an interpreter removed later makes the spawn
            # fail with SpawnError instead.
            _command = launch
        return _command
    launch = plan(executable=executable, argv=argv)
    launch.check()
    _check_executable(launch.executable, given=executable is not None)
    return launch


def wrap_chdir(
    executable: str, argv: Sequence[str], cwd: str
) -> tuple[str, list[str]]:
    """Return a command that changes to ``cwd``, then runs ``argv``.

    posix_spawn() can change directory only through a glibc 2.29
    extension, so without it /bin/sh does. The program then runs with
    ``executable`` as its argv[0].
    """
    script = 'cd -- "$1" && shift && exec "$@"'
    shell_argv = ["/bin/sh", "-c", script, "pyfork-chdir", cwd, executable]
    return "/bin/sh", [*shell_argv, *argv[1:]]
