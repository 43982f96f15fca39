"""Every command the README shows answers a wrong path with one line on stderr: no traceback, no
progress bar before it, a non-zero exit status.

Already tested elsewhere: `python -m preprocess` on a missing video root and every other user
error of preprocess (tests/test_preprocess.py::test_a_user_error_is_one_line_naming_the_file),
`python -m pipelines.throughput.chart` on a missing file and bad options of the benchmark
(tests/test_benchmark.py::test_user_errors_are_one_line).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

A_FILE = str(ROOT / "pyproject.toml")      # where a folder is expected: a file


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def assert_one_line(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # splitlines: a progress bar's carriage returns count as lines too
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), done.stderr[-3000:]
    assert lines[0].endswith("(--debug or DALI_GOP_DEBUG=1 for the traceback)"), lines[0]


def test_throughput_on_a_data_path_that_is_a_file():
    """Checked before the set's progress bar: the one line is all of stderr."""
    pytest.importorskip("nvidia.dali")
    pytest.importorskip("torch")
    done = run_module("pipelines.throughput", "--backend", "cpu", "--data", A_FILE)
    assert_one_line(done, A_FILE, "Not a directory")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"pipelines.throughput: error: {A_FILE}/"), done.stderr


@pytest.mark.parametrize("args", [
    ["preprocess.demo", "--data", A_FILE],
    ["preprocess.throughput", "--data", A_FILE],
    ["pipelines.train_example", "--backend", "cpu", "--gop_base_path", "/nonexistent/gops"],
], ids=["preprocess.demo", "preprocess.throughput", "train_example"])
def test_the_readme_commands_on_a_wrong_path(args):
    assert_one_line(run_module(*args), args[-1])
