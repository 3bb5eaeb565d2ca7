"""Tests of ``python -m pyfork bench``: its options, output and JSON.

The bench runs for real, on a small subset with few runs. The tests check
what it reports, never how fast anything was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyfork import _bench

SUBSET = ("pyfork-c-fd", "pyfork-python-fd", "posix_spawn", "os-fork")


def bench_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYFORK_CHILD", "PYFORK_BACKEND", _bench.STOP_VARIABLE):
        env.pop(name, None)
    if extra:
        env.update(extra)
    return env


def run_bench(
    directory: Path, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyfork", "bench", *arguments],
        capture_output=True,
        text=True,
        cwd=directory,
        env=bench_environment(env),
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def subset_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    """One quick run of a few methods, with the latency and import sections."""
    directory = tmp_path_factory.mktemp("bench")
    completed = run_bench(
        directory,
        "--quick",
        "-n",
        "2",
        "--rss",
        "0",
        "--json",
        "results.json",
        "--only",
        "latency",
        "import",
        *SUBSET,
    )
    results = {}
    if completed.returncode == 0:
        results = json.loads((directory / "results.json").read_text())
    return completed, results


def test_subset_exits_zero(subset_run):
    completed, _ = subset_run
    assert completed.returncode == 0, completed.stderr


def test_subset_table_names_methods(subset_run):
    completed, _ = subset_run
    for method in SUBSET:
        assert f"\n  {method} " in completed.stdout, method
    assert "Latency with 0 GiB" in completed.stdout
    assert "'import pyfork' adds" in completed.stdout
    assert "Targets" in completed.stdout


def test_subset_reports_environment(subset_run):
    completed, results = subset_run
    environment = results["environment"]
    assert environment["executable"] == sys.executable
    assert environment["cores"] >= 1
    assert isinstance(environment["pth_files"], list)
    assert environment["startup_ms"]["median"] > 0
    assert sys.executable in completed.stdout
    assert ".pth files:" in completed.stdout
    assert set(environment["workers"]) == {"c", "python"}


def test_subset_json_keys(subset_run):
    _, results = subset_run
    expected = {
        "format",
        "options",
        "environment",
        "reference",
        "methods",
        "latency",
        "arguments",
        "throughput",
        "import",
        "targets",
    }
    assert set(results) == expected
    assert results["reference"] == "pyfork-c-fd"
    assert results["arguments"] == []
    assert results["throughput"] is None


def test_subset_json_medians_positive(subset_run):
    _, results = subset_run
    [level] = results["latency"]
    assert level["rss_gib"] == 0
    assert set(level["methods"]) == set(SUBSET)
    for method, entry in level["methods"].items():
        for key in ("parent_ms", "round_trip_ms"):
            summary = entry[key]
            assert summary["median"] > 0, (method, key)
            assert summary["p10"] <= summary["median"] <= summary["p90"]
            assert summary["runs"] == 2
    reference = level["methods"]["pyfork-c-fd"]
    assert reference["parent_ratio"] == 1
    assert level["methods"]["os-fork"]["phase"] == "fork"


def test_subset_json_import(subset_run):
    _, results = subset_run
    imported = results["import"]
    assert imported["python_ms"]["median"] > 0
    assert imported["import_pyfork_ms"]["median"] > 0
    modules = [entry["module"] for entry in imported["importtime"]["top"]]
    assert "pyfork" in modules


def test_subset_json_targets(subset_run):
    _, results = subset_run
    names = [target["target"] for target in results["targets"]]
    assert any("posix_spawn parent side" in name for name in names)
    assert any("import pyfork" in name for name in names)
    for target in results["targets"]:
        assert isinstance(target["met"], bool)


def test_progress_without_terminal(subset_run):
    completed, _ = subset_run
    assert "\r" not in completed.stderr
    assert "steps finished" in completed.stderr


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--rss", "abc"], "'abc'"),
        (["--rss", "1,-2"], "'-2'"),
        (["--only", "nosuch"], "'nosuch'"),
        (["-n", "0"], "'0'"),
        (["--plot", "out.png", "--only", "import"], "--plot"),
    ],
)
def test_option_error_exits_two(tmp_path, arguments, expected):
    completed = run_bench(tmp_path, *arguments)
    assert completed.returncode == 2
    assert expected in completed.stderr
    assert completed.stdout == ""


def test_only_error_lists_names(tmp_path):
    completed = run_bench(tmp_path, "--only", "nosuch")
    assert "pyfork-c-fd" in completed.stderr
    assert "throughput" in completed.stderr


def test_help_lists_methods(tmp_path):
    completed = run_bench(tmp_path, "--help")
    assert completed.returncode == 0
    for method in _bench.METHODS:
        assert method in completed.stdout


def test_plot_without_matplotlib(tmp_path):
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ImportError('matplotlib is not installed')\n"
    )
    completed = run_bench(
        tmp_path,
        "--plot",
        "out.png",
        env={"PYTHONPATH": str(tmp_path / "fake")},
    )
    assert completed.returncode == 1
    assert 'pip install "pyfork[bench]"' in completed.stderr
    assert not (tmp_path / "out.png").exists()


def test_plot_written(tmp_path):
    pytest.importorskip("matplotlib")
    completed = run_bench(
        tmp_path,
        "-n",
        "1",
        "--rss",
        "0",
        "--plot",
        "out.png",
        "--only",
        "latency",
        "posix_spawn",
    )
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")


@pytest.fixture
def worker(tmp_path):
    """A bench worker on the C backend, started from a real script."""
    script = _bench._write_worker_script(str(tmp_path))
    started = _bench._Worker("c", script, str(tmp_path))
    yield started
    started.close()


def test_worker_times_arguments(worker, tmp_path):
    sizes = worker.request(op="arguments", size=1000)
    assert set(sizes) == set(_bench.ARGUMENT_KINDS)
    for kind in _bench.ARGUMENT_KINDS:
        reply = worker.request(op="time", method="pyfork-c-fd", kind=kind)
        assert reply["round_trip_ns"] >= reply["parent_ns"] > 0
        reply = worker.request(op="pickle", kind=kind)
        assert reply["ns"] > 0


def test_worker_times_throughput(worker):
    for method in ("pyfork-c-fd", "posix_spawn", "popen", "os-fork"):
        reply = worker.request(
            op="throughput", method=method, count=4, in_flight=2
        )
        assert reply["ns"] > 0, method


def test_worker_rejects_other_backend(worker):
    with pytest.raises(_bench.BenchError, match="pyfork-python-fd"):
        worker.request(op="time", method="pyfork-python-fd")


def test_parse_importtime_takes_pyfork_subtree():
    text = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       100 |        100 | site\n"
        "import time:        10 |         10 |     _cffi_backend\n"
        "import time:        20 |         30 |   pyfork._core\n"
        "import time:         5 |         35 | pyfork\n"
        "import time:         7 |          7 | json\n"
    )
    assert _bench.parse_importtime(text) == {
        "pyfork": (5, 35),
        "pyfork._core": (20, 30),
        "_cffi_backend": (10, 10),
    }


def test_summarize_percentiles():
    summary = _bench.summarize([5.0, 1.0, 3.0])
    assert summary["median"] == 3.0
    assert summary["p10"] < 3.0 < summary["p90"]
    assert summary["runs"] == 3
    single = _bench.summarize([2.0])
    assert single == {"median": 2.0, "p10": 2.0, "p90": 2.0, "runs": 1}
