"""Errors that pyfork raises in the parent, and the registry's checks.

A fork that raises must raise before anything is spawned: the scripts
check that no child exists and that TMPDIR stays empty. The registry and
Fork() tests run in pytest's own process, because nothing in them forks.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from conftest import ScriptRunner
from script_helpers import records, script

import pyfork
from pyfork import _child

TRANSPORTS = ["fd", "path"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fork_unregistered_name(
    run_script: ScriptRunner, transport: str
) -> None:
    """An unknown name raises NotRegisteredError, naming the function."""
    source = script(
        """
        @pyfork.register
        def known():
            pass


        pyfork.init()
        attempt("by_fork", pyfork.fork, "missing_function", 1)
        spec = pyfork.Fork("missing_function", transport=sys.argv[1])
        attempt("by_spec", spec.start, 1)
        """
    )
    run = run_script(source, transport)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    for label in ("by_fork", "by_spec"):
        outcome = output[label]
        assert outcome["type"] == "NotRegisteredError", label
        assert "LookupError" in outcome["bases"], label
        assert "PyforkError" in outcome["bases"], label
        assert "'missing_function'" in outcome["message"], label
        assert outcome["children"] is False, label
    assert run.leftover_files() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fork_unregistered_function(
    run_script: ScriptRunner, transport: str
) -> None:
    """A function object never registered raises NotRegisteredError."""
    source = script(
        """
        @pyfork.register
        def known():
            pass


        def unregistered_helper():
            pass


        pyfork.init()
        attempt("by_fork", pyfork.fork, unregistered_helper)
        spec = pyfork.Fork(unregistered_helper, transport=sys.argv[1])
        attempt("by_spec", spec.start)
        """
    )
    run = run_script(source, transport)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    for label in ("by_fork", "by_spec"):
        outcome = output[label]
        assert outcome["type"] == "NotRegisteredError", label
        assert "LookupError" in outcome["bases"], label
        assert "unregistered_helper" in outcome["message"], label
        assert outcome["children"] is False, label
    assert run.leftover_files() == []


def test_fork_signature_mismatch(run_script: ScriptRunner) -> None:
    """Arguments that do not bind to the signature raise TypeError."""
    source = script(
        """
        @pyfork.register
        def work(first, second=2, *, option=None):
            emit(work_ran=True)


        pyfork.init()
        spec = pyfork.Fork(work, transport="path")
        attempt("too_many", spec.start, 1, 2, 3)
        attempt("missing", spec.start)
        attempt("unexpected", spec.start, 1, other=4)
        attempt("duplicate", spec.start, 1, first=1)
        attempt("fork_too_many", pyfork.fork, work, 1, 2, None)
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    for label in (
        "too_many",
        "missing",
        "unexpected",
        "duplicate",
        "fork_too_many",
    ):
        outcome = output[label]
        assert outcome["type"] == "TypeError", label
        assert "work" in outcome["message"], label
        assert outcome["children"] is False, label
    assert "work_ran" not in output
    assert run.leftover_files() == []


# Each case forks work(first, second=None, *, option=None) with one value
# that pickle rejects. argv[1] names the case, argv[2] the transport.
UNPICKLABLE = """
import pickle
import threading


@pyfork.register
def work(first, second=None, *, option=None):
    emit(work_ran=True)


pyfork.init()
CASES = {
    "lambda-positional": ((1, lambda: 0), {}),
    "lock-positional": ((1, threading.Lock()), {}),
    "lock-nested": ((1, [threading.Lock()]), {}),
    "lambda-keyword": ((1,), {"option": lambda: 0}),
    "lock-keyword": ((1,), {"option": threading.Lock()}),
}
args, kwargs = CASES[sys.argv[1]]
culprit = args[1] if len(args) > 1 else kwargs["option"]
try:
    pickle.dumps(culprit, protocol=pickle.HIGHEST_PROTOCOL)
except Exception as error:
    emit(pickle_error=type(error).__name__)
attempt("outcome", pyfork.Fork(work, transport=sys.argv[2]).start,
        *args, **kwargs)
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("lambda-positional", ("argument 1", "'second'")),
        ("lock-positional", ("argument 1", "'second'")),
        ("lock-nested", ("argument 1", "'second'")),
        ("lambda-keyword", ("'option'",)),
        ("lock-keyword", ("'option'",)),
    ],
)
def test_fork_unpicklable_argument(
    run_script: ScriptRunner,
    case: str,
    names: tuple[str, ...],
    transport: str,
) -> None:
    """An argument that pickle rejects raises PyforkError naming it."""
    run = run_script(script(UNPICKLABLE), case, transport)
    output = records(run.stdout)
    outcome = output["outcome"]

    assert run.returncode == 0, run.stderr
    assert outcome["type"] == "PyforkError"
    # Either the 0-based position or the parameter name identifies it.
    assert any(name in outcome["message"] for name in names), outcome
    assert outcome["cause"] == output["pickle_error"]
    assert outcome["children"] is False
    assert "work_ran" not in output
    assert run.leftover_files() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fork_missing_executable(
    run_script: ScriptRunner, transport: str
) -> None:
    """A missing interpreter raises SpawnError with ENOENT and its path."""
    source = script(
        """
        @pyfork.register
        def work():
            pass


        pyfork.init()
        sys.executable = "/nonexistent/python"
        attempt("outcome", pyfork.Fork(work, transport=sys.argv[1]).start)
        """
    )
    run = run_script(source, transport)
    outcome = records(run.stdout)["outcome"]

    assert run.returncode == 0, run.stderr
    assert outcome["type"] == "SpawnError"
    assert "OSError" in outcome["bases"]
    assert "PyforkError" in outcome["bases"]
    assert outcome["errno"] == errno.ENOENT
    assert outcome["filename"] == "/nonexistent/python"
    assert "/nonexistent/python" in outcome["message"]
    assert outcome["children"] is False
    assert run.leftover_files() == []


def test_fork_executable_without_permission(run_script: ScriptRunner) -> None:
    """An interpreter path without execute permission raises EACCES."""
    source = script(
        """
        @pyfork.register
        def work():
            pass


        pyfork.init()
        sys.executable = os.path.join(HERE, "not-executable")
        with open(sys.executable, "w") as file:
            file.write("#!/bin/sh\\n")
        attempt("outcome", pyfork.Fork(work, transport="path").start)
        """
    )
    run = run_script(source)
    outcome = records(run.stdout)["outcome"]

    assert run.returncode == 0, run.stderr
    assert outcome["type"] == "SpawnError"
    assert outcome["errno"] == errno.EACCES
    assert outcome["filename"].endswith("/not-executable")
    assert outcome["children"] is False
    assert run.leftover_files() == []


def test_fork_empty_executable(run_script: ScriptRunner) -> None:
    """An empty sys.executable raises PyforkError that names it."""
    source = script(
        """
        @pyfork.register
        def work():
            pass


        pyfork.init()
        sys.executable = ""
        attempt("outcome", pyfork.fork, work)
        """
    )
    run = run_script(source)
    outcome = records(run.stdout)["outcome"]

    assert run.returncode == 0, run.stderr
    assert "PyforkError" in outcome["bases"]
    assert "sys.executable" in outcome["message"]
    assert outcome["children"] is False


def test_fork_before_init(run_script: ScriptRunner) -> None:
    """fork() before init() raises PyforkError that names pyfork.init()."""
    source = script(
        """
        @pyfork.register
        def work():
            emit(work_ran=True)


        attempt("by_fork", pyfork.fork, work)
        attempt("by_spec", pyfork.Fork(work, transport="path").start)
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    for label in ("by_fork", "by_spec"):
        outcome = output[label]
        assert outcome["type"] == "PyforkError", label
        assert "pyfork.init()" in outcome["message"], label
        assert outcome["children"] is False, label
    assert "work_ran" not in output
    assert run.leftover_files() == []


@pytest.mark.parametrize("transport", ["pipe", "", "FD", None, 1])
def test_fork_spec_invalid_transport(transport: Any) -> None:
    """Fork() raises ValueError for a transport other than fd or path."""
    with pytest.raises(ValueError, match="transport"):
        pyfork.Fork("work", transport=transport)


@pytest.mark.parametrize("function", [None, 42, b"work"])
def test_fork_spec_invalid_function(function: Any) -> None:
    """Fork() raises TypeError for neither a name nor a callable."""
    with pytest.raises(TypeError, match=type(function).__name__):
        pyfork.Fork(function)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The registry's module, emptied for one test and restored after."""
    monkeypatch.setattr(_child, "_functions", {})
    return _child


def job() -> None:
    """A function for the registry tests."""


def other_job() -> None:
    """A second function for the registry tests."""


def test_register_decorator(registry: ModuleType) -> None:
    """@register registers under __name__ and returns the function."""
    returned = pyfork.register(job)

    assert returned is job
    assert registry.lookup("job") == ("job", job)
    assert registry.lookup(job) == ("job", job)


def test_register_decorator_with_name(registry: ModuleType) -> None:
    """@register("name") registers under that name, returns the function."""
    returned = pyfork.register("custom-name")(job)

    assert returned is job
    assert registry.lookup("custom-name") == ("custom-name", job)
    assert registry.lookup(job) == ("custom-name", job)
    assert registry._functions.get("job") is None


def test_register_call_form(registry: ModuleType) -> None:
    """register("name", fn) registers fn directly and returns it."""
    returned = pyfork.register("called", job)

    assert returned is job
    assert registry.lookup("called") == ("called", job)


@pytest.mark.parametrize(
    "register_again",
    [
        pytest.param(lambda: pyfork.register(job), id="decorator"),
        pytest.param(lambda: pyfork.register("job")(job), id="named"),
        pytest.param(lambda: pyfork.register("job", job), id="call"),
    ],
)
def test_register_same_function_again(
    registry: ModuleType, register_again: Callable[[], object]
) -> None:
    """Registering the same function under its name again does nothing."""
    pyfork.register(job)

    assert register_again() is job
    assert registry.lookup("job") == ("job", job)


@pytest.mark.parametrize(
    "register_other",
    [
        pytest.param(lambda: pyfork.register("job")(other_job), id="named"),
        pytest.param(lambda: pyfork.register("job", other_job), id="call"),
    ],
)
def test_register_taken_name(
    registry: ModuleType, register_other: Callable[[], object]
) -> None:
    """Registering another function under a taken name raises ValueError."""
    pyfork.register(job)

    with pytest.raises(ValueError, match="'job'"):
        register_other()
    assert registry.lookup("job") == ("job", job)
    assert registry._functions.get("job") is job


@pytest.mark.parametrize(
    ("register_bad", "error"),
    [
        pytest.param(lambda: pyfork.register("", job), ValueError, id="empty"),
        pytest.param(
            lambda: pyfork.register("")(job), ValueError, id="empty-decorator"
        ),
        pytest.param(
            lambda: pyfork.register(b"job", job), TypeError, id="bytes"
        ),
        pytest.param(lambda: pyfork.register(None, job), TypeError, id="none"),
        pytest.param(lambda: pyfork.register(42), TypeError, id="int"),
        pytest.param(
            lambda: pyfork.register(job, other_job),
            TypeError,
            id="function-as-name",
        ),
    ],
)
def test_register_invalid_name(
    registry: ModuleType,
    register_bad: Callable[[], object],
    error: type[Exception],
) -> None:
    """A name that is not a non-empty str raises, registering nothing."""
    with pytest.raises(error):
        register_bad()
    assert registry._functions == {}


def test_register_not_callable(registry: ModuleType) -> None:
    """register("name", value) raises TypeError for a non-callable."""
    with pytest.raises(TypeError, match="not callable"):
        pyfork.register("value", 42)  # type: ignore[call-overload]
    assert registry._functions == {}


def test_register_without_dunder_name(registry: ModuleType) -> None:
    """@register raises TypeError for a callable that has no __name__."""
    partial = functools.partial(job)

    with pytest.raises(TypeError, match="register\\('name', function\\)"):
        pyfork.register(partial)
    assert registry._functions == {}
    assert pyfork.register("partial", partial) is partial


def test_register_lookup_unregistered(registry: ModuleType) -> None:
    """lookup() raises NotRegisteredError for a name or an object."""
    with pytest.raises(pyfork.NotRegisteredError, match="'job'"):
        registry.lookup("job")
    with pytest.raises(LookupError, match="job"):
        registry.lookup(job)
