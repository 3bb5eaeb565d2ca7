"""Measure how fast pyfork starts a child, against other ways to start one.

``python -m pyfork bench`` writes a worker script into a temporary
directory and starts it with ``sys.executable``, once per pyfork backend,
because pyfork chooses its backend at import. A worker is the program
whose children are measured: on request it starts one child, times it,
and sends the timings back as a JSON line. This process asks for one
measurement at a time, in rounds that run every method once in a
shuffled order, so drift of the machine hits all methods alike. Methods
that call ``fork()`` run in a phase of their own after the others,
because a fork slows whatever runs next in the parent.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import IO, Any

    Summary = dict[str, float]

#: The method every ratio is relative to: pyfork's default configuration.
REFERENCE = "pyfork-c-fd"

#: Environment variable that makes a child of the worker script exit where
#: ``pyfork.init()`` would dispatch: the floor of a pyfork round trip.
STOP_VARIABLE = "PYFORK_BENCH_STOP"

#: Sizes of the arguments in bytes, about their pickled size, and labels.
ARGUMENT_SIZES = ((100, "100 B"), (10**6, "1 MB"), (10**8, "100 MB"))
#: Argument kinds: two builtin types, and a user class instance that
#: contains each of them.
ARGUMENT_KINDS = {
    "bytes": "bytes",
    "int_list": "list of ints",
    "object_bytes": "user class holding bytes",
    "object_int_list": "user class holding a list of ints",
}
#: Starts timed by the throughput section, and the first ints of the
#: argument lists: from 65536 on, an int pickles and marshals to 5 bytes.
THROUGHPUT_FORKS = 200
_FIRST_LARGE_INT = 65536

_DEFAULT_RUNS = 40
_QUICK_RUNS = 10
_DEFAULT_RSS = (0.0, 1.0, 4.0)
_QUICK_RSS = (0.0, 1.0)
_GIB = 2**30


class Method:
    """A way to start a child that the bench measures."""

    def __init__(
        self, name: str, backend: str, fork_based: bool, description: str
    ) -> None:
        self.name = name
        #: The pyfork backend of the worker that runs it.
        self.backend = backend
        self.fork_based = fork_based
        self.description = description


METHODS = {
    method.name: method
    for method in (
        Method(
            "pyfork-c-fd",
            "c",
            False,
            "pyfork, C backend, anonymous payload file (the default)",
        ),
        Method(
            "pyfork-c-path",
            "c",
            False,
            "pyfork, C backend, named payload file",
        ),
        Method(
            "pyfork-python-fd",
            "python",
            False,
            "pyfork, pure-Python backend, anonymous payload file",
        ),
        Method(
            "pyfork-python-path",
            "python",
            False,
            "pyfork, pure-Python backend, named payload file",
        ),
        Method(
            "posix_spawn",
            "c",
            False,
            "posix_spawn() of the same command through pyfork's C core; the "
            "child exits where init() would dispatch. Floor of the spawn "
            "call, and its round trip is the floor of pyfork's",
        ),
        Method(
            "popen",
            "c",
            False,
            "subprocess.Popen of the same command, same early exit",
        ),
        Method("mp-spawn", "c", False, "multiprocessing, spawn start method"),
        Method(
            "mp-forkserver",
            "c",
            False,
            "multiprocessing, forkserver start method, server already running",
        ),
        Method("mp-fork", "c", True, "multiprocessing, fork start method"),
        Method("os-fork", "c", True, "os.fork(); the child calls os._exit(0)"),
    )
}

#: Sections of a run, which ``--only`` also selects.
SECTIONS = {
    "latency": "parent-side latency and round trip, per parent memory size",
    "arguments": "round trip with large arguments, against pickle via a memfd",
    "throughput": f"{THROUGHPUT_FORKS} starts, one in flight per core",
    "import": "what 'import pyfork' adds to interpreter start-up",
}


class BenchError(Exception):
    """The bench cannot run or failed. The message gives the reason."""


# -- statistics --------------------------------------------------------------


def summarize(values: Sequence[float]) -> Summary:
    """Return the median, 10th and 90th percentile and count of ``values``."""
    ordered = sorted(values)
    if len(ordered) == 1:
        p10 = p90 = ordered[0]
    else:
        cuts = statistics.quantiles(ordered, n=10, method="inclusive")
        p10, p90 = cuts[0], cuts[-1]
    return {
        "median": statistics.median(ordered),
        "p10": p10,
        "p90": p90,
        "runs": len(ordered),
    }


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def _milliseconds(nanoseconds: Sequence[int]) -> list[float]:
    return [value / 1e6 for value in nanoseconds]


# -- the worker --------------------------------------------------------------

# The program whose children are measured. Its children run it again from
# the top, so everything above init() is what each child pays.
_WORKER_SCRIPT = '''\
"""The program that python -m pyfork bench measures. Do not run it."""
import os
import sys
{path_setup}
import pyfork


class Payload:
    """A user class instance that contains an argument."""

    def __init__(self, data):
        self.data = data


@pyfork.register
def noop():
    pass


@pyfork.register
def consume(value):
    pass


def mp_target():
    pass


if os.environ.get("{stop}"):
    os._exit(0)
pyfork.init()

if __name__ == "__main__":
    from pyfork._bench import serve_worker

    sys.exit(serve_worker(os.path.abspath(__file__), Payload, mp_target))
'''


def _check_exit(method: str, code: int | None) -> None:
    if code != 0:
        message = f"a child started by {method} exited with code {code}"
        raise RuntimeError(message)


class _RawSpawn:
    """Start the worker script through ``pyfork_spawn()`` of the C core.

    The argv and environment arrays are built once, so a call times
    ``posix_spawn()`` and little else.
    """

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        from ._core import ffi, lib

        self._ffi = ffi
        self._lib = lib
        self._executable = os.fsencode(command[0])
        self._buffers = [
            ffi.new("char[]", os.fsencode(item)) for item in command
        ]
        self._buffers += [
            ffi.new("char[]", os.fsencode(f"{key}={value}"))
            for key, value in env.items()
        ]
        arguments = self._buffers[: len(command)]
        variables = self._buffers[len(command) :]
        self._argv = ffi.new("char *[]", [*arguments, ffi.NULL])
        self._envp = ffi.new("char *[]", [*variables, ffi.NULL])
        self._options = ffi.new(
            "struct pyfork_spawn_options *", {"stdio": [-1, -1, -1]}
        )
        self._pid = ffi.new("pid_t *")

    def __call__(self) -> int:
        status = self._lib.pyfork_spawn(
            self._pid, self._executable, self._argv, self._envp, self._options
        )
        if status != 0:
            err = self._ffi.errno
            raise OSError(err, os.strerror(err), os.fsdecode(self._executable))
        return int(self._pid[0])


def _anonymous_file() -> IO[bytes]:
    """Return a new anonymous file, open for reading and writing."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("pyfork-bench", os.MFD_CLOEXEC)
        return open(fd, "w+b")
    import tempfile

    return tempfile.TemporaryFile()


def _wait_pid(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _fork_and_exit() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


class _WorkerBench:
    """The measurements that run inside a worker process."""

    def __init__(
        self, script: str, payload_class: type, mp_target: Callable[[], None]
    ) -> None:
        self.command = [sys.executable, script]
        self.stop_env = {**os.environ, STOP_VARIABLE: "1"}
        self.payload_class = payload_class
        self.mp_target = mp_target
        self.ballast: bytes | None = None
        self.arguments: dict[str, Any] = {}
        self._starters: dict[
            str, tuple[Callable[[], Any], Callable[[Any], int | None]]
        ] = {}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Carry out one request from the bench and return the reply."""
        operation = request["op"]
        if operation == "hello":
            import pyfork

            return {
                "backend": pyfork.BACKEND,
                "version": pyfork.__version__,
                "module": pyfork.__file__,
                "pid": os.getpid(),
            }
        if operation == "ballast":
            return self._set_ballast(request["gib"])
        if operation == "arguments":
            return self._make_arguments(request["size"])
        if operation == "time":
            return self._time(request["method"], request.get("kind"))
        if operation == "pickle":
            return self._time_pickle(request["kind"])
        if operation == "throughput":
            return self._time_throughput(
                request["method"], request["count"], request["in_flight"]
            )
        message = f"unknown request {operation!r}"
        raise ValueError(message)

    def _set_ballast(self, gib: float) -> dict[str, Any]:
        """Hold ``gib`` GiB of memory with every page written."""
        import gc

        self.ballast = None
        gc.collect()
        size = round(gib * _GIB)
        if size:
            # A one-byte repeat is a memset(), which writes every page.
            self.ballast = b"\x01" * size
        return {"bytes": size}

    def _make_arguments(self, size: int) -> dict[str, Any]:
        """Build the arguments of ``size`` bytes; return pickled sizes."""
        import gc
        import pickle

        self.arguments.clear()
        gc.collect()
        if not size:
            return {}
        data = b"\x01" * size
        numbers = list(range(_FIRST_LARGE_INT, _FIRST_LARGE_INT + size // 5))
        self.arguments.update(
            bytes=data,
            int_list=numbers,
            object_bytes=self.payload_class(data),
            object_int_list=self.payload_class(numbers),
        )
        return {
            kind: len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            for kind, value in self.arguments.items()
        }

    def _starter(
        self, method: str, kind: str | None = None
    ) -> tuple[Callable[[], Any], Callable[[Any], int | None]]:
        """Return the functions that start a child and wait for it."""
        key = method if kind is None else f"{method}:{kind}"
        pair = self._starters.get(key)
        if pair is None:
            pair = self._make_starter(method, kind)
            self._starters[key] = pair
        return pair

    def _make_starter(
        self, method: str, kind: str | None
    ) -> tuple[Callable[[], Any], Callable[[Any], int | None]]:
        import pyfork

        if method.startswith("pyfork-"):
            _, backend, transport = method.split("-")
            if backend != pyfork.BACKEND:
                message = (
                    f"this worker runs the {pyfork.BACKEND} backend, "
                    f"not {backend}"
                )
                raise ValueError(message)
            if kind is None:
                spec = pyfork.Fork("noop", transport=transport)
                return spec.start, pyfork.Process.wait
            spec = pyfork.Fork("consume", transport=transport)
            arguments = self.arguments  # _make_arguments() updates it
            return (lambda: spec.start(arguments[kind])), pyfork.Process.wait
        if method == "posix_spawn":
            return _RawSpawn(self.command, self.stop_env), _wait_pid
        if method == "popen":
            command, env = self.command, self.stop_env
            return (
                lambda: subprocess.Popen(command, env=env),
                subprocess.Popen.wait,
            )
        if method == "os-fork":
            return _fork_and_exit, _wait_pid
        if method.startswith("mp-"):
            return self._multiprocessing_starter(method[3:])
        message = f"unknown method {method!r}"
        raise ValueError(message)

    def _multiprocessing_starter(
        self, start_method: str
    ) -> tuple[Callable[[], Any], Callable[[Any], int | None]]:
        import multiprocessing

        context: Any = multiprocessing.get_context(start_method)
        target = self.mp_target

        def start() -> Any:
            process = context.Process(target=target)
            process.start()
            return process

        def wait(process: Any) -> int | None:
            process.join()
            code: int | None = process.exitcode
            return code

        if start_method == "forkserver":
            wait(start())  # start the server, so the timed runs find it
        return start, wait

    def _time(self, method: str, kind: str | None) -> dict[str, Any]:
        """Start one child; return the parent-side and round-trip times."""
        start, wait = self._starter(method, kind)
        begin = time.perf_counter_ns()
        handle = start()
        started = time.perf_counter_ns()
        code = wait(handle)
        ended = time.perf_counter_ns()
        _check_exit(method, code)
        return {"parent_ns": started - begin, "round_trip_ns": ended - begin}

    def _time_pickle(self, kind: str) -> dict[str, Any]:
        """Time pickle.dump() and pickle.load() of an argument via a file.

        The file is a memfd where the system has one, as pyfork's default
        payload file is, so the page cache of a disk does not enter.
        """
        import pickle

        value = self.arguments[kind]
        begin = time.perf_counter_ns()
        file = _anonymous_file()
        pickle.dump(value, file, protocol=pickle.HIGHEST_PROTOCOL)
        file.seek(0)
        loaded = pickle.load(file)
        ended = time.perf_counter_ns()
        # Freed after the clock stops: the baseline is the dump and the
        # load. A pyfork child frees both when it exits, inside its round
        # trip.
        del loaded
        file.close()
        return {"ns": ended - begin}

    def _time_throughput(
        self, method: str, count: int, in_flight: int
    ) -> dict[str, Any]:
        """Time ``count`` starts with at most ``in_flight`` children alive.

        The oldest child is waited for first.
        """
        from collections import deque

        start, wait = self._starter(method)
        running: deque[Any] = deque()
        begin = time.perf_counter_ns()
        for _ in range(count):
            if len(running) >= in_flight:
                _check_exit(method, wait(running.popleft()))
            running.append(start())
        while running:
            _check_exit(method, wait(running.popleft()))
        return {"ns": time.perf_counter_ns() - begin}


def serve_worker(
    script: str, payload_class: type, mp_target: Callable[[], None]
) -> int:
    """Serve the bench's requests on stdin until it closes; return 0.

    Replies go to the original stdout, which is then pointed at stderr, so
    nothing a child prints can corrupt them.
    """
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    bench = _WorkerBench(script, payload_class, mp_target)
    try:
        for line in sys.stdin.buffer:
            request = json.loads(line)
            try:
                reply = bench.handle(request)
            except Exception as error:
                reply = {"error": f"{type(error).__name__}: {error}"}
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
    except KeyboardInterrupt:
        return 130  # Ctrl-C reached the bench too, which reports it
    return 0


# -- the bench side ----------------------------------------------------------


class _Worker:
    """A worker process that runs one pyfork backend, and its pipes."""

    def __init__(self, backend: str, script: str, directory: str) -> None:
        self.backend = backend
        env = dict(os.environ)
        for name in ("PYFORK_CHILD", STOP_VARIABLE):
            env.pop(name, None)
        env["PYFORK_BACKEND"] = backend
        self.process = subprocess.Popen(
            [sys.executable, script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=directory,
            env=env,
        )
        self.info = self.request(op="hello")
        if self.info["backend"] != backend:
            message = (
                f"the worker for the {backend} backend runs the "
                f"{self.info['backend']} backend"
            )
            raise BenchError(message)

    def request(self, **fields: Any) -> dict[str, Any]:
        """Send one request and return the reply. Raises BenchError."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        try:
            stdin.write(json.dumps(fields).encode() + b"\n")
            stdin.flush()
        except BrokenPipeError:
            pass  # the reply check below reports the exit
        line = stdout.readline()
        if not line:
            code = self.process.wait()
            message = (
                f"the worker for the {self.backend} backend exited with "
                f"code {code}"
            )
            if self.backend == "c":
                message += (
                    "; the C backend needs pyfork's compiled core, which "
                    "'pip install pyfork' builds"
                )
            raise BenchError(message)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            message = (
                f"the worker for the {self.backend} backend failed on "
                f"{fields}: {reply['error']}"
            )
            raise BenchError(message)
        return reply

    def close(self) -> None:
        """Close the worker's stdin, and kill it if it does not exit."""
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class _Workers:
    """The worker processes, started on first use."""

    def __init__(self, script: str, directory: str) -> None:
        self.script = script
        self.directory = directory
        self.started: dict[str, _Worker] = {}

    def get(self, backend: str) -> _Worker:
        worker = self.started.get(backend)
        if worker is None:
            worker = _Worker(backend, self.script, self.directory)
            self.started[backend] = worker
        return worker

    def close(self) -> None:
        for worker in self.started.values():
            worker.close()
        self.started.clear()


class Progress:
    """Progress of a run on stderr.

    On a terminal, one line is rewritten after every step. Otherwise a
    plain line is printed every ``interval`` seconds.
    """

    def __init__(
        self, total: int, stream: IO[str] | None = None, interval: float = 10
    ) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty()
        self.interval = interval
        self.begin = time.monotonic()
        self._last_line = self.begin
        self._width = 0

    def step(self, label: str) -> None:
        """Count one finished step, described by ``label``."""
        self.done += 1
        now = time.monotonic()
        line = (
            f"bench: {self.done}/{self.total} steps, "
            f"{now - self.begin:.0f} s, {label}"
        )
        if self.terminal:
            padding = " " * max(0, self._width - len(line))
            self.stream.write(f"\r{line}{padding}")
            self._width = len(line)
            self.stream.flush()
        elif now - self._last_line >= self.interval:
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last_line = now

    def finish(self, completed: bool) -> None:
        """Clear the progress line; report the run time if ``completed``."""
        elapsed = time.monotonic() - self.begin
        if self.terminal:
            self.stream.write("\r" + " " * self._width + "\r")
        if completed:
            self.stream.write(
                f"bench: {self.done} steps finished in {elapsed:.0f} s\n"
            )
        self.stream.flush()


class Options:
    """The options of one run, checked."""

    def __init__(
        self,
        *,
        quick: bool,
        runs: int,
        rss_gib: Sequence[float],
        methods: Sequence[str],
        sections: Sequence[str],
        json_path: str | None = None,
        plot_path: str | None = None,
    ) -> None:
        self.quick = quick
        self.runs = runs
        self.rss_gib = list(rss_gib)
        self.methods = list(methods)
        self.sections = list(sections)
        self.json_path = json_path
        self.plot_path = plot_path

    @property
    def large_runs(self) -> int:
        """Runs for the 100 MB arguments, which take a second or more."""
        return max(2, self.runs // 5)

    @property
    def throughput_runs(self) -> int:
        return max(1, self.runs // 10)

    @property
    def import_runs(self) -> int:
        return max(5, 3 * self.runs)

    @property
    def importtime_runs(self) -> int:
        return max(3, self.runs // 4)


class _Run:
    """The steps of one run and the samples they collect."""

    def __init__(
        self, options: Options, workers: _Workers, directory: str
    ) -> None:
        self.options = options
        self.workers = workers
        self.directory = directory
        # (section, label, action) of every step, in order
        self.steps: list[tuple[str, str, Callable[[], None]]] = []
        self._section = ""
        self.seconds: dict[str, float] = {}
        # latency[gib][method] = (parent-side ns, round-trip ns)
        self.latency: dict[float, dict[str, tuple[list[int], list[int]]]] = {}
        # arguments[size][name] = round-trip or pickle ns
        self.arguments: dict[int, dict[str, list[int]]] = {}
        self.encoded_sizes: dict[int, dict[str, int]] = {}
        self.throughput: dict[str, list[int]] = {}
        self.startup: dict[str, list[int]] = {}
        self.importtime: list[str] = []
        self.worker_info: dict[str, dict[str, Any]] = {}

    def add(self, label: str, action: Callable[[], None]) -> None:
        """Append a step to the section being planned."""
        self.steps.append((self._section, label, action))

    def request(self, method: str, /, **fields: Any) -> dict[str, Any]:
        """Send a request to the worker that runs ``method``."""
        backend = METHODS[method].backend
        worker = self.workers.get(backend)
        self.worker_info[backend] = worker.info
        return worker.request(**fields)

    def backends(self, methods: Sequence[str]) -> list[str]:
        found = {METHODS[method].backend for method in methods}
        return [backend for backend in ("c", "python") if backend in found]

    def plan(self) -> None:
        """Lay out every step of the run, in the order they run."""
        options = self.options
        selected = [
            name
            for name in METHODS
            if name in options.methods or name == REFERENCE
        ]
        spawning = [name for name in selected if not METHODS[name].fork_based]
        forking = [name for name in selected if METHODS[name].fork_based]
        self._section = "import" if "import" in options.sections else "startup"
        self._plan_startup("import" in options.sections)
        self._section = "latency"
        if "latency" in options.sections:
            for gib in options.rss_gib:
                self._plan_latency(gib, spawning)
        self._section = "arguments"
        if "arguments" in options.sections:
            for size, label in ARGUMENT_SIZES:
                self._plan_arguments(size, label)
        self._section = "throughput"
        if "throughput" in options.sections:
            self._plan_throughput(spawning)
        # The fork-based methods come last, so no fork slows the others.
        self._section = "latency"
        if "latency" in options.sections and forking:
            for gib in options.rss_gib:
                self._plan_latency(gib, forking)
        self._section = "throughput"
        if "throughput" in options.sections and forking:
            self._plan_throughput(forking)

    def _plan_ballast(self, gib: float, methods: Sequence[str]) -> None:
        for backend in self.backends(methods):

            def hold(backend: str = backend) -> None:
                self.workers.get(backend).request(op="ballast", gib=gib)

            self.add(f"{backend} worker takes {gib:g} GiB", hold)

    def _plan_latency(self, gib: float, methods: Sequence[str]) -> None:
        self._plan_ballast(gib, methods)
        samples = self.latency.setdefault(gib, {})
        label = f"latency at {gib:g} GiB"
        for method in methods:
            samples[method] = ([], [])

            def warm_up(method: str = method) -> None:
                self.request(method, op="time", method=method)

            self.add(f"{label}: warm-up {method}", warm_up)
        for run in range(self.options.runs):
            for method in _round_order(methods, run):

                def measure(method: str = method) -> None:
                    reply = self.request(method, op="time", method=method)
                    samples[method][0].append(reply["parent_ns"])
                    samples[method][1].append(reply["round_trip_ns"])

                self.add(f"{label}: {method}", measure)
        self._plan_ballast(0, methods)

    def _plan_arguments(self, size: int, label: str) -> None:
        samples: dict[str, list[int]] = self.arguments.setdefault(size, {})
        names = ["floor"]
        names += [f"pyfork:{kind}" for kind in ARGUMENT_KINDS]
        names += [f"pickle:{kind}" for kind in ARGUMENT_KINDS]

        def build() -> None:
            reply = self.request(REFERENCE, op="arguments", size=size)
            self.encoded_sizes[size] = reply

        def free() -> None:
            self.request(REFERENCE, op="arguments", size=0)

        def measure(name: str, keep: bool = True) -> None:
            kind = name.partition(":")[2]
            if name == "floor":
                reply = self.request(
                    "posix_spawn", op="time", method="posix_spawn"
                )
                value = reply["round_trip_ns"]
            elif name.startswith("pyfork:"):
                reply = self.request(
                    REFERENCE, op="time", method=REFERENCE, kind=kind
                )
                value = reply["round_trip_ns"]
            else:
                reply = self.request(REFERENCE, op="pickle", kind=kind)
                value = reply["ns"]
            if keep:
                samples.setdefault(name, []).append(value)

        step = f"arguments of {label}"
        self.add(f"{step}: build", build)
        # The 100 MB runs take a second or more each, so they get fewer
        # runs and no warm-up.
        large = size >= ARGUMENT_SIZES[-1][0]
        runs = self.options.large_runs if large else self.options.runs
        if not large:
            for name in names:

                def warm_up(name: str = name) -> None:
                    measure(name, keep=False)

                self.add(f"{step}: warm-up {name}", warm_up)
        for run in range(runs):
            for name in _round_order(names, run):

                def timed(name: str = name) -> None:
                    measure(name)

                self.add(f"{step}: {name}", timed)
        self.add(f"{step}: free", free)

    def _plan_throughput(self, methods: Sequence[str]) -> None:
        in_flight = _cores()
        for run in range(self.options.throughput_runs):
            for method in _round_order(methods, run):

                def measure(method: str = method) -> None:
                    reply = self.request(
                        method,
                        op="throughput",
                        method=method,
                        count=THROUGHPUT_FORKS,
                        in_flight=in_flight,
                    )
                    self.throughput.setdefault(method, []).append(reply["ns"])

                self.add(
                    f"throughput: {THROUGHPUT_FORKS} starts of {method}",
                    measure,
                )

    def _plan_startup(self, with_import: bool) -> None:
        """Time ``python -c pass``, and ``import pyfork`` when asked."""
        commands = {"pass": [sys.executable, "-c", "pass"]}
        runs = 5
        if with_import:
            commands["import pyfork"] = [sys.executable, "-c", "import pyfork"]
            runs = self.options.import_runs
        env = _clean_environment()
        for run in range(runs):
            for name in _round_order(list(commands), run):

                def measure(name: str = name) -> None:
                    elapsed = _time_command(
                        commands[name], env, self.directory
                    )
                    self.startup.setdefault(name, []).append(elapsed)

                self.add(f"start-up: python -c {name!r}", measure)
        if not with_import:
            return
        command = [sys.executable, "-X", "importtime", "-c", "import pyfork"]
        for _ in range(self.options.importtime_runs):

            def trace() -> None:
                completed = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    cwd=self.directory,
                    env=env,
                    check=False,
                )
                if completed.returncode != 0:
                    message = (
                        f"{command} exited with code {completed.returncode}:"
                        f" {completed.stderr.strip()[-500:]}"
                    )
                    raise BenchError(message)
                self.importtime.append(completed.stderr)

            self.add("start-up: -X importtime", trace)

    def execute(self, progress: Progress) -> None:
        """Run the planned steps and time each section."""
        for section, label, action in self.steps:
            begin = time.monotonic()
            action()
            elapsed = time.monotonic() - begin
            self.seconds[section] = self.seconds.get(section, 0.0) + elapsed
            progress.step(label)


def _round_order(items: Sequence[str], run: int) -> list[str]:
    """Return ``items`` in the order of round ``run``: a fixed shuffle.

    A rotation would keep each item behind the same neighbour, and what a
    measurement leaves behind (freed memory, dirty pages) affects the next.
    """
    import random

    return random.Random(run).sample(items, len(items))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _clean_environment() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYFORK_CHILD", STOP_VARIABLE):
        env.pop(name, None)
    return env


def _time_command(command: list[str], env: dict[str, str], cwd: str) -> int:
    """Run ``command`` and return how long it took, from spawn to exit."""
    begin = time.perf_counter_ns()
    process = subprocess.Popen(command, env=env, cwd=cwd)
    code = process.wait()
    elapsed = time.perf_counter_ns() - begin
    if code != 0:
        message = f"{command} exited with code {code}"
        raise BenchError(message)
    return elapsed


def _write_worker_script(directory: str) -> str:
    """Write the worker script into ``directory`` and return its path.

    The script finds pyfork on the same path as this process. When pyfork
    was found only through this process's first path entry (its script
    directory or working directory), the script adds that entry itself.
    """
    package_parent = os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))
    )
    later_entries = {os.path.abspath(entry) for entry in sys.path[1:] if entry}
    path_setup = ""
    if package_parent not in later_entries:
        path_setup = f"sys.path.insert(0, {package_parent!r})\n"
    path = os.path.join(directory, "bench_worker.py")
    with open(path, "w", encoding="utf-8") as file:
        file.write(
            _WORKER_SCRIPT.format(path_setup=path_setup, stop=STOP_VARIABLE)
        )
    return path


# -- the machine -------------------------------------------------------------


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read_text("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    import platform

    return platform.processor() or platform.machine()


def _meminfo_gib(field: str) -> float | None:
    for line in _read_text("/proc/meminfo").splitlines():
        key, _, value = line.partition(":")
        if key == field:
            kib = value.split()[0]
            return int(kib) * 1024 / _GIB
    return None


def _pth_files() -> list[str]:
    """Return the ``.pth`` files that this interpreter's site runs."""
    import site

    directories = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        directories.append(site.getusersitepackages())
    found = []
    for directory in dict.fromkeys(directories):
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        found += [
            os.path.join(directory, name)
            for name in names
            if name.endswith(".pth")
        ]
    return found


def _customize_modules() -> list[str]:
    """Return the sitecustomize and usercustomize files that site imports."""
    import importlib.util

    found = []
    for name in ("sitecustomize", "usercustomize"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            found.append(spec.origin or name)
    return found


def describe_environment() -> dict[str, Any]:
    """Describe the interpreter and the machine that the bench runs on."""
    import platform

    from . import __version__

    hugepages = _read_text("/sys/kernel/mm/transparent_hugepage/enabled")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "pyfork_version": __version__,
        "executable": sys.executable,
        "python_version": sys.version,
        "implementation": platform.python_implementation(),
        "pth_files": _pth_files(),
        "customize_modules": _customize_modules(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": _cores(),
        "memory_gib": _meminfo_gib("MemTotal"),
        "memory_available_gib": _meminfo_gib("MemAvailable"),
        "kernel": f"{platform.system()} {platform.release()}",
        "transparent_hugepages": hugepages.strip() or None,
        "load_average_start": list(os.getloadavg()),
    }


# -- results -----------------------------------------------------------------


def parse_importtime(text: str) -> dict[str, tuple[int, int]]:
    """Return the self and cumulative µs of ``import pyfork`` and its imports.

    ``text`` is the stderr of ``python -X importtime -c "import pyfork"``.
    CPython prints a module after the modules it imports, indented two
    spaces deeper, so the entries above the top-level ``pyfork`` line
    that are nested deeper belong to it.
    """
    entries: list[tuple[str, int, int, int]] = []
    for line in text.splitlines():
        if not line.startswith("import time:"):
            continue
        fields = line[len("import time:") :].split("|")
        if len(fields) != 3:
            continue
        try:
            own, cumulative = int(fields[0]), int(fields[1])
        except ValueError:
            continue  # the header line
        name = fields[2]
        depth = len(name) - len(name.lstrip(" "))
        entries.append((name.strip(), depth, own, cumulative))
    roots = [i for i, entry in enumerate(entries) if entry[0] == "pyfork"]
    if not roots:
        return {}
    index = roots[-1]
    root_depth = entries[index][1]
    found = {}
    while index >= 0 and (
        index == roots[-1] or entries[index][1] > root_depth
    ):
        name, _, own, cumulative = entries[index]
        found[name] = (own, cumulative)
        index -= 1
    return found


def _summarize_importtime(traces: Sequence[str], top: int = 10) -> Any:
    parsed = [parse_importtime(text) for text in traces]
    parsed = [entries for entries in parsed if entries]
    if not parsed:
        return None
    modules = set(parsed[0]).intersection(*parsed[1:])
    medians = {
        name: (
            statistics.median(entries[name][0] for entries in parsed),
            statistics.median(entries[name][1] for entries in parsed),
        )
        for name in modules
    }
    ranked = sorted(medians.items(), key=lambda item: -item[1][0])
    return {
        "runs": len(parsed),
        "total_us": medians.get("pyfork", (0, 0))[1],
        "modules": len(modules),
        "top": [
            {"module": name, "self_us": own, "cumulative_us": cumulative}
            for name, (own, cumulative) in ranked[:top]
        ],
    }


def _latency_results(run: _Run) -> list[dict[str, Any]]:
    levels = []
    for gib in sorted(run.latency):
        samples = run.latency[gib]
        methods: dict[str, Any] = {}
        for name, method in METHODS.items():
            if name not in samples or not samples[name][0]:
                continue
            parent, round_trip = samples[name]
            methods[name] = {
                "phase": "fork" if method.fork_based else "spawn",
                "parent_ms": summarize(_milliseconds(parent)),
                "round_trip_ms": summarize(_milliseconds(round_trip)),
            }
        reference = methods.get(REFERENCE)
        for entry in methods.values():
            for key in ("parent", "round_trip"):
                entry[f"{key}_ratio"] = _ratio(
                    entry[f"{key}_ms"]["median"],
                    reference[f"{key}_ms"]["median"] if reference else None,
                )
        levels.append({"rss_gib": gib, "methods": methods})
    return levels


def _argument_results(run: _Run) -> list[dict[str, Any]]:
    sizes = []
    for size, label in ARGUMENT_SIZES:
        samples = run.arguments.get(size)
        if not samples or "floor" not in samples:
            continue
        floor = summarize(_milliseconds(samples["floor"]))
        kinds = {}
        for kind, description in ARGUMENT_KINDS.items():
            pyfork = summarize(_milliseconds(samples[f"pyfork:{kind}"]))
            pickled = summarize(_milliseconds(samples[f"pickle:{kind}"]))
            kinds[kind] = {
                "description": description,
                "pickled_bytes": run.encoded_sizes.get(size, {}).get(kind),
                "pyfork_ms": pyfork,
                "pickle_ms": pickled,
                "pyfork_over_pickle": _ratio(
                    pyfork["median"], pickled["median"]
                ),
                "pyfork_over_floor": _ratio(pyfork["median"], floor["median"]),
            }
        sizes.append(
            {
                "size_bytes": size,
                "label": label,
                "floor_ms": floor,
                "kinds": kinds,
            }
        )
    return sizes


def _throughput_results(run: _Run) -> dict[str, Any] | None:
    if not run.throughput:
        return None
    methods: dict[str, Any] = {}
    for name in METHODS:
        if name in run.throughput:
            rates = [
                THROUGHPUT_FORKS * 1e9 / ns for ns in run.throughput[name]
            ]
            methods[name] = {"starts_per_second": summarize(rates)}
    reference = methods.get(REFERENCE)
    for entry in methods.values():
        entry["ratio"] = _ratio(
            entry["starts_per_second"]["median"],
            reference["starts_per_second"]["median"] if reference else None,
        )
    return {
        "starts": THROUGHPUT_FORKS,
        "in_flight": _cores(),
        "methods": methods,
    }


def _import_results(run: _Run) -> dict[str, Any] | None:
    if "import pyfork" not in run.startup:
        return None
    bare = summarize(_milliseconds(run.startup["pass"]))
    loaded = summarize(_milliseconds(run.startup["import pyfork"]))
    return {
        "python_ms": bare,
        "import_pyfork_ms": loaded,
        "added_ms": loaded["median"] - bare["median"],
        "importtime": _summarize_importtime(run.importtime),
    }


def build_results(
    run: _Run, options: Options, environment: dict[str, Any]
) -> dict[str, Any]:
    """Collect the summaries of a finished run into one JSON-ready dict."""
    environment["startup_ms"] = summarize(_milliseconds(run.startup["pass"]))
    environment["workers"] = run.worker_info
    environment["section_seconds"] = run.seconds
    results: dict[str, Any] = {
        "format": 1,
        "options": {
            "quick": options.quick,
            "runs": options.runs,
            "rss_gib": options.rss_gib,
            "methods": options.methods,
            "sections": options.sections,
        },
        "environment": environment,
        "reference": REFERENCE,
        "methods": {name: METHODS[name].description for name in METHODS},
        "latency": _latency_results(run),
        "arguments": _argument_results(run),
        "throughput": _throughput_results(run),
        "import": _import_results(run),
    }
    results["targets"] = evaluate_targets(results)
    return results


# -- targets -----------------------------------------------------------------


def _latency_median(
    level: dict[str, Any], method: str, key: str
) -> float | None:
    entry = level["methods"].get(method)
    if entry is None:
        return None
    median: float = entry[f"{key}_ms"]["median"]
    return median


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare the results with pyfork's performance targets.

    Each target has the measured value, the limit, the comparison
    (``<=``, ``>=`` or ``>``) and whether it was met. Targets whose
    methods or sections were not measured are left out.
    """
    targets: list[dict[str, Any]] = []

    def add(
        text: str, value: float | None, comparison: str, limit: float
    ) -> None:
        if value is None:
            return
        if comparison == "<=":
            met = value <= limit
        elif comparison == ">=":
            met = value >= limit
        else:
            met = value > limit
        targets.append(
            {
                "target": text,
                "measured": value,
                "comparison": comparison,
                "limit": limit,
                "met": met,
            }
        )

    levels = results["latency"]
    if levels:
        low = levels[0]
        gib = f"{low['rss_gib']:g} GiB"
        add(
            f"{REFERENCE} parent side / posix_spawn parent side, {gib}",
            _ratio(
                _latency_median(low, REFERENCE, "parent"),
                _latency_median(low, "posix_spawn", "parent"),
            ),
            "<=",
            1.3,
        )
        add(
            f"{REFERENCE} round trip without arguments / posix_spawn round "
            f"trip (dispatch floor), {gib}",
            _ratio(
                _latency_median(low, REFERENCE, "round_trip"),
                _latency_median(low, "posix_spawn", "round_trip"),
            ),
            "<=",
            1.10,
        )
        add(
            f"mp-spawn round trip / {REFERENCE} round trip, {gib}",
            _ratio(
                _latency_median(low, "mp-spawn", "round_trip"),
                _latency_median(low, REFERENCE, "round_trip"),
            ),
            ">=",
            3.5,
        )
        add(
            f"{REFERENCE} round trip / mp-forkserver round trip, {gib}",
            _ratio(
                _latency_median(low, REFERENCE, "round_trip"),
                _latency_median(low, "mp-forkserver", "round_trip"),
            ),
            "<=",
            1.0,
        )
        add(
            f"pyfork-python-fd parent side / {REFERENCE} parent side, {gib}",
            _ratio(
                _latency_median(low, "pyfork-python-fd", "parent"),
                _latency_median(low, REFERENCE, "parent"),
            ),
            ">",
            1.0,
        )
    if len(levels) > 1:
        base = _latency_median(levels[0], REFERENCE, "parent")
        for level in levels[1:]:
            add(
                f"{REFERENCE} parent side at {level['rss_gib']:g} GiB / at "
                f"{levels[0]['rss_gib']:g} GiB",
                _ratio(_latency_median(level, REFERENCE, "parent"), base),
                "<=",
                1.2,
            )
    for size in results["arguments"]:
        for kind, entry in size["kinds"].items():
            builtin = not kind.startswith("object")
            if size is results["arguments"][0]:
                add(
                    f"round trip with {size['label']} {entry['description']}"
                    " / dispatch floor",
                    entry["pyfork_over_floor"],
                    "<=",
                    1.10 if builtin else 1.5,
                )
            if size["size_bytes"] >= ARGUMENT_SIZES[-1][0]:
                add(
                    f"round trip with {size['label']} "
                    f"{entry['description']} / pickle via a memfd",
                    entry["pyfork_over_pickle"],
                    "<=",
                    1.3,
                )
    imported = results["import"]
    if imported is not None:
        add(
            "'import pyfork' adds to start-up, ms",
            imported["added_ms"],
            "<=",
            1.0,
        )
    return targets


# -- the report --------------------------------------------------------------


def _format_ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _format_summary(
    summary: Summary, format_value: Callable[[float], str] = _format_ms
) -> str:
    return (
        f"{format_value(summary['median'])} "
        f"[{format_value(summary['p10'])}, {format_value(summary['p90'])}]"
    )


def _format_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def _table(rows: list[list[str]], right: Sequence[int] = ()) -> list[str]:
    """Return ``rows`` as aligned text lines; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _format_environment(results: dict[str, Any]) -> list[str]:
    environment = results["environment"]
    options = results["options"]
    startup = environment["startup_ms"]
    version = environment["python_version"].replace("\n", " ")
    memory = environment["memory_gib"]
    memory_text = (
        "unknown memory" if memory is None else f"{memory:.1f} GiB of memory"
    )
    load_start = environment["load_average_start"][0]
    load_end = environment.get("load_average_end", [load_start])[0]
    lines = [
        f"pyfork {environment['pyfork_version']} bench, {environment['date']}"
        f", {options['runs']} runs per method"
        + (" (--quick)" if options["quick"] else ""),
        f"interpreter:  {environment['executable']}",
        f"              {environment['implementation']} {version}",
        f"start-up:     'python -c pass' takes {_format_summary(startup)} ms",
        f"machine:      {environment['cpu']}, {environment['usable_cores']} "
        f"of {environment['cores']} cores, {memory_text}, "
        f"{environment['kernel']}",
        "huge pages:   transparent huge pages "
        f"{environment['transparent_hugepages'] or 'unknown'}",
        f"load average: {load_start:.2f} at the start, {load_end:.2f} at the "
        "end (1 minute)",
    ]
    seconds = environment.get("section_seconds", {})
    if seconds:
        parts = ", ".join(
            f"{section} {elapsed:.0f} s"
            for section, elapsed in seconds.items()
        )
        lines.append(f"run time:     {sum(seconds.values()):.0f} s ({parts})")
    pth_files = environment["pth_files"]
    if pth_files:
        lines.append(
            f".pth files:   {len(pth_files)}, run at every start-up, "
            "children included:"
        )
        lines += [f"              {path}" for path in pth_files]
    else:
        lines.append(".pth files:   none")
    for path in environment["customize_modules"]:
        lines.append(f"customize:    {path}, run at every start-up")
    for backend, info in sorted(environment["workers"].items()):
        lines.append(
            f"worker:       {backend} backend, pyfork from {info['module']}"
        )
    return lines


def _format_methods(results: dict[str, Any]) -> list[str]:
    measured = {
        name for level in results["latency"] for name in level["methods"]
    }
    if results["throughput"]:
        measured |= set(results["throughput"]["methods"])
    if not measured:
        return []
    lines = ["", "Methods:"]
    rows = [
        [name, description]
        for name, description in results["methods"].items()
        if name in measured
    ]
    for name, description in rows:
        lines += textwrap.wrap(
            description,
            width=79,
            initial_indent=f"  {name:<19} ",
            subsequent_indent=" " * 22,
        )
    return lines


def _format_latency(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for level in results["latency"]:
        lines += [
            "",
            f"Latency with {level['rss_gib']:g} GiB of touched memory in the "
            "parent, ms: median [p10, p90]",
            f"(x ref: median / the median of {REFERENCE})",
        ]
        rows = [["method", "parent side", "x ref", "round trip", "x ref"]]
        for name, entry in level["methods"].items():
            rows.append(
                [
                    name,
                    _format_summary(entry["parent_ms"]),
                    _format_ratio(entry["parent_ratio"]),
                    _format_summary(entry["round_trip_ms"]),
                    _format_ratio(entry["round_trip_ratio"]),
                ]
            )
        lines += ["  " + line for line in _table(rows, right=(2, 4))]
    levels = results["latency"]
    if len(levels) > 1:
        lines += ["", "Parent-side latency against parent memory, ms, median"]
        header = ["method"] + [f"{level['rss_gib']:g} GiB" for level in levels]
        header.append("last / first")
        rows = [header]
        for name in METHODS:
            medians = [
                _latency_median(level, name, "parent") for level in levels
            ]
            if all(median is None for median in medians):
                continue
            row = [name]
            row += ["-" if m is None else _format_ms(m) for m in medians]
            row.append(_format_ratio(_ratio(medians[-1], medians[0])))
            rows.append(row)
        lines += [
            "  " + line for line in _table(rows, right=range(1, len(header)))
        ]
    return lines


def _format_size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit, scale in (("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _format_arguments(results: dict[str, Any]) -> list[str]:
    if not results["arguments"]:
        return []
    lines = [
        "",
        f"Arguments: round trip of {REFERENCE} with one argument, against "
        "pickle.dump() + pickle.load() in one process through an anonymous "
        "memory file (memfd), ms",
    ]
    rows = [
        [
            "size",
            "argument",
            "pickled",
            "pyfork round trip",
            "pickle via memfd",
            "pyfork / pickle",
            "pyfork / floor",
        ]
    ]
    for size in results["arguments"]:
        rows.append(
            [
                size["label"],
                "none (floor: posix_spawn round trip)",
                "",
                _format_summary(size["floor_ms"]),
                "",
                "",
                "",
            ]
        )
        for entry in size["kinds"].values():
            rows.append(
                [
                    "",
                    entry["description"],
                    _format_size(entry["pickled_bytes"]),
                    _format_summary(entry["pyfork_ms"]),
                    _format_summary(entry["pickle_ms"]),
                    _format_ratio(entry["pyfork_over_pickle"]),
                    _format_ratio(entry["pyfork_over_floor"]),
                ]
            )
    runs = ", ".join(
        f"{size['label']}: {size['floor_ms']['runs']:.0f}"
        for size in results["arguments"]
    )
    lines += ["  " + line for line in _table(rows, right=(2, 5, 6))]
    lines.append(f"  runs per size: {runs}")
    return lines


def _format_throughput(results: dict[str, Any]) -> list[str]:
    throughput = results["throughput"]
    if not throughput:
        return []
    lines = [
        "",
        f"Throughput: {throughput['starts']} starts, at most "
        f"{throughput['in_flight']} children alive, starts per second: "
        "median [p10, p90]",
    ]
    rows = [["method", "starts/s", "x ref"]]
    for name, entry in throughput["methods"].items():
        rows.append(
            [
                name,
                _format_summary(entry["starts_per_second"], "{:.0f}".format),
                _format_ratio(entry["ratio"]),
            ]
        )
    lines += ["  " + line for line in _table(rows, right=(2,))]
    return lines


def _format_import(results: dict[str, Any]) -> list[str]:
    imported = results["import"]
    if imported is None:
        return []
    lines = [
        "",
        "Import: interpreter start-up to exit, ms: median [p10, p90]",
        "  python -c pass            "
        f"{_format_summary(imported['python_ms'])}",
        "  python -c 'import pyfork' "
        f"{_format_summary(imported['import_pyfork_ms'])}",
        f"  'import pyfork' adds      {_format_ms(imported['added_ms'])}",
    ]
    importtime = imported["importtime"]
    if importtime:
        lines.append(
            f"  -X importtime, median of {importtime['runs']} runs: "
            f"'import pyfork' takes {importtime['total_us']:.0f} µs over "
            f"{importtime['modules']} modules; the slowest by self time:"
        )
        rows = [["module", "self µs", "cumulative µs"]]
        for entry in importtime["top"]:
            rows.append(
                [
                    entry["module"],
                    f"{entry['self_us']:.0f}",
                    f"{entry['cumulative_us']:.0f}",
                ]
            )
        lines += ["    " + line for line in _table(rows, right=(1, 2))]
    return lines


def _format_targets(results: dict[str, Any]) -> list[str]:
    targets = results["targets"]
    if not targets:
        return []
    lines = ["", "Targets (medians):"]
    rows = [["target", "measured", "limit", ""]]
    for target in targets:
        rows.append(
            [
                target["target"],
                f"{target['measured']:.2f}",
                f"{target['comparison']} {target['limit']:g}",
                "met" if target["met"] else "MISSED",
            ]
        )
    lines += ["  " + line for line in _table(rows, right=(1,))]
    return lines


def format_report(results: dict[str, Any]) -> str:
    """Return the results as the text tables that the command prints."""
    lines = _format_environment(results)
    lines += _format_methods(results)
    lines += _format_latency(results)
    lines += _format_arguments(results)
    lines += _format_throughput(results)
    lines += _format_import(results)
    lines += _format_targets(results)
    return "\n".join(lines) + "\n"


# -- the plot ----------------------------------------------------------------

_PLOT_HINT = 'install it with: pip install "pyfork[bench]"'


def load_pyplot() -> Any:
    """Import matplotlib's pyplot with a file-only backend.

    Raises BenchError naming the install command when matplotlib is
    missing or broken.
    """
    import importlib

    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError as error:
        message = f"--plot needs matplotlib ({error}); {_PLOT_HINT}"
        raise BenchError(message) from error


def write_plot(results: dict[str, Any], path: str, pyplot: Any) -> None:
    """Plot parent-side latency against parent memory into a PNG file."""
    figure, axes = pyplot.subplots(figsize=(9, 5.5))
    levels = results["latency"]
    for name, method in METHODS.items():
        points = [
            (level["rss_gib"], level["methods"][name]["parent_ms"])
            for level in levels
            if name in level["methods"]
        ]
        if not points:
            continue
        gib = [point[0] for point in points]
        medians = [point[1]["median"] for point in points]
        below = [point[1]["median"] - point[1]["p10"] for point in points]
        above = [point[1]["p90"] - point[1]["median"] for point in points]
        axes.errorbar(
            gib,
            medians,
            yerr=[below, above],
            marker="o",
            capsize=3,
            linestyle="--" if method.fork_based else "-",
            label=name,
        )
    environment = results["environment"]
    axes.set_yscale("log")
    axes.set_xticks([level["rss_gib"] for level in levels])
    axes.set_xlabel("touched memory held by the parent (GiB)")
    axes.set_ylabel("parent-side latency (ms): median, p10 to p90")
    axes.set_title(
        f"pyfork {environment['pyfork_version']}: time until the start call "
        f"returns\n{environment['cpu']}, {environment['date']}",
        fontsize="medium",
    )
    axes.grid(visible=True, which="both", alpha=0.3)
    axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


# -- the command -------------------------------------------------------------


def _parse_gib_list(text: str) -> list[float]:
    import argparse
    import math

    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = -1.0
        if not math.isfinite(value) or value < 0:
            message = (
                f"invalid size {item.strip()!r} in {text!r}: expected GiB "
                "as numbers of 0 or more separated by commas, such as 0,1,4"
            )
            raise argparse.ArgumentTypeError(message)
        values.append(value)
    return sorted(set(values))


def _parse_runs(text: str) -> int:
    import argparse

    try:
        runs = int(text)
    except ValueError:
        runs = 0
    if runs < 1:
        message = (
            f"invalid run count {text!r}: expected an integer of 1 or more"
        )
        raise argparse.ArgumentTypeError(message)
    return runs


def _parse_name(text: str) -> str:
    import argparse

    if text in METHODS or text in SECTIONS:
        return text
    message = f"unknown method or section {text!r}; choose from " + ", ".join(
        [*METHODS, *SECTIONS]
    )
    raise argparse.ArgumentTypeError(message)


def _epilog() -> str:
    lines = ["methods:"]
    lines += [
        f"  {name:<19} {method.description}"
        for name, method in METHODS.items()
    ]
    lines += ["", "sections:"]
    lines += [f"  {name:<19} {text}" for name, text in SECTIONS.items()]
    return "\n".join(lines)


def parse_options(arguments: Sequence[str]) -> Options:
    """Parse the command line. Raises SystemExit for help or a usage error."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pyfork bench",
        description=(
            "Measure how long pyfork takes to start a child, against "
            "posix_spawn, subprocess, multiprocessing and os.fork, and "
            "print the medians with the 10th and 90th percentiles."
        ),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"{_QUICK_RUNS} runs and parent memory of "
            f"{','.join(f'{gib:g}' for gib in _QUICK_RSS)} GiB: about a "
            "minute on two idle cores"
        ),
    )
    parser.add_argument(
        "-n",
        "--runs",
        type=_parse_runs,
        metavar="RUNS",
        help=(
            f"timed runs of each method (default {_DEFAULT_RUNS}, "
            f"{_QUICK_RUNS} with --quick); 100 MB arguments get a fifth, "
            "throughput a tenth"
        ),
    )
    parser.add_argument(
        "--json", metavar="FILE", help="also write the results to FILE as JSON"
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help=(
            "also plot parent-side latency against parent memory into "
            'FILE.png; needs matplotlib: pip install "pyfork[bench]"'
        ),
    )
    parser.add_argument(
        "--rss",
        type=_parse_gib_list,
        metavar="GIB[,GIB...]",
        help=(
            "touched memory in the parent during the latency section, "
            f"in GiB (default {','.join(f'{gib:g}' for gib in _DEFAULT_RSS)}"
            f", {','.join(f'{gib:g}' for gib in _QUICK_RSS)} with --quick)"
        ),
    )
    parser.add_argument(
        "--only",
        nargs="+",
        type=_parse_name,
        metavar="NAME",
        default=[],
        help=(
            "measure only these methods and sections (names below); "
            f"{REFERENCE}, the reference of every ratio, is always measured"
        ),
    )
    namespace = parser.parse_args(arguments)
    quick = namespace.quick
    runs = namespace.runs or (_QUICK_RUNS if quick else _DEFAULT_RUNS)
    rss = namespace.rss
    if rss is None:
        rss = list(_QUICK_RSS if quick else _DEFAULT_RSS)
    methods = [name for name in namespace.only if name in METHODS]
    sections = [name for name in namespace.only if name in SECTIONS]
    options = Options(
        quick=quick,
        runs=runs,
        rss_gib=rss,
        methods=methods or list(METHODS),
        sections=sections or list(SECTIONS),
        json_path=namespace.json,
        plot_path=namespace.plot,
    )
    if options.plot_path and "latency" not in options.sections:
        parser.error("--plot draws the latency section; add it to --only")
    _check_memory(parser, options)
    return options


def _check_memory(parser: Any, options: Options) -> None:
    """Exit with a usage error when ``--rss`` cannot fit in memory."""
    if "latency" not in options.sections or not options.rss_gib:
        return
    available = _meminfo_gib("MemAvailable")
    if available is None:
        return
    backends = {METHODS[name].backend for name in options.methods}
    backends.add(METHODS[REFERENCE].backend)
    # Every worker allocates it at the same time; keep 1 GiB spare.
    needed = max(options.rss_gib) * len(backends) + 1
    if needed > available:
        parser.error(
            f"--rss {max(options.rss_gib):g} needs about {needed:.1f} GiB "
            f"({len(backends)} worker processes hold it at once), but only "
            f"{available:.1f} GiB is available; choose smaller sizes"
        )


def run(options: Options) -> dict[str, Any]:
    """Run every step of the bench and return the results."""
    import tempfile

    environment = describe_environment()
    with tempfile.TemporaryDirectory(prefix="pyfork-bench-") as directory:
        script = _write_worker_script(directory)
        workers = _Workers(script, directory)
        bench_run = _Run(options, workers, directory)
        bench_run.plan()
        progress = Progress(len(bench_run.steps))
        completed = False
        try:
            bench_run.execute(progress)
            completed = True
        finally:
            progress.finish(completed)
            workers.close()
    environment["load_average_end"] = list(os.getloadavg())
    return build_results(bench_run, options, environment)


def main(arguments: list[str]) -> int:
    """Run ``python -m pyfork bench``. Return the exit code.

    The exit code is 0 on success, 1 when the bench fails, and 2 for a
    usage error.
    """
    try:
        options = parse_options(arguments)
    except SystemExit as exit_request:
        code = exit_request.code
        return code if isinstance(code, int) else 2
    try:
        pyplot = load_pyplot() if options.plot_path else None
        results = run(options)
    except BenchError as error:
        print(f"pyfork bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyfork bench: interrupted", file=sys.stderr)
        return 130
    print(format_report(results), end="")
    if options.json_path:
        with open(options.json_path, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=2)
            file.write("\n")
    if options.plot_path:
        write_plot(results, options.plot_path, pyplot)
    return 0
