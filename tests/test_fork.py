"""Scenario tests for fork(), Fork and the child side of pyfork.

Every fork happens inside a script run by the ``run_script`` fixture, on
both backends. Scripts print JSON lines that the tests parse.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import ScriptRunner
from script_helpers import line_number, records, script

from pyfork import EXIT_NO_INIT, EXIT_START_FAILED

# describe() turns a value into JSON that records its exact types, so 1
# and True, or bytes and bytearray, do not compare equal. Set items are
# sorted, so the result does not depend on the string hash seed.
DESCRIBE = """
import dataclasses
import enum


def describe(value):
    kind = type(value)
    if kind is list or kind is tuple:
        return [kind.__name__, [describe(item) for item in value]]
    if kind is set or kind is frozenset:
        items = sorted((describe(item) for item in value), key=json.dumps)
        return [kind.__name__, items]
    if kind is dict:
        pairs = [[describe(k), describe(v)] for k, v in value.items()]
        return ["dict", pairs]
    if isinstance(value, enum.Enum):
        return [kind.__qualname__, value.name]
    if hasattr(value, "__dict__"):
        return [kind.__module__ + "." + kind.__qualname__,
                describe(vars(value))]
    return [kind.__name__, repr(value)]
"""


def test_arguments_builtin_types(run_script: ScriptRunner) -> None:
    """Builtin-typed args and kwargs reach the child with the same types."""
    source = script(
        DESCRIBE,
        """
        VALUES = [
            7, -2**100, 2.5, -0.0, float("inf"), 1j,
            "héllo wörld ☃ 🐍 \\x00 \\udcff", "", b"\\x00\\xff", b"",
            None, True, False,
            [1, [2, (3, "four")], {"k": {5, 6}}],
            (), (None,), {"nested": {"deeper": [(), [], {}]}, 3: "int key"},
            {1, "two", (3, 4)}, frozenset({"x", 2.5}),
        ]


        @pyfork.register
        def echo(label, *args, **kwargs):
            emit(**{
                label + "_args": describe(args),
                label + "_kwargs": describe(kwargs),
                label + "_buffer_type": type(kwargs.get("buffer")).__name__,
            })


        pyfork.init()
        KWARGS = {f"k{i}": value for i, value in enumerate(VALUES)}
        marshal_process = pyfork.fork(echo, "marshal", *VALUES, **KWARGS)
        emit(marshal_returncode=marshal_process.wait())
        # A bytearray is not a marshal type, so this payload uses pickle.
        buffer = bytearray(b"\\x00mutable\\xff")
        pickle_process = pyfork.fork(
            echo, "pickle", *VALUES, buffer, **KWARGS, buffer=buffer
        )
        emit(pickle_returncode=pickle_process.wait())
        emit(
            sent_args=describe(tuple(VALUES)),
            sent_kwargs=describe(KWARGS),
            sent_pickle_args=describe((*VALUES, buffer)),
            sent_pickle_kwargs=describe({**KWARGS, "buffer": buffer}),
        )
        """,
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["marshal_returncode"] == 0, run.stderr
    assert output["marshal_args"] == output["sent_args"]
    assert output["marshal_kwargs"] == output["sent_kwargs"]
    assert output["pickle_returncode"] == 0, run.stderr
    assert output["pickle_args"] == output["sent_pickle_args"]
    assert output["pickle_kwargs"] == output["sent_pickle_kwargs"]
    assert output["pickle_buffer_type"] == "bytearray"
    assert run.leftover_files() == []


def test_arguments_large_and_deep(run_script: ScriptRunner) -> None:
    """Long lists, large bytes and deep nesting reach the child intact."""
    source = script(
        """
        import hashlib


        def build_deep(levels):
            value = "bottom"
            for _ in range(levels):
                value = [value]
            return value


        def digest(value):
            return hashlib.sha256(repr(value).encode()).hexdigest()


        @pyfork.register
        def check(long_list, blob, deep):
            emit(
                child_long=digest(long_list),
                child_blob=hashlib.sha256(blob).hexdigest(),
                child_deep=digest(deep),
            )


        pyfork.init()
        long_list = list(range(20_000))
        blob = os.urandom(4 << 20)
        deep = build_deep(300)
        process = pyfork.fork(check, long_list, blob, deep=deep)
        emit(
            returncode=process.wait(),
            parent_long=digest(long_list),
            parent_blob=hashlib.sha256(blob).hexdigest(),
            parent_deep=digest(deep),
        )
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 0, run.stderr
    assert output["child_long"] == output["parent_long"]
    assert output["child_blob"] == output["parent_blob"]
    assert output["child_deep"] == output["parent_deep"]


def test_arguments_class_instances(run_script: ScriptRunner) -> None:
    """Instances of classes defined above init() arrive equal and typed."""
    source = script(
        DESCRIBE,
        """
        class Point:
            def __init__(self, x, y):
                self.x = x
                self.y = y

            def __eq__(self, other):
                return type(other) is Point and vars(self) == vars(other)


        @dataclasses.dataclass(frozen=True)
        class Label:
            text: str
            tags: tuple = ()


        class Color(enum.Enum):
            RED = 1
            BLUE = 2


        def make_values():
            return Point(1, "ü"), Label("naïve", ("a", "b")), Color.BLUE


        @pyfork.register
        def show(point, *, label, color):
            expected_point, expected_label, expected_color = make_values()
            emit(
                point_type=type(point) is Point,
                point_equal=point == expected_point,
                label_type=type(label) is Label,
                label_equal=label == expected_label,
                color_identical=color is expected_color,
                received=describe([point, label, color]),
            )


        pyfork.init()
        point, label, color = make_values()
        process = pyfork.fork(show, point, label=label, color=color)
        emit(returncode=process.wait(), sent=describe([point, label, color]))
        """,
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 0, run.stderr
    assert output["point_type"] is True
    assert output["point_equal"] is True
    assert output["label_type"] is True
    assert output["label_equal"] is True
    assert output["color_identical"] is True
    assert output["received"] == output["sent"]


def test_fork_keyword_named_function(run_script: ScriptRunner) -> None:
    """A keyword argument named ``function`` goes to the forked function."""
    source = script(
        """
        @pyfork.register
        def show(function, transport):
            emit(function=function, transport=transport)


        pyfork.init()
        emit(returncode=pyfork.fork(show, function=1, transport=2).wait())
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 0, run.stderr
    assert output["function"] == 1
    assert output["transport"] == 2


def test_fork_by_name_and_object(run_script: ScriptRunner) -> None:
    """fork() accepts the registered name or the function object."""
    source = script(
        """
        @pyfork.register
        def greet(label):
            emit(**{label: os.getpid()})


        pyfork.init()
        by_name = pyfork.fork("greet", "by_name")
        by_name.wait()
        by_object = pyfork.fork(greet, "by_object")
        by_object.wait()
        emit(
            name_pid=by_name.pid,
            name_returncode=by_name.returncode,
            name_name=by_name.name,
            object_pid=by_object.pid,
            object_returncode=by_object.returncode,
            object_name=by_object.name,
        )
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["name_returncode"] == 0, run.stderr
    assert output["by_name"] == output["name_pid"]
    assert output["name_name"] == "greet"
    assert output["object_returncode"] == 0, run.stderr
    assert output["by_object"] == output["object_pid"]
    assert output["object_name"] == "greet"


def test_fork_explicit_registered_names(run_script: ScriptRunner) -> None:
    """Functions registered under explicit names fork by name or object."""
    source = script(
        """
        @pyfork.register("decorated-name")
        def decorated(value):
            emit(decorated=value)


        def plain(value):
            emit(plain=value)


        pyfork.register("called-name", plain)
        pyfork.init()
        first = pyfork.fork("decorated-name", 1)
        second = pyfork.fork(plain, 2)
        emit(
            first=[first.wait(), first.name],
            second=[second.wait(), second.name],
        )
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["first"] == [0, "decorated-name"], run.stderr
    assert output["decorated"] == 1
    assert output["second"] == [0, "called-name"], run.stderr
    assert output["plain"] == 2


@pytest.mark.parametrize("transport", ["fd", "path"])
def test_fork_transport(run_script: ScriptRunner, transport: str) -> None:
    """Each transport delivers the arguments and leaves no file behind."""
    source = script(
        """
        @pyfork.register
        def show(value):
            # The payload file is removed before the function runs.
            emit(value=value, child_tmpdir=sorted(os.listdir(TMPDIR)))


        pyfork.init()
        spec = pyfork.Fork("show", transport=sys.argv[1])
        emit(returncode=spec.start("ünïcode").wait(), spec=repr(spec))
        """
    )
    run = run_script(source, transport)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 0, run.stderr
    assert output["value"] == "ünïcode"
    assert output["child_tmpdir"] == []
    assert f"transport={transport!r}" in output["spec"]
    assert run.stderr == ""
    assert run.leftover_files() == []


@pytest.mark.parametrize("transport", ["fd", "path"])
def test_fork_spec_reusable(run_script: ScriptRunner, transport: str) -> None:
    """One Fork starts several children, each with its own arguments."""
    source = script(
        """
        @pyfork.register
        def square(n):
            emit(**{f"square_{n}": n * n})
            sys.exit(n)


        pyfork.init()
        spec = pyfork.Fork(square, transport=sys.argv[1])
        processes = [spec.start(n) for n in (1, 2, 3)]
        emit(returncodes=[process.wait() for process in processes])
        """
    )
    run = run_script(source, transport)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncodes"] == [1, 2, 3], run.stderr
    assert output["square_1"] == 1
    assert output["square_2"] == 4
    assert output["square_3"] == 9
    assert run.leftover_files() == []


def test_fork_many_sequential(run_script: ScriptRunner) -> None:
    """Fifty forks in a row return their exit codes and are all reaped."""
    source = script(
        """
        @pyfork.register
        def exit_with(n):
            sys.exit(n % 7)


        pyfork.init()
        returncodes = []
        for n in range(50):
            transport = ("fd", "path")[n % 2]
            process = pyfork.Fork(exit_with, transport=transport).start(n)
            returncodes.append(process.wait())
        emit(returncodes=returncodes, children=has_children())
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncodes"] == [n % 7 for n in range(50)], run.stderr
    assert output["children"] is False
    assert run.leftover_files() == []


def test_fork_many_concurrent(run_script: ScriptRunner) -> None:
    """Eight children started before any wait all run and are reaped."""
    source = script(
        """
        @pyfork.register
        def report(n):
            emit(**{f"child_{n}": os.getpid()})
            sys.exit(n + 10)


        pyfork.init()
        processes = [pyfork.fork(report, n) for n in range(8)]
        emit(
            returncodes=[process.wait() for process in processes],
            pids=[process.pid for process in processes],
            children=has_children(),
        )
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncodes"] == [n + 10 for n in range(8)], run.stderr
    assert [output[f"child_{n}"] for n in range(8)] == output["pids"]
    assert output["children"] is False
    assert run.leftover_files() == []


def test_fork_nested_grandchild(run_script: ScriptRunner) -> None:
    """A forked function can fork again, and the grandchild runs."""
    source = script(
        """
        @pyfork.register
        def leaf(n):
            emit(
                leaf_n=n,
                leaf_pid=os.getpid(),
                leaf_parent=os.getppid(),
                leaf_is_child=pyfork.is_child(),
                leaf_marker="PYFORK_CHILD" in os.environ,
            )
            sys.exit(n)


        @pyfork.register
        def middle(n):
            grandchild = pyfork.fork(leaf, n + 1)
            emit(
                middle_pid=os.getpid(),
                leaf_handle_pid=grandchild.pid,
                leaf_returncode=grandchild.wait(),
            )
            sys.exit(grandchild.returncode + 1)


        pyfork.init()
        process = pyfork.fork(middle, 5)
        emit(middle_returncode=process.wait(), middle_handle_pid=process.pid)
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["middle_returncode"] == 7, run.stderr
    assert output["leaf_returncode"] == 6
    assert output["leaf_n"] == 6
    assert output["middle_pid"] == output["middle_handle_pid"]
    assert output["leaf_pid"] == output["leaf_handle_pid"]
    assert output["leaf_parent"] == output["middle_pid"]
    assert output["leaf_is_child"] is True
    assert output["leaf_marker"] is False
    assert run.leftover_files() == []


# Reports every view of the marker: os.environ, os.getenv, the C
# environment through libc, and a subprocess that inherits it.
MARKER_VIEWS = """
import ctypes
import subprocess

LIBC = ctypes.CDLL(None)
LIBC.getenv.restype = ctypes.c_char_p
PROBE = "import os; print('PYFORK_CHILD' in os.environ)"
PROBE_IS_CHILD = "import pyfork; print(pyfork.is_child())"


def run_probe(code):
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=False,
    )
    return completed.stdout.strip()


def marker_views():
    return {
        "environ": "PYFORK_CHILD" in os.environ,
        "getenv": os.getenv("PYFORK_CHILD"),
        "libc": LIBC.getenv(b"PYFORK_CHILD") is not None,
        "subprocess": run_probe(PROBE),
        "subprocess_is_child": run_probe(PROBE_IS_CHILD),
    }
"""


def test_marker_absent_in_child(run_script: ScriptRunner) -> None:
    """The child and a subprocess that it starts never see PYFORK_CHILD."""
    source = script(
        MARKER_VIEWS,
        """
        @pyfork.register
        def inspect_marker():
            emit(child=marker_views())


        pyfork.init()
        emit(returncode=pyfork.fork(inspect_marker).wait())
        """,
    )
    run = run_script(source)
    output = records(run.stdout)
    views = output["child"]

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 0, run.stderr
    assert views["environ"] is False
    assert views["getenv"] is None
    assert views["libc"] is False
    assert views["subprocess"] == "False"
    assert views["subprocess_is_child"] == "False"


@pytest.mark.parametrize("transport", ["fd", "path"])
def test_marker_absent_in_parent(
    run_script: ScriptRunner, transport: str
) -> None:
    """Forking leaves the parent's environment unchanged, at every level."""
    source = script(
        MARKER_VIEWS,
        """
        @pyfork.register
        def nap():
            time.sleep(60)


        pyfork.init()
        before = dict(os.environ)
        process = pyfork.Fork(nap, transport=sys.argv[1]).start()
        try:
            emit(
                running=marker_views(),
                environ_unchanged_running=dict(os.environ) == before,
            )
        finally:
            process.kill()
        process.wait()
        emit(
            reaped=marker_views(),
            environ_unchanged_reaped=dict(os.environ) == before,
        )
        """,
    )
    run = run_script(source, transport)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    for moment in ("running", "reaped"):
        views = output[moment]
        assert views["environ"] is False, moment
        assert views["getenv"] is None, moment
        assert views["libc"] is False, moment
        assert views["subprocess"] == "False", moment
        assert views["subprocess_is_child"] == "False", moment
    assert output["environ_unchanged_running"] is True
    assert output["environ_unchanged_reaped"] is True


# Each registered function ends the child in one way. argv[1] names it.
EXIT_FUNCTIONS = """
@pyfork.register
def returns_none():
    return None


@pyfork.register
def returns_value():
    return 5


@pyfork.register
def exits_none():
    sys.exit()


@pyfork.register
def exits_3():
    sys.exit(3)


@pyfork.register
def exits_message():
    sys.exit("child gave up")


@pyfork.register
def os_exits_4():
    os._exit(4)


@pyfork.register
def kills_itself():
    os.kill(os.getpid(), signal.SIGKILL)


@pyfork.register
def raises_keyboard_interrupt():
    raise KeyboardInterrupt


pyfork.init()
emit(returncode=pyfork.fork(sys.argv[1]).wait())
"""


@pytest.mark.parametrize(
    ("function", "returncode", "stderr"),
    [
        ("returns_none", 0, ""),
        ("returns_value", 0, ""),
        ("exits_none", 0, ""),
        ("exits_3", 3, ""),
        ("exits_message", 1, "child gave up\n"),
        ("os_exits_4", 4, ""),
        ("kills_itself", -signal.SIGKILL, ""),
        ("raises_keyboard_interrupt", -signal.SIGINT, ""),
    ],
)
def test_exit_code(
    run_script: ScriptRunner, function: str, returncode: int, stderr: str
) -> None:
    """The child's exit code and stderr match how the function ended."""
    run = run_script(script(EXIT_FUNCTIONS), function)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == returncode, run.stderr
    assert run.stderr == stderr


def test_exit_code_exception(run_script: ScriptRunner) -> None:
    """An uncaught exception exits 1 and prints a traceback to stderr."""
    source = script(
        """
        @pyfork.register
        def boom(value):
            raise ValueError(f"bad value {value}")


        pyfork.init()
        emit(returncode=pyfork.fork(boom, 42).wait())
        """
    )
    raise_line = line_number(source, "raise ValueError")
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 1, run.stderr
    assert run.stderr.startswith("Traceback (most recent call last):\n")
    assert f'app.py", line {raise_line}, in boom\n' in run.stderr
    assert run.stderr.endswith("\nValueError: bad value 42\n")
    # The traceback starts at the function, as if it were the program.
    assert "_child.py" not in run.stderr


def test_child_cwd_at_fork_time(run_script: ScriptRunner) -> None:
    """The child runs in the parent's working directory at fork time."""
    source = script(
        """
        @pyfork.register
        def show_cwd():
            emit(child_cwd=os.getcwd())


        pyfork.init()
        start = os.getcwd()
        work = os.path.join(HERE, "work dir ü")
        os.mkdir(work)
        os.chdir(work)
        process = pyfork.fork(show_cwd)
        # The child must not follow a change made after the fork.
        os.chdir(start)
        emit(returncode=process.wait(), fork_cwd=work)
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 0, run.stderr
    assert output["child_cwd"] == output["fork_cwd"]


def test_child_relative_script_after_chdir(
    run_script: ScriptRunner,
) -> None:
    """A script started by a relative path forks after an os.chdir()."""
    source = script(
        """
        @pyfork.register
        def show_file():
            emit(child_file=os.path.abspath(__file__))


        pyfork.init()
        os.mkdir("elsewhere")
        os.chdir("elsewhere")
        emit(
            returncode=pyfork.fork(show_file).wait(),
            parent_file=os.path.abspath(os.path.join("..", "app.py")),
        )
        """
    )
    run_script.write(source)
    completed = subprocess.run(
        [sys.executable, "app.py"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=run_script.directory,
        env=run_script.environment(),
        check=False,
    )
    output = records(completed.stdout)

    assert completed.returncode == 0, completed.stderr
    assert output["returncode"] == 0, completed.stderr
    assert output["child_file"] == output["parent_file"]


def test_child_keeps_argv_and_flags(run_script: ScriptRunner) -> None:
    """The child gets the script's arguments and interpreter options."""
    source = script(
        """
        def settings():
            return {
                "argv": sys.argv,
                "optimize": sys.flags.optimize,
                "utf8_mode": sys.flags.utf8_mode,
                "warnoptions": sys.warnoptions,
            }


        @pyfork.register
        def show_settings():
            emit(child=settings())


        pyfork.init()
        emit(returncode=pyfork.fork(show_settings).wait(), parent=settings())
        """
    )
    run = run_script(
        source,
        "alpha",
        "beta ü",
        interpreter_options=("-O", "-X", "utf8", "-W", "ignore::UserWarning"),
    )
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 0, run.stderr
    assert output["child"]["argv"] == output["parent"]["argv"]
    assert output["child"]["argv"][1:] == ["alpha", "beta ü"]
    assert output["child"]["optimize"] == 1
    assert output["child"]["utf8_mode"] == 1
    assert output["child"]["warnoptions"] == ["ignore::UserWarning"]


def test_child_command_string(run_script: ScriptRunner) -> None:
    """A program given with ``python -c`` forks and runs the function."""
    source = textwrap.dedent(
        """
        import pyfork

        @pyfork.register
        def hello(name):
            print("hello", name, flush=True)

        pyfork.init()
        print("exit", pyfork.fork(hello, "ü").wait())
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=run_script.directory,
        env=run_script.environment(),
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "hello ü\nexit 0\n"


def test_child_output_and_shutdown(run_script: ScriptRunner) -> None:
    """The child flushes output, joins threads and runs atexit functions."""
    source = script(
        """
        import atexit
        import threading


        def late_print():
            time.sleep(0.2)
            print("thread ran")


        @pyfork.register
        def child():
            atexit.register(print, "atexit ran")
            threading.Thread(target=late_print).start()
            print("unterminated", end="")


        pyfork.init()
        # Not flushed before the fork: a re-executed child has no copy of
        # this buffer, so the line appears once.
        print("parent line")
        returncode = pyfork.fork(child).wait()
        print("returncode", returncode)
        """
    )
    run = run_script(source)

    assert run.returncode == 0, run.stderr
    assert run.stdout.count("parent line\n") == 1
    assert "unterminatedthread ran\natexit ran\n" in run.stdout
    assert run.stdout.endswith("returncode 0\n")


def test_child_without_init(run_script: ScriptRunner) -> None:
    """A child whose program never calls init() exits with EXIT_NO_INIT."""
    source = script(
        """
        @pyfork.register
        def child():
            emit(child_ran=True)


        if not pyfork.is_child():
            pyfork.init()
            emit(returncode=pyfork.fork(child).wait())
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == EXIT_NO_INIT, run.stderr
    assert "child_ran" not in output
    assert "without calling pyfork.init()" in run.stderr


def test_child_fork_before_init(run_script: ScriptRunner) -> None:
    """A child that calls fork() before init() exits with EXIT_NO_INIT."""
    source = script(
        """
        @pyfork.register
        def child():
            emit(child_ran=True)


        if pyfork.is_child():
            pyfork.fork(child)
        pyfork.init()
        emit(returncode=pyfork.fork(child).wait())
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == EXIT_NO_INIT, run.stderr
    assert "child_ran" not in output
    assert "PyforkError" in run.stderr
    assert "pyfork.init()" in run.stderr


def test_child_registered_after_init(run_script: ScriptRunner) -> None:
    """A function registered below init() fails to start, named on stderr."""
    source = script(
        """
        pyfork.init()


        @pyfork.register
        def late():
            emit(late_ran=True)


        emit(returncode=pyfork.fork(late).wait())
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == EXIT_START_FAILED, run.stderr
    assert "late_ran" not in output
    assert "'late'" in run.stderr
    assert run.leftover_files() == []


def test_child_class_defined_after_init(run_script: ScriptRunner) -> None:
    """An instance of a class defined below init() fails to unpickle."""
    source = script(
        """
        @pyfork.register
        def show(value):
            emit(show_ran=True)


        pyfork.init()


        class LateClass:
            pass


        emit(returncode=pyfork.fork(show, LateClass()).wait())
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == EXIT_START_FAILED, run.stderr
    assert "show_ran" not in output
    assert "LateClass" in run.stderr


def test_is_child_and_backend(run_script: ScriptRunner, backend: str) -> None:
    """is_child() is True only in the child, and BACKEND names the backend."""
    source = script(
        """
        @pyfork.register
        def child():
            emit(
                child_is_child=pyfork.is_child(),
                child_backend=pyfork.BACKEND,
            )


        pyfork.init()
        emit(
            parent_is_child=pyfork.is_child(),
            parent_backend=pyfork.BACKEND,
        )
        emit(returncode=pyfork.fork(child).wait())
        """
    )
    run = run_script(source)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["returncode"] == 0, run.stderr
    assert output["parent_is_child"] is False
    assert output["child_is_child"] is True
    assert output["parent_backend"] == backend
    assert output["child_backend"] == backend


@pytest.mark.parametrize("transport", ["fd", "path"])
def test_fork_other_backend_child(
    run_script: ScriptRunner, backend: str, transport: str
) -> None:
    """A child on the other backend reads the payload that this one wrote."""
    source = script(
        """
        @pyfork.register
        def child(label, value):
            emit(**{label: [pyfork.BACKEND, repr(value)]})


        pyfork.init()
        os.environ["PYFORK_BACKEND"] = {"c": "python", "python": "c"}[
            pyfork.BACKEND
        ]
        spec = pyfork.Fork(child, transport=sys.argv[1])
        emit(
            marshal_returncode=spec.start("marshal", ["ü", 1]).wait(),
            pickle_returncode=spec.start("pickle", bytearray(b"ab")).wait(),
        )
        """
    )
    other = {"c": "python", "python": "c"}[backend]
    run = run_script(source, transport)
    output = records(run.stdout)

    assert run.returncode == 0, run.stderr
    assert output["marshal_returncode"] == 0, run.stderr
    assert output["marshal"] == [other, "['ü', 1]"]
    assert output["pickle_returncode"] == 0, run.stderr
    assert output["pickle"] == [other, "bytearray(b'ab')"]
    assert run.leftover_files() == []
